"""Batched inference for evaluation on any ``transformers`` causal LM: rank classification over
options, and generation.

Both run each prompt once and keep its keys and values in a ``transformers`` ``DynamicCache``:

- :func:`score_options` scores every option of a prompt by the log-likelihood of its tokens. A
  batch's prompts (right-padded) are prefilled once, all but their last token; then each prompt's
  last token and *all* of its options run together as one extension of that prompt's row, under a
  custom 4D attention mask: each option sees the cached prompt and itself causally, never a sibling
  option, and its position ids continue from the prompt's end. One prompt pass serves all of its
  options, where a plain harness runs the prompt again for each option.
- :func:`generate` decodes greedily, or samples with a temperature and top-k, one token per step on
  top of the same cache.

The mask is built from *positions*, not cache columns (:func:`attention_bias`), so the
sliding-window layers of Mistral, Phi-3, Qwen2/3 and Gemma 2/3 get their own window (models with
``config.layer_types`` receive one mask per layer type). The cache is a plain ``DynamicCache()``
(every layer keeps every key; the masks do the windowing). Models whose attention kernel takes no
4D mask (``flash_attention_*``), or that name other layer types (chunked, linear attention), are
scored one sequence per (prompt, option) instead (:func:`score_per_option`, also the reference the
shared path is tested against) and generate through ``model.generate``. For the model types in
:data:`HEAD_ONLY_TYPES` only the positions a score needs are projected onto the vocabulary.

Limits: rope scalings that pick their frequencies from the sequence length (Phi-3's LongRoPE,
``dynamic`` NTK) see the prompt's length in the prefill, as ``transformers``' own cached generation
does, so a prompt shorter than ``original_max_position_embeddings`` whose option crosses it scores
as in cached decoding, not as a from-scratch forward pass of prompt + option.

Token sequences follow the training format (``eos``: ``inputs EOS targets EOS``): a prompt is the input's
tokens and its EOS, an option is the target's tokens and its EOS; the caller builds them.

Encoder-decoders (``config.is_encoder_decoder``) take the same calls. For T5, FLAN-T5, mT5 and umT5,
rank classification encodes each prompt once (:func:`score_seq2seq`): all options of a prompt run
as segments of one decoder row (each ``decoder_start_token_id`` then the option's tokens but its
last), against the prompt's encoder output and its cross-attention keys and values.
``method="per_option"`` (:func:`score_per_option`, also used for other encoder-decoders)
runs the model's own forward once per (prompt, option) instead. Generation goes through
``model.generate`` on batches of prompts, with the same stop rules (any EOS id, ``max_new_tokens``,
``vocab_limit``).

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> _ = torch.manual_seed(0)
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)).eval()
>>> scores = score_options(model, [[5, 6, 1]], [[[7, 1], [8, 9, 1]]])
>>> scores[0].shape, bool((scores[0] < 0).all())
((2,), True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flanpipe.core.config.checkpoints import is_encoder_decoder
from flanpipe.core.model.seq2seq import (
    SEQ2SEQ_TYPES,
    lm_logits,
    option_masks,
    run_stack,
    start_token,
)

SHARED = -1  # key group of prompt and generated tokens: every query of the row may see them
PADDING = -2  # key group of padding: no query sees it
MASKABLE_ATTENTION = ("sdpa", "eager")  # kernels that take a custom 4D additive mask
METHODS = ("auto", "shared", "per_option")
GENERATE_METHODS = ("auto", "shared", "one_by_one")
HEAD_ONLY_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt_neox",
                             "olmo2", "phi3"})
"""``config.model_type``s whose logits are their output embedding of the decoder's last hidden state
(then Gemma's final soft-capping), tested against the model's own forward: scoring runs the decoder
and projects onto the vocabulary only the positions a score needs. Other types project every
position through their own forward."""
PROJECT_ELEMENTS = 1 << 25  # logits projected at a time (rows x vocabulary): 128 MiB in float32


# --- batching ------------------------------------------------------------------------------------

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


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _padded(rows: Sequence[Sequence[int]], width: int, device: torch.device, fill: int = 0) -> torch.Tensor:
    """Right-padded ``(len(rows), width)`` long tensor.

    >>> _padded([[1, 2], [3]], 3, torch.device("cpu")).tolist()
    [[1, 2, 0], [3, 0, 0]]
    """
    out = torch.full((len(rows), width), fill, dtype=torch.long, device=device)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


# --- attention masks -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionKinds:
    """How a model's layers attend: the layer types it names (``config.layer_types``, or None when
    every layer is alike) and the sliding window of its ``sliding_attention`` layers (or of every
    layer, for Mistral and Phi-3 with ``sliding_window`` set)."""

    layer_types: tuple[str, ...] | None
    sliding_window: int | None

    @classmethod
    def of(cls, config) -> AttentionKinds:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        types = getattr(text, "layer_types", None)
        window = getattr(text, "sliding_window", None)
        return cls(tuple(dict.fromkeys(types)) if types else None, int(window) if window else None)


def attention_bias(query_positions: torch.Tensor, query_groups: torch.Tensor, key_positions: torch.Tensor,
                   key_groups: torch.Tensor, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """The additive ``(batch, 1, queries, keys)`` mask: 0 where a query may attend to a key, the
    dtype's minimum elsewhere. A query sees a key when the key is shared (``SHARED``: the prompt,
    generated tokens) or of the query's own group (its option), is not after it (key position <=
    query position), and, with ``window``, is less than ``window`` positions back.

    >>> q_pos, q_grp = torch.tensor([[3, 4, 3]]), torch.tensor([[0, 0, 1]])  # two options after a prompt
    >>> k_pos = torch.tensor([[0, 1, 2, 3, 4, 3]]); k_grp = torch.tensor([[-1, -1, -1, 0, 0, 1]])
    >>> (attention_bias(q_pos, q_grp, k_pos, k_grp, torch.float32) == 0).int()[0, 0].tolist()
    [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 1]]
    >>> (attention_bias(q_pos, q_grp, k_pos, k_grp, torch.float32, window=2) == 0).int()[0, 0].tolist()
    [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 1]]
    """
    group_ok = (key_groups[:, None, :] == SHARED) | (key_groups[:, None, :] == query_groups[:, :, None])
    group_ok &= key_groups[:, None, :] != PADDING
    back = query_positions[:, :, None] - key_positions[:, None, :]
    visible = group_ok & (back >= 0)
    if window is not None:
        visible &= back < window
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return bias.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]


def model_masks(kinds: AttentionKinds, query_positions: torch.Tensor, query_groups: torch.Tensor,
                key_positions: torch.Tensor, key_groups: torch.Tensor, dtype: torch.dtype):
    """The ``attention_mask`` argument for a forward pass: one 4D mask, or one per layer type
    (``{"full_attention": ..., "sliding_attention": ...}``) for models that name layer types."""
    def one(window):
        return attention_bias(query_positions, query_groups, key_positions, key_groups, dtype, window)

    if kinds.layer_types is None:
        return one(kinds.sliding_window)
    return {kind: one(kinds.sliding_window if kind == "sliding_attention" else None)
            for kind in kinds.layer_types}


def shared_extension_supported(model: torch.nn.Module) -> bool:
    """Whether the model's attention kernel takes the custom 4D mask (``sdpa`` or ``eager``) and its
    layer types are ones :func:`model_masks` knows."""
    config = model.config
    kinds = AttentionKinds.of(config)
    known = kinds.layer_types is None or set(kinds.layer_types) <= {"full_attention", "sliding_attention"}
    return getattr(config, "_attn_implementation", None) in MASKABLE_ATTENTION and known


def _mask_dtype(model: torch.nn.Module) -> torch.dtype:
    dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in float32 at least (float64 stays float64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits.to(dtype), dim=-1)


# --- the prompt cache ----------------------------------------------------------------------------

@dataclass
class PromptCache:
    """A batch's prompts (all but their last token) in a ``DynamicCache``, with what each cache
    column holds: its position and its group (``SHARED`` prompt token, or ``PADDING``).
    ``last_tokens`` and ``last_positions`` are each prompt's last token and its position, which the
    next pass feeds."""

    cache: object
    key_positions: torch.Tensor
    key_groups: torch.Tensor
    last_tokens: torch.Tensor
    last_positions: torch.Tensor

    def extend(self, positions: torch.Tensor, groups: torch.Tensor) -> None:
        """Record the columns a forward pass has just appended to the cache."""
        self.key_positions = torch.cat([self.key_positions, positions], dim=1)
        self.key_groups = torch.cat([self.key_groups, groups], dim=1)


def _head_only(model: torch.nn.Module) -> bool:
    return getattr(model.config, "model_type", None) in HEAD_ONLY_TYPES


def project(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of final hidden states (``(..., hidden)``) of a :data:`HEAD_ONLY_TYPES` model: its
    output embedding, then ``final_logit_softcapping`` where the config sets it (Gemma 2/3)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def prefill(model: torch.nn.Module, prompts: Sequence[Sequence[int]]) -> PromptCache:
    """Run the prompts, right-padded and without their last tokens, into a fresh cache. The model
    builds its own causal (and sliding-window) masks here; padding sits after every real token, so
    no real token sees it, and the later passes mask it out."""
    from transformers import DynamicCache

    device = _device(model)
    n = len(prompts)
    lengths = torch.tensor([len(p) - 1 for p in prompts], device=device)
    width = int(lengths.max())
    cache = DynamicCache()
    positions = torch.arange(width, device=device).expand(n, width)
    if width:
        tokens = _padded([p[:-1] for p in prompts], width, device)
        if _head_only(model):  # no logits at all
            model.get_decoder()(input_ids=tokens, position_ids=positions, cache=cache, use_cache=True)
        else:
            kwargs = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
            model(input_ids=tokens, position_ids=positions, cache=cache, use_cache=True, **kwargs)
    groups = torch.where(positions < lengths[:, None], SHARED, PADDING)
    last = torch.tensor([p[-1] for p in prompts], dtype=torch.long, device=device)
    return PromptCache(cache, positions.clone(), groups, last, lengths)


def _forward(model: torch.nn.Module, kinds: AttentionKinds, state: PromptCache, tokens: torch.Tensor,
             positions: torch.Tensor, groups: torch.Tensor, hidden: bool = False) -> torch.Tensor:
    """One pass of ``tokens`` on top of the cache under the shared-extension mask; returns logits,
    or with ``hidden`` (a :data:`HEAD_ONLY_TYPES` model) the decoder's last hidden states."""
    keys_pos = torch.cat([state.key_positions, positions], dim=1)
    keys_grp = torch.cat([state.key_groups, groups], dim=1)
    mask = model_masks(kinds, positions, groups, keys_pos, keys_grp, _mask_dtype(model))
    kwargs = dict(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=state.cache,
                  use_cache=True)
    out = model.get_decoder()(**kwargs).last_hidden_state if hidden else model(**kwargs).logits
    state.extend(positions, groups)
    return out


