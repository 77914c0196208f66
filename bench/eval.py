"""Evaluation speed benchmark: rank classification against lm-evaluation-harness's HF backend, same run.

    flanpipe bench eval [--rows 96 (prompts)] [--threads 2] [--architecture llama|t5]

A small random-init ``transformers`` Llama (``LlamaForCausalLM``: hidden 256, 4 layers, 4 heads,
MLP 8/3 x hidden; a SentencePiece vocabulary of 4,000 pieces trained here on synthetic FLAN-like
text, :func:`bench.pack.synthetic_examples`) is saved as a Hugging Face checkpoint folder
(``save_pretrained``, and the tokenizer seam's ``save_pretrained``) in a temporary directory. Both
scorers read that folder:

- **ours**: :func:`flanpipe.core.eval.scoring.score_options` on the model
  :func:`flanpipe.stages.evaluate.load_for_scoring` loads (``AutoModelForCausalLM``): each prompt runs once
  into a ``DynamicCache`` and all of its options run together on top, under one custom 4D mask;
- **peer**: ``lm_eval.models.huggingface.HFLM`` (``device="cpu"``, ``dtype="float32"``), which runs
  prompt + option as one sequence per request. It is given the very same token ids through
  ``HFLM._loglikelihood_tokens``, which is what its public ``loglikelihood`` calls once it has
  tokenized the (context, continuation) strings; so the peer pays no tokenization here, and the
  two tokenizers' handling of a string split in two cannot make the sequences differ.

With ``--architecture t5`` the model is a random-init T5 v1.1 / FLAN-T5-shaped encoder-decoder
(``T5ForConditionalGeneration`` of the same width, depth and heads, built and saved through the
checkpoint seam, loaded with ``AutoModelForSeq2SeqLM``):

- **ours**: :func:`flanpipe.core.eval.scoring.score_options`, which encodes each prompt once and scores
  all of its options as decoder rows against that encoder output (the cross-attention keys and
  values computed once per prompt);
- **peer**: ``HFLM`` with ``backend="seq2seq"``, which runs the encoder and the decoder once per
  (prompt, option) request: the prompt as encoder input, the option as labels.

Multiple-choice data: FLAN-like instructions of 100-300 tokens (a passage, a question and an
OPTIONS list) with ``options`` options each, in two cases:

1. multi-token options: phrases of 5-15 tokens, EOS included (the target);
2. single-token options: one-piece class words (``yes``, ``no`` ...) without EOS. Here lm-eval's
   ``logits_cache`` already runs each prompt once for all of its options, so the ratio shows what is
   left: ours projects only the last prompt position onto the vocabulary.

A request is one (prompt, option) pair, as lm-eval counts them. Both scorers are warmed up, then
timed in alternating rounds (peer, ours, peer, ours ...); each side's figure is its fastest round,
and the ratio of each round is shown too (with its median), so that a burst of load from other work
on the machine shows instead of skewing the figure; so are the CPU seconds of each side's best round
(this process's CPU time, which other work on a shared machine does not inflate; with ``--threads 1``
it holds no spin-waiting either). Every option's
log-likelihood is compared (max absolute difference, float32) and the argmax option of every prompt
must agree (else :class:`RuntimeError`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.pack import CLASS_WORDS, synthetic_examples
from flanpipe.core.config import ModelSpec, TokenizerSource
from flanpipe.core.eval.scoring import score_options
from flanpipe.core.model.checkpoint import build_model, save_checkpoint
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens.tokenizers import SentencePieceTokenizer, Tokenizer, load_tokenizer, train_spm
from flanpipe.stages.evaluate import load_for_scoring
from tests.synthetic import WORDS

log = logging.getLogger(__name__)

QUESTION = "Which of the following best continues the text above?"
PROMPT_TOKENS = (100, 300)  # instruction length, EOS included
OPTION_TOKENS = (5, 15)  # multi-token option length, EOS included
WORD_VOCAB = 20_000  # made-up words of the synthetic text


def instruction(passage: str, options: list[str]) -> str:
    """A FLAN-style multiple-choice instruction with an OPTIONS suffix.

    >>> print(instruction("the river rose", ["yes", "no"]))
    the river rose
    <BLANKLINE>
    Which of the following best continues the text above?
    <BLANKLINE>
    OPTIONS:
    - yes
    - no
    """
    return f"{passage}\n\n{QUESTION}\n\nOPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def multiple_choice(tok: Tokenizer, prompts: int, options: int, seed: int) -> dict[str, tuple[list, list]]:
    """``{"multi": (prompt ids, option ids), "single": (...)}``: ``prompts`` instructions of
    :data:`PROMPT_TOKENS` tokens (the instruction's pieces and EOS) over the same passages, each with
    ``options`` options; multi-token options are :data:`OPTION_TOKENS` tokens (a phrase and EOS),
    single-token options one piece each (class words such as ``yes`` and ``no``, then
    :data:`tests.synthetic.WORDS`, those the vocabulary has as one piece). Passages and
    phrases come from :func:`~bench.pack.synthetic_examples` (its inputs, and the first 2-6
    words of its free-text targets); instructions outside the length range are drawn again."""
    rng = np.random.default_rng(derive_seed(seed, "bench/eval/data"))
    eos = tok.eos_id
    words = [w for w in dict.fromkeys(CLASS_WORDS + WORDS) if len(tok.encode(w)) == 1]
    if len(words) < options:
        raise ValueError(f"options ({options}): only {len(words)} candidate words are single pieces")
    single_texts = words[:options]
    single_ids = [tok.encode(w) for w in single_texts]
    out: dict[str, tuple[list, list]] = {"multi": ([], []), "single": ([], [])}
    draw = 0
    while len(out["multi"][0]) < prompts:
        draw += 1
        inputs, targets = synthetic_examples(8 * prompts, derive_seed(seed, f"bench/eval/{draw}"), WORD_VOCAB)
        phrases = [" ".join(t.split()[:rng.integers(2, 7)]) for t in targets if " " in t]
        phrase_ids = [ids.tolist() for ids in tok.encode_batch(phrases)]
        fits = [i for i, ids in enumerate(phrase_ids)
                if OPTION_TOKENS[0] <= len(ids) + 1 <= OPTION_TOKENS[1]]
        for k, text in enumerate(inputs):
            if len(out["multi"][0]) == prompts or len(fits) < options * (k + 1):
                break
            passage = text.split("\n\nOPTIONS:")[0]
            chosen = fits[options * k:options * (k + 1)]
            multi = tok.encode(instruction(passage, [phrases[i] for i in chosen])) + [eos]
            single = tok.encode(instruction(passage, single_texts)) + [eos]
            if not all(PROMPT_TOKENS[0] <= len(p) <= PROMPT_TOKENS[1] for p in (multi, single)):
                continue
            out["multi"][0].append(multi)
            out["multi"][1].append([phrase_ids[i] + [eos] for i in chosen])
            out["single"][0].append(single)
            out["single"][1].append(single_ids)
    return out


def build_checkpoint(out: Path, vocab: int, hidden: int, layers: int, heads: int, seed: int,
                     threads: int, architecture: str = "llama"):
    """A SentencePiece model trained on synthetic text and a random-init ``transformers`` Llama (or,
    ``architecture="t5"``, a T5 v1.1-shaped encoder-decoder) over it, saved as a Hugging Face
    checkpoint folder ``out / "model"``; returns (folder, the model's config)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    inputs, targets = synthetic_examples(5_000, seed, WORD_VOCAB)
    sample = [line for t in inputs + targets for line in t.split("\n") if line]
    spm_bytes, size = train_spm(sample, TokenizerSource(vocab_size=vocab), seed=seed, threads=threads)
    tok = SentencePieceTokenizer(spm_bytes)
    if architecture != "llama":
        spec = ModelSpec(architecture=architecture, hidden_size=hidden, num_layers=layers, num_heads=heads)
        torch.manual_seed(derive_seed(seed, "bench/eval/init"))
        model = build_model(spec, tok.vocab_size, 1024, special_ids=tok.special_ids())
        save_checkpoint(model, tok, out / "model")
        return out / "model", model.config
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=64 * math.ceil(8 * hidden / 3 / 64), max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)
    torch.manual_seed(derive_seed(seed, "bench/eval/init"))
    LlamaForCausalLM(config).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model", config


def _peer_requests(prompts: list[list[int]], options: list[list[list[int]]]) -> list:
    """``_loglikelihood_tokens`` requests: ``((context, continuation), context ids, continuation
    ids)``, one per (prompt, option) pair, prompt-major. The strings are only cache keys there."""
    return [(("", ""), p, o) for p, opts in zip(prompts, options, strict=True) for o in opts]


def _timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, the value)."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - start, time.process_time() - cpu, value


