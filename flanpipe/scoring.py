"""Batched inference for evaluation: rank classification over options, and generation.

Both run the prompt once and keep its keys and values (:class:`~flanpipe.model.KVCache`):

- :func:`score_options` scores every option of a prompt by the log-likelihood of its tokens. The
  prompts of a batch are run once; then all options of each prompt run *together* as one extension
  of that prompt's row, each option attending to the cached prompt and causally to itself, never to
  a sibling option, with positions continuing from the end of the prompt. One prompt pass serves all
  of its options, where a plain harness runs the prompt again for each option.
- :func:`generate` decodes greedily, or samples with a temperature and top-k, one token per step on
  top of the cache.

Token sequences follow the training layout (``inputs EOS targets EOS``): a prompt is the input's
tokens and its EOS, an option is the target's tokens and its EOS.

>>> import torch
>>> from flanpipe.model import FlanLM, ModelConfig
>>> _ = torch.manual_seed(0)
>>> model = FlanLM(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2)).eval()
>>> scores = score_options(model, [[5, 6, 1]], [[[7, 1], [8, 9, 1]]])
>>> scores[0].shape, bool((scores[0] < 0).all())
((2,), True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from flanpipe.model import FlanLM, KVCache, compute_dtype


def _batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each at most ``max_rows`` rows and (padded)
    ``max_tokens`` tokens (a single longer item is a batch of its own).

    >>> _batches([3, 9, 4, 1], max_tokens=12, max_rows=8)
    [[1], [2, 0, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < max_rows and lengths[out[-1][0]] * (len(out[-1]) + 1) <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _prefill(model: FlanLM, prompts: list[Sequence[int]], device: torch.device
             ) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """Run right-padded prompts into a fresh cache: (cache, prompt lengths, log-probabilities of the
    next token after each prompt's last token, ``(batch, vocab)``)."""
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max())
    tokens = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        tokens[b, :len(p)] = torch.as_tensor(p, dtype=torch.long)
    pos = torch.arange(width, device=device)
    positions = pos.expand(len(prompts), width)
    # causal over the prompt's own tokens; a padding query still sees the prompt (never an empty row)
    mask = (pos[None, :, None] >= pos[None, None, :]) & (pos[None, None, :] < lengths[:, None, None])
    cache = KVCache()
    hidden = model.hidden(tokens, positions, mask[:, None], cache)
    last = hidden[torch.arange(len(prompts), device=device), lengths - 1]
    return cache, lengths, _log_softmax(model.lm_head(last))


@torch.inference_mode()
def score_options(model: FlanLM, prompts: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]],
                  max_batch_tokens: int = 16_384, max_batch_rows: int = 64,
                  progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """The summed log-probability of each option's tokens given its prompt.

    ``prompts[i]`` is a token list, ``options[i]`` the token lists of its options (each non-empty).
    Returns one float64 array per prompt, in input order. Batches hold up to ``max_batch_rows``
    prompts and ``max_batch_tokens`` padded tokens (prompt plus all of its options);
    ``progress(n)`` is called with the number of prompts done after each batch.
    """
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    for i, (p, opts) in enumerate(zip(prompts, options, strict=True)):
        if not p or not opts or any(len(o) == 0 for o in opts):
            raise ValueError(f"request {i}: a prompt needs at least one token and every option one token")
    device = next(model.parameters()).device
    sizes = [len(p) + sum(len(o) for o in opts) for p, opts in zip(prompts, options, strict=True)]
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    for batch in _batches(sizes, max_batch_tokens, max_batch_rows):
        cache, lengths, first = _prefill(model, [prompts[i] for i in batch], device)
        exts = [[t for o in options[i] for t in o] for i in batch]
        width = max(len(e) for e in exts)
        n = len(batch)
        tokens = torch.zeros(n, width, dtype=torch.long, device=device)
        option_of = torch.full((n, width), -1, dtype=torch.long, device=device)  # -1: padding
        offset = torch.zeros(n, width, dtype=torch.long, device=device)  # index within its option
        for b, i in enumerate(batch):
            tokens[b, :len(exts[b])] = torch.as_tensor(exts[b], dtype=torch.long)
            at = 0
            for j, o in enumerate(options[i]):
                option_of[b, at:at + len(o)] = j
                offset[b, at:at + len(o)] = torch.arange(len(o))
                at += len(o)
        positions = lengths[:, None] + offset
        idx = torch.arange(width, device=device)
        same = (option_of[:, :, None] == option_of[:, None, :]) & (option_of[:, None, :] >= 0)
        own = same & (idx[None, :, None] >= idx[None, None, :])
        prompt_keys = torch.arange(len(cache), device=device)[None, None, :] < lengths[:, None, None]
        mask = torch.cat([prompt_keys.expand(n, width, -1), own], dim=2)[:, None]
        hidden = model.hidden(tokens, positions, mask, cache)
        logp = _log_softmax(model.lm_head(hidden))
        # token t of an option is predicted by the option's token t - 1, its first by the prompt's end
        after_prev = torch.zeros(n, width, dtype=logp.dtype, device=device)
        after_prev[:, 1:] = logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
        token_logp = torch.where(offset == 0, first.gather(-1, tokens), after_prev)
        token_logp = token_logp.double().cpu().numpy()
        opt = option_of.cpu().numpy()
        for b, i in enumerate(batch):
            k = len(options[i])
            out[i] = np.bincount(opt[b][opt[b] >= 0], weights=token_logp[b][opt[b] >= 0], minlength=k)
        if progress:
            progress(len(batch))
    return out


@torch.inference_mode()
def generate(model: FlanLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int,
             temperature: float = 0.0, top_k: int = 0, seed: int = 0, max_batch_tokens: int = 16_384,
             max_batch_rows: int = 32, progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """New tokens for each prompt, up to and without the first EOS, at most ``max_new_tokens``.

    ``temperature`` 0 decodes greedily; above 0 it samples from the softmax at that temperature,
    over the ``top_k`` most likely tokens when ``top_k`` > 0 (the paper's samples: 0.9 and 40).
    Sampling is seeded per batch from ``seed``, so a rerun gives the same text.
    """
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature ({temperature}) and top_k ({top_k}) must be >= 0")
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    sizes = [len(p) + max_new_tokens for p in prompts]
    for number, batch in enumerate(_batches(sizes, max_batch_tokens, max_batch_rows)):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + number)
        cache, lengths, logp = _prefill(model, [prompts[i] for i in batch], device)
        n = len(batch)
        prompt_keys = torch.arange(len(cache), device=device)[None, :] < lengths[:, None]
        done = torch.zeros(n, dtype=torch.bool, device=device)
        produced = []
        for step in range(max_new_tokens):
            token = _pick(logp, temperature, top_k, gen)
            token = torch.where(done, torch.full_like(token, eos_id), token)
            produced.append(token)
            done |= token == eos_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            keys = torch.cat([prompt_keys, torch.ones(n, step + 1, dtype=torch.bool, device=device)], dim=1)
            hidden = model.hidden(token[:, None], (lengths + step)[:, None], keys[:, None, None], cache)
            logp = _log_softmax(model.lm_head(hidden[:, 0]))
        rows = torch.stack(produced, dim=1).cpu().tolist()
        for b, i in enumerate(batch):
            row = rows[b]
            out[i] = row[:row.index(eos_id)] if eos_id in row else row
        if progress:
            progress(n)
    return out


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)


def _pick(logp: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logp.argmax(-1)
    logits = logp / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(-1)