def _target_log_probs(model: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor, logits: bool
                      ) -> torch.Tensor:
    """``log p(targets[k] | states[k])`` for ``states`` of shape ``(n, hidden)`` (projected here, a
    slice at a time) or, with ``logits``, already logits ``(n, vocab)``."""
    if logits:
        return _log_softmax(states).gather(-1, targets[:, None])[:, 0]
    weight = model.get_output_embeddings().weight  # (under ZeRO-3 a partition: ds_shape is the whole's)
    step = max(1, PROJECT_ELEMENTS // getattr(weight, "ds_shape", weight.shape)[0])
    parts = [_log_softmax(project(model, states[a:a + step])).gather(-1, targets[a:a + step, None])[:, 0]
             for a in range(0, len(states), step)]
    return torch.cat(parts)


# --- rank classification -------------------------------------------------------------------------

def _regrouped(flat: np.ndarray, options: Sequence[Sequence]) -> list[np.ndarray]:
    """``flat``, one score per option in request order, back into one array per prompt."""
    out, at = [], 0
    for opts in options:
        out.append(flat[at:at + len(opts)].copy())
        at += len(opts)
    return out


def _check_requests(prompts, options) -> None:
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    for i, (p, opts) in enumerate(zip(prompts, options, strict=True)):
        if not p or not opts or any(len(o) == 0 for o in opts):
            raise ValueError(f"request {i}: a prompt needs at least one token and every option one token")


@torch.inference_mode()
def score_options(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                  options: Sequence[Sequence[Sequence[int]]], max_batch_tokens: int = 16_384,
                  max_batch_rows: int = 64, progress: Callable[[int], None] | None = None,
                  method: str = "auto") -> list[np.ndarray]:
    """The summed log-probability of each option's tokens given its prompt.

    ``prompts[i]`` is a token list, ``options[i]`` the token lists of its options (each non-empty).
    Returns one float64 array per prompt, in input order. Batches hold up to ``max_batch_rows``
    prompts and ``max_batch_tokens`` padded tokens (prompt plus all of its options);
    ``progress(n)`` is called with the number of prompts done after each batch. ``method``:
    ``shared`` (prompt once, options as one masked extension), ``per_option`` (one sequence per
    option) or ``auto`` (shared where :func:`shared_extension_supported`).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: allowed are {', '.join(METHODS)}")
    _check_requests(prompts, options)
    if is_encoder_decoder(model.config):  # (other encoder-decoders than T5's family: their own forward)
        if method != "per_option" and model.config.model_type in SEQ2SEQ_TYPES:
            return score_seq2seq(model, prompts, options, max_batch_tokens, max_batch_rows, progress)
        return score_per_option(model, prompts, options, max_batch_tokens, max_batch_rows, progress)
    if method == "per_option" or (method == "auto" and not shared_extension_supported(model)):
        return score_per_option(model, prompts, options, max_batch_tokens, max_batch_rows, progress)
    kinds = AttentionKinds.of(model.config)
    device = _device(model)
    sizes = [len(p) + sum(len(o) for o in opts) for p, opts in zip(prompts, options, strict=True)]
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    for batch in _batches(sizes, max_batch_tokens, max_batch_rows):
        state = prefill(model, [prompts[i] for i in batch])
        # each row: the prompt's last token (shared), then every option's tokens (its own group)
        exts = [[t for o in options[i] for t in o] for i in batch]
        width = 1 + max(len(e) for e in exts)
        n = len(batch)
        tokens = torch.zeros(n, width, dtype=torch.long, device=device)
        groups = torch.full((n, width), PADDING, dtype=torch.long, device=device)
        offset = torch.zeros(n, width, dtype=torch.long, device=device)  # 1 + index within its option
        groups[:, 0] = SHARED
        tokens[:, 0] = state.last_tokens
        for b, i in enumerate(batch):
            tokens[b, 1:1 + len(exts[b])] = torch.as_tensor(exts[b], dtype=torch.long)
            at = 1
            for j, o in enumerate(options[i]):
                groups[b, at:at + len(o)] = j
                offset[b, at:at + len(o)] = torch.arange(1, len(o) + 1)
                at += len(o)
        positions = state.last_positions[:, None] + offset
        head_only = _head_only(model)
        states = _forward(model, kinds, state, tokens, positions, groups, hidden=head_only)
        # an option's first token is predicted at column 0 (the prompt's last token), the rest by
        # the option's previous token; only those positions are projected onto the vocabulary
        cols = torch.arange(width, device=device)
        prev = torch.where(offset == 1, 0, cols - 1).clamp(min=0)
        row, col = torch.nonzero(groups >= 0, as_tuple=True)
        token_logp = _target_log_probs(model, states[row, prev[row, col]], tokens[row, col], not head_only)
        token_logp = token_logp.double().cpu().numpy()
        row, option = row.cpu().numpy(), groups[groups >= 0].cpu().numpy()
        for b, i in enumerate(batch):
            mine = row == b
            out[i] = np.bincount(option[mine], weights=token_logp[mine], minlength=len(options[i]))
        if progress:
            progress(n)
    return out


@torch.inference_mode()
def score_per_option(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                     options: Sequence[Sequence[Sequence[int]]], max_batch_tokens: int = 16_384,
                     max_batch_rows: int = 64, progress: Callable[[int], None] | None = None
                     ) -> list[np.ndarray]:
    """:func:`score_options` the plain way: one right-padded sequence per (prompt, option), no cache.
    A causal LM runs prompt + option under its own causal mask (:func:`_causal_option_sums`); an
    encoder-decoder runs its own ``forward``, encoder and decoder (:func:`_seq2seq_option_sums`).
    For attention kernels that take no custom mask, other encoder-decoders than T5's family, and the
    reference the shared paths are checked against."""
    _check_requests(prompts, options)
    device = _device(model)
    option_sums = _seq2seq_option_sums if is_encoder_decoder(model.config) else _causal_option_sums
    pairs = [(i, j) for i, opts in enumerate(options) for j in range(len(opts))]
    flat = np.zeros(len(pairs))
    done: set[int] = set()
    for batch in _batches([len(prompts[i]) + len(options[i][j]) for i, j in pairs], max_batch_tokens,
                          max_batch_rows):
        chosen = [pairs[k] for k in batch]
        flat[batch] = option_sums(model, [prompts[i] for i, _ in chosen], [options[i][j] for i, j in chosen],
                                  device)
        if progress:
            new = {i for i, _ in chosen} - done
            done |= new
            progress(len(new))
    return _regrouped(flat, options)


def _causal_option_sums(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                        options: Sequence[Sequence[int]], device: torch.device) -> np.ndarray:
    """Row ``b``'s summed log-probability of ``options[b]`` after ``prompts[b]``, from one forward
    pass of each prompt + option (right-padded)."""
    seqs = [list(p) + list(o) for p, o in zip(prompts, options, strict=True)]
    width = max(len(s) for s in seqs)
    tokens = _padded(seqs, width, device)
    positions = torch.arange(width, device=device).expand(len(seqs), width)
    logp = _log_softmax(model(input_ids=tokens, position_ids=positions, use_cache=False).logits)
    sums = np.zeros(len(seqs))
    for b, (prompt, option) in enumerate(zip(prompts, options, strict=True)):
        at = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(option), device=device)
        target = torch.as_tensor(list(option), dtype=torch.long, device=device)
        sums[b] = float(logp[b, at, target].double().sum())
    return sums


def _seq2seq_option_sums(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                         options: Sequence[Sequence[int]], device: torch.device) -> np.ndarray:
    """Row ``b``'s summed log-probability of ``options[b]`` given ``prompts[b]``, from the
    encoder-decoder's own ``forward`` (prompts and options right-padded)."""
    width = max(len(p) for p in prompts)
    ids = _padded(prompts, width, device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
    inputs, labels, real = _option_rows(model, options, device)
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=inputs,
                   decoder_attention_mask=real.long(), use_cache=False).logits
    logp = _log_softmax(logits).gather(-1, labels[..., None])[..., 0].double()
    return (logp * real).sum(-1).cpu().numpy()


# --- encoder-decoders ----------------------------------------------------------------------------

def _option_rows(model: torch.nn.Module, options: Sequence[Sequence[int]], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder inputs (start token, then each option but its last token), labels (the option) and
    the mask of real tokens, right-padded."""
    width = max(len(o) for o in options)
    start = start_token(model.config)
    inputs = _padded([[start, *o[:-1]] for o in options], width, device)
    labels = _padded(options, width, device)
    lengths = torch.tensor([len(o) for o in options], device=device)
    return inputs, labels, torch.arange(width, device=device)[None] < lengths[:, None]


def _label_log_probs(model: torch.nn.Module, states: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The log-probability of each label given its decoder state, float64 (only those states
    projected onto the vocabulary, a slice at a time)."""
    weight = model.get_output_embeddings().weight  # (under ZeRO-3 a partition: ds_shape is the whole's)
    step = max(1, PROJECT_ELEMENTS // getattr(weight, "ds_shape", weight.shape)[0])
    logp = torch.cat([_log_softmax(lm_logits(model, states[a:a + step]))
                      .gather(-1, labels[a:a + step, None])[:, 0] for a in range(0, len(states), step)])
    return logp.double().cpu().numpy()


def _option_segments(model: torch.nn.Module, options: Sequence[Sequence[Sequence[int]]], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder row per prompt holding all of its options back to back, option ``j`` as segment
    ``j + 1``: (decoder inputs: the start token, then the option but its last token; labels: the
    option; positions, restarting at 0 per option; segments, 0 for padding), right-padded.

    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(config=SimpleNamespace(decoder_start_token_id=0, pad_token_id=0))
    >>> inputs, labels, positions, segments = _option_segments(m, [[[7, 1], [8, 9, 1]], [[5]]],
    ...                                                        torch.device("cpu"))
    >>> inputs.tolist(), labels.tolist()
    ([[0, 7, 0, 8, 9], [0, 0, 0, 0, 0]], [[7, 1, 8, 9, 1], [5, 0, 0, 0, 0]])
    >>> positions.tolist(), segments.tolist()
    ([[0, 1, 0, 1, 2], [0, 0, 0, 0, 0]], [[1, 1, 2, 2, 2], [1, 0, 0, 0, 0]])
    """
    start = start_token(model.config)
    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []
    for opts in options:
        inputs = [t for o in opts for t in (start, *o[:-1])]
        labels = [t for o in opts for t in o]
        positions = [k for o in opts for k in range(len(o))]
        segments = [j + 1 for j, o in enumerate(opts) for _ in o]
        rows.append((inputs, labels, positions, segments))
    width = max(len(r[0]) for r in rows)
    return tuple(_padded([r[k] for r in rows], width, device) for k in range(4))


def _encode(model: torch.nn.Module, prompts: Sequence[Sequence[int]], device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts (right-padded) through the encoder: (last hidden states, 2D padding mask)."""
    width = max(len(p) for p in prompts)
    ids = _padded(prompts, width, device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
    return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask


@torch.inference_mode()
def score_seq2seq(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                  options: Sequence[Sequence[Sequence[int]]], max_batch_tokens: int = 16_384,
                  max_batch_rows: int = 64, progress: Callable[[int], None] | None = None
                  ) -> list[np.ndarray]:
    """:func:`score_options` for a T5 or mT5: each batch's prompts run through the encoder once;
    all options of a prompt then run as one decoder row (:func:`_option_segments`: causal within
    each option, positions and T5's relative position buckets restarting per option, every option
    cross-attending to its prompt; :func:`flanpipe.core.model.seq2seq.option_masks`), through the
    model's own decoder blocks (:func:`flanpipe.core.model.seq2seq.run_stack`). The prompt's encoder
    output and its cross-attention keys and values are computed once for all of its options, and
    the decoder holds no per-option padding."""
    device = _device(model)
    decoder = model.get_decoder()
    sizes = [len(p) + sum(len(o) for o in opts) for p, opts in zip(prompts, options, strict=True)]
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    for batch in _batches(sizes, max_batch_tokens, max_batch_rows):
        encoded, mask = _encode(model, [prompts[i] for i in batch], device)
        inputs, labels, positions, segments = _option_segments(model, [options[i] for i in batch], device)
        self_mask, cross_mask = option_masks(model, mask.bool(), segments, encoded.dtype)
        hidden = run_stack(decoder, inputs, positions, self_mask, encoded, cross_mask)
        row, col = torch.nonzero(segments > 0, as_tuple=True)
        logp = _label_log_probs(model, hidden[row, col], labels[row, col])
        which = (segments[row, col] - 1).cpu().numpy()
        row = row.cpu().numpy()
        for b, i in enumerate(batch):
            mine = row == b
            out[i] = np.bincount(which[mine], weights=logp[mine], minlength=len(options[i]))
        if progress:
            progress(len(batch))
    return out


def _generate_seq2seq(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      eos_ids: list[int], temperature: float, top_k: int, seed: int, max_batch_tokens: int,
                      max_batch_rows: int, progress: Callable[[int], None] | None,
                      vocab_limit: int | None) -> list[list[int]]:
    """:func:`generate` for an encoder-decoder: ``model.generate`` on right-padded batches of prompts
    (each encoded once), seeded per batch; each output cut at its first EOS."""
    device = _device(model)
    rows = model.get_output_embeddings().weight.shape[0]
    suppress = list(range(vocab_limit, rows)) if vocab_limit is not None and vocab_limit < rows else None
    sampled = temperature > 0
    out: list[list[int]] = [[] for _ in prompts]
    sizes = [len(p) + max_new_tokens for p in prompts]
    for number, batch in enumerate(_batches(sizes, max_batch_tokens, max_batch_rows)):
        torch.manual_seed(seed * 1_000_003 + number)
        width = max(len(prompts[i]) for i in batch)
        ids = _padded([prompts[i] for i in batch], width, device)
        lengths = torch.tensor([len(prompts[i]) for i in batch], device=device)
        mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
        new = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sampled,
                             temperature=temperature if sampled else None, top_k=top_k if sampled else None,
                             top_p=None, eos_token_id=eos_ids, pad_token_id=eos_ids[0],
                             decoder_start_token_id=start_token(model.config), suppress_tokens=suppress)
        for b, i in enumerate(batch):
            row = new[b, 1:].tolist()  # (after the decoder's start token)
            out[i] = row[:next((k for k, t in enumerate(row) if t in eos_ids), len(row))]
        if progress:
            progress(len(batch))
    return out


# --- generation ----------------------------------------------------------------------------------

@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             eos_id: int | Sequence[int], temperature: float = 0.0, top_k: int = 0, seed: int = 0,
             max_batch_tokens: int = 16_384, max_batch_rows: int = 32,
             progress: Callable[[int], None] | None = None, method: str = "auto",
             vocab_limit: int | None = None) -> list[list[int]]:
    """New tokens for each prompt, up to and without the first EOS (any of ``eos_id``, which may be
    a list, as Llama 3's), at most ``max_new_tokens``.

    ``temperature`` 0 decodes greedily; above 0 it samples from the softmax at that temperature,
    over the ``top_k`` most likely tokens when ``top_k`` > 0 (the paper's samples: 0.9 and 40).
    Sampling is seeded per batch from ``seed``, so a rerun gives the same text. ``method``:
    ``shared`` (batched, on the prompt cache with our masks), ``one_by_one`` (``transformers``'
    ``model.generate``, one prompt at a time, for kernels that take no 4D mask) or ``auto``.
    ``vocab_limit``: only ids below it are generated (a model's embedding padded past its
    tokenizer's vocabulary has rows no text decodes to).
    """
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature ({temperature}) and top_k ({top_k}) must be >= 0")
    if method not in GENERATE_METHODS:
        raise ValueError(f"method {method!r}: allowed are {', '.join(GENERATE_METHODS)}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    eos_ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    if is_encoder_decoder(model.config):
        return _generate_seq2seq(model, prompts, max_new_tokens, eos_ids, temperature, top_k, seed,
                                 max_batch_tokens, max_batch_rows, progress, vocab_limit)
    if method == "one_by_one" or (method == "auto" and not shared_extension_supported(model)):
        return _generate_one_by_one(model, prompts, max_new_tokens, eos_ids, temperature, top_k, seed,
                                    progress, vocab_limit)
    kinds = AttentionKinds.of(model.config)
    device = _device(model)
    eos = torch.tensor(eos_ids, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    sizes = [len(p) + max_new_tokens for p in prompts]
    for number, batch in enumerate(_batches(sizes, max_batch_tokens, max_batch_rows)):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + number)
        state = prefill(model, [prompts[i] for i in batch])
        n = len(batch)
        token, position = state.last_tokens, state.last_positions
        shared = torch.full((n, 1), SHARED, dtype=torch.long, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        produced = []
        for _ in range(max_new_tokens):
            logits = _forward(model, kinds, state, token[:, None], position[:, None], shared)
            logp = _log_softmax(logits[:, -1])
            if vocab_limit is not None:
                logp[:, vocab_limit:] = float("-inf")
            token = torch.where(done, eos[0], _pick(logp, temperature, top_k, gen))
            produced.append(token)
            done |= torch.isin(token, eos)
            position = position + 1
            if bool(done.all()):
                break
        rows = torch.stack(produced, dim=1).cpu().tolist() if produced else [[] for _ in batch]
        for b, i in enumerate(batch):
            row = rows[b]
            stop = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
            out[i] = row[:stop]
        if progress:
            progress(n)
    return out


def _generate_one_by_one(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         eos_ids: list[int], temperature: float, top_k: int, seed: int,
                         progress: Callable[[int], None] | None, vocab_limit: int | None = None
                         ) -> list[list[int]]:
    """:func:`generate` through ``model.generate``, one unpadded prompt at a time (seeded per prompt)."""
    device = _device(model)
    rows = model.get_output_embeddings().weight.shape[0]
    suppress = list(range(vocab_limit, rows)) if vocab_limit is not None and vocab_limit < rows else None
    out = []
    for number, prompt in enumerate(prompts):
        torch.manual_seed(seed * 1_000_003 + number)
        ids = torch.tensor([list(prompt)], device=device)
        sampled = temperature > 0
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=sampled, temperature=temperature if sampled else None,
                             top_k=top_k if sampled else None, top_p=None, eos_token_id=eos_ids,
                             pad_token_id=eos_ids[0], suppress_tokens=suppress)[0, len(prompt):].tolist()
        out.append(new[:next((k for k, t in enumerate(new) if t in eos_ids), len(new))])
        if progress:
            progress(1)
    return out


def _pick(logp: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logp.argmax(-1)
    logits = logp / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(-1)