def bench_eval(prompts: int = 96, options: int = 4, vocab: int = 4_000, hidden: int = 256, layers: int = 4,
               heads: int = 4, batch_requests: int = 32, rounds: int = 5, single: bool = True,
               threads: int = 2, seed: int = 1234, architecture: str = "llama") -> dict:
    """Score the same multiple-choice requests with ours and lm-eval's HFLM; returns the figures
    (``print_eval`` shows them). Both batch ``batch_requests`` requests per forward pass (ours:
    ``batch_requests // options`` prompts with all of their options). ``architecture``: ``llama``
    (a decoder) or ``t5`` (an encoder-decoder; the peer is HFLM's seq2seq backend). Raises
    ``RuntimeError`` when the two pick a different option for any prompt."""
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(threads)
    r: dict = {"prompts": prompts, "options": options, "threads": threads, "rounds": rounds,
               "batch_requests": batch_requests, "seed": seed, "architecture": architecture}
    with tempfile.TemporaryDirectory(prefix="flanpipe-bench-eval-") as tmp_name:
        start = time.perf_counter()
        folder, config = build_checkpoint(Path(tmp_name), vocab, hidden, layers, heads, seed, threads,
                                          architecture)
        data = multiple_choice(load_tokenizer(folder), prompts, options, seed)
        r["build_s"] = time.perf_counter() - start
        ours_model, _ = load_for_scoring(folder, "fp32")  # as the peer's dtype="float32"
        r.update(vocab=config.vocab_size, hidden=hidden, layers=layers, heads=heads,
                 parameters=sum(p.numel() for p in ours_model.parameters()),
                 model=type(ours_model).__name__, attention=ours_model.config._attn_implementation)
        backend = "seq2seq" if config.is_encoder_decoder else "causal"
        peer = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=batch_requests,
                    backend=backend)
    rows = max(1, batch_requests // options)
    for case in ("multi", "single") if single else ("multi",):
        ps, opts = data[case]
        requests = _peer_requests(ps, opts)

        def run_peer(requests=requests):
            return np.array([ll for ll, _ in peer._loglikelihood_tokens(requests, disable_tqdm=True)])

        def run_ours(ps=ps, opts=opts):
            return np.concatenate(score_options(ours_model, ps, opts, max_batch_tokens=1 << 30,
                                                max_batch_rows=rows))

        warm = max(1, min(len(ps), 2 * rows))  # a couple of batches each
        peer._loglikelihood_tokens(_peer_requests(ps[:warm], opts[:warm]), disable_tqdm=True)
        score_options(ours_model, ps[:warm], opts[:warm], max_batch_rows=rows)
        peer_times, ours_times, peer_cpu, ours_cpu = [], [], [], []
        for _ in range(rounds):
            t, cpu, peer_ll = _timed(run_peer)
            peer_times.append(t)
            peer_cpu.append(cpu)
            t, cpu, ours_ll = _timed(run_ours)
            ours_times.append(t)
            ours_cpu.append(cpu)
        bounds = np.cumsum([0] + [len(o) for o in opts])
        peer_pick = np.array([np.argmax(peer_ll[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        ours_pick = np.array([np.argmax(ours_ll[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        n = len(requests)
        c = {"requests": n, "prompt_tokens": _stats([len(p) for p in ps]),
             "option_tokens": _stats([len(o) for group in opts for o in group]),
             "peer_s": min(peer_times), "ours_s": min(ours_times),
             "peer_round_s": peer_times, "ours_round_s": ours_times,
             "max_abs_diff": float(np.abs(peer_ll - ours_ll).max()),
             "choices_agree": int((peer_pick == ours_pick).sum())}
        c["peer_requests_per_s"] = n / c["peer_s"]
        c["ours_requests_per_s"] = n / c["ours_s"]
        c["ratio"] = c["ours_requests_per_s"] / c["peer_requests_per_s"]
        c["round_ratios"] = [p / o for p, o in zip(peer_times, ours_times, strict=True)]
        c["median_round_ratio"] = float(np.median(c["round_ratios"]))
        # CPU seconds: what each scorer computed, whatever else the machine was running
        c["peer_cpu_s"], c["ours_cpu_s"] = min(peer_cpu), min(ours_cpu)
        c["cpu_ratio"] = c["peer_cpu_s"] / c["ours_cpu_s"]
        r[case] = c
        if c["choices_agree"] != len(ps):
            raise RuntimeError(f"{case}-token options: ours and lm-eval pick different options for "
                               f"{len(ps) - c['choices_agree']} of {len(ps)} prompts (max score difference "
                               f"{c['max_abs_diff']:.2e})")
    return r


def _stats(values: list[int]) -> dict:
    return {"min": int(min(values)), "mean": float(np.mean(values)), "max": int(max(values))}


def print_eval(r: dict) -> None:
    print(f"eval benchmark: rank classification, {r['prompts']} prompts x {r['options']} options; "
          f"random-init {r['model']} ({r['attention']} attention), {r['parameters'] / 1e6:.1f}M parameters "
          f"(hidden {r['hidden']}, "
          f"{r['layers']} layers, {r['heads']} heads, {r['vocab']:,}-piece SentencePiece vocabulary), "
          f"float32 on CPU, {r['threads']} threads; {r['batch_requests']} requests per batch; "
          f"best of {r['rounds']} alternating rounds")
    names = {"multi": "multi-token options", "single": "single-token options"}
    seq2seq = r.get("architecture", "llama") != "llama"
    peer_name = "lm-eval HFLM seq2seq (encoder + decoder per request)" if seq2seq else \
        "lm-eval HFLM (one sequence per request)"
    ours_name = "flanpipe score_options (prompt encoded once)" if seq2seq else \
        "flanpipe score_options (prompt cached)"
    width = max(len(peer_name), len(ours_name))
    for case in ("multi", "single"):
        if case not in r:
            continue
        c = r[case]
        p, o = c["prompt_tokens"], c["option_tokens"]
        print(f"  {names[case]}: {c['requests']:,} requests; prompts {p['min']}-{p['max']} tokens "
              f"(mean {p['mean']:.0f}), options {o['min']}-{o['max']} (mean {o['mean']:.1f})")
        print(f"     {peer_name:<{width}}  {c['peer_requests_per_s']:8.1f} requests/s  ({c['peer_s']:.2f} s)")
        print(f"     {ours_name:<{width}}  {c['ours_requests_per_s']:8.1f} requests/s  "
              f"({c['ours_s']:.2f} s)   ours/peer {c['ratio']:.2f}x")
        print(f"     ratio in each round {', '.join(f'{x:.2f}x' for x in c['round_ratios'])}; median "
              f"{c['median_round_ratio']:.2f}x")
        print(f"     CPU seconds (best round): lm-eval {c['peer_cpu_s']:.2f} s, "
              f"ours {c['ours_cpu_s']:.2f} s, ratio {c['cpu_ratio']:.2f}x")
        print(f"     scores: max |ours - peer| {c['max_abs_diff']:.1e}; same choice on "
              f"{c['choices_agree']}/{r['prompts']} prompts")
    m = r["multi"]
    print(f"  target: >= 3x on multi-token options: wall clock {'met' if m['ratio'] >= 3 else 'NOT MET'} "
          f"({m['ratio']:.2f}x), CPU time {'met' if m['cpu_ratio'] >= 3 else 'NOT MET'} "
          f"({m['cpu_ratio']:.2f}x)")


def run(rows: int, threads: int, architecture: str) -> int:
    """``flanpipe bench eval``: ``rows`` prompts."""
    print_eval(bench_eval(prompts=rows, threads=threads, architecture=architecture))
    return 0
