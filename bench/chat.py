"""The ``chat`` format's tokenization: ours next to ``transformers``' ``apply_chat_template``, same run.

    flanpipe bench chat --model ~/.cache/flanpipe/smollm2-135m-instruct [--rows 20000] [--threads 2]

On FLAN-like synthetic examples (:func:`bench.pack.synthetic_examples`) it times

1. rendering alone: :meth:`flanpipe.core.tokens.chat.ChatTemplate.render` (the template rendered once
   around sentinels, rows built by concatenation) against the template's Jinja render per row (what
   ``apply_chat_template(..., tokenize=False)`` runs), for the whole conversation and the prompt;
2. tokens (ours and ``text``: best of two): :meth:`flanpipe.core.tokens.chat.ChatTemplate.encode` (the
   whole conversation batch-encoded, the prompt split off at the template's added token) against
   ``AutoTokenizer.apply_chat_template`` on the same conversations, batched, for the whole
   conversation and the prompt (its fastest path: one call per list), and checks that
   every row's tokens are the peer's; beside them, the ``text`` format's encoding of the same
   inputs and targets (what chat costs over it).
"""

from __future__ import annotations

import time

from bench.pack import synthetic_examples
from flanpipe.core.tokens.chat import chat_template
from flanpipe.core.tokens.tokenizers import load_tokenizer


def bench_chat(model: str, rows: int = 20_000, threads: int = 2) -> dict:
    """Run both measurements; returns the figures (``print_chat`` shows them)."""
    from transformers import AutoTokenizer

    users, replies = synthetic_examples(rows)
    tok = load_tokenizer(model)
    chat = chat_template(tok)
    peer = AutoTokenizer.from_pretrained(model, local_files_only=True)

    t0 = time.perf_counter()
    chat.render(users, replies), chat.render(users)
    ours_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    [chat.render_one(u, r) for u, r in zip(users, replies, strict=True)], [chat.render_one(u) for u in users]
    jinja_render = time.perf_counter() - t0

    text_s = ours_s = float("inf")
    for _ in range(2):  # best of two, alternating (a shared machine's load comes and goes)
        t0 = time.perf_counter()
        tok.encode_batch(users, threads), tok.encode_batch(replies, threads)
        text_s = min(text_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = chat.encode(users, replies, threads)
        ours_s = min(ours_s, time.perf_counter() - t0)
    conversations = [[{"role": "user", "content": u}, {"role": "assistant", "content": r}]
                     for u, r in zip(users, replies, strict=True)]
    t0 = time.perf_counter()
    whole = peer.apply_chat_template(conversations, tokenize=True)["input_ids"]
    prompts = peer.apply_chat_template([c[:1] for c in conversations], tokenize=True,
                                       add_generation_prompt=True)["input_ids"]
    peer_s = time.perf_counter() - t0
    differ = sum(p.tolist() + r.tolist() != w or p.tolist() != q
                 for p, r, w, q in zip(ours.prompts, ours.replies, whole, prompts, strict=True))
    return {"rows": rows, "threads": threads, "model": model, "verbatim": chat.verbatim,
            "ours_render_s": ours_render, "jinja_render_s": jinja_render, "ours_s": ours_s,
            "peer_s": peer_s, "text_s": text_s, "split_at_tail": chat.split_at_tail, "rows_differ": differ,
            "replies_merged": int(ours.merged.sum())}


def print_chat(r: dict) -> None:
    print(f"chat benchmark: {r['rows']:,} FLAN-like examples, {r['model']}, {r['threads']} encoder threads")
    print(f"  1. rendering (conversation and prompt): ours {r['ours_render_s']:.3f} s, Jinja per row "
          f"{r['jinja_render_s']:.3f} s: {r['jinja_render_s'] / r['ours_render_s']:.0f}x"
          + ("" if r["verbatim"] else " (template not verbatim: ours renders per row too)"))
    print(f"  2. tokens: ours {r['ours_s']:.2f} s ({r['rows'] / r['ours_s']:,.0f} rows/s), "
          f"apply_chat_template batched {r['peer_s']:.2f} s ({r['rows'] / r['peer_s']:,.0f} rows/s): "
          f"{r['peer_s'] / r['ours_s']:.1f}x; rows whose tokens differ from the peer's: {r['rows_differ']} "
          f"(replies merged into the prompt: {r['replies_merged']}; prompts split at the template's added "
          f"token: {r['split_at_tail']})")
    print(f"     the text format's encoding of the same inputs and targets: {r['text_s']:.2f} s "
          f"(chat / text: {r['ours_s'] / r['text_s']:.2f})")


def run(model: str, rows: int, threads: int) -> int:
    """``flanpipe bench chat``."""
    print_chat(bench_chat(model, rows, threads))
    return 0
