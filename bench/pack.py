"""Tokenize-and-pack benchmark: our stage next to raw SentencePiece and simpler packers, same run.

    flanpipe bench pack [--rows 100000] [--threads 2] [--vocab 32000]

On synthetic examples with a FLAN-like length distribution (made here: long-tailed inputs, some with
an OPTIONS suffix; 60% one-word class targets, the rest free text), it measures

1. tokenizer throughput in MB of UTF-8 text per second: our stage end to end, from the mixture's
   Parquet shards to packed ``.npy`` shards on disk, against raw
   ``SentencePieceProcessor.encode(list_of_texts, num_threads=T)`` batch calls on the same texts
   (already in Python lists, so the peer pays no reading, truncation, packing or writing);
2. packing efficiency on the same examples: best-fit decreasing next to next-fit in arrival order
   and pad-to-max (one example per row), decoder-only; for encoder-decoder, rows against the lower
   bound ``max(sum(inputs) / 1024, sum(targets) / 256)``;
3. packer speed: examples per second of :func:`flanpipe.core.tokens.binpack.pack` alone, on one core;
4. the shards' format (:mod:`flanpipe.core.tokens.shards`), against the format pack wrote before stage
   version 3 (every field of :func:`flanpipe.core.tokens.shards.row_dtype` stored, one structured ``.npy``
   per shard; the peer writes it here from the same rows): bytes on disk per row, both model kinds; and batch
   reads of the decoder-only rows, in rows per second: :meth:`flanpipe.core.tokens.shards.PackedShards.take`
   (tokens and lengths memory-mapped, the other fields rebuilt) against the peer's memory-mapped take of the
   stored fields, alone and with the trainer's conversion to int64 tensors
   (:func:`flanpipe.stages.train.to_batch`), over the trainer's own row order
   (:func:`flanpipe.stages.train.step_rows`).
5. the trainer's check of the shards against the pack manifest before its first step
   (:func:`flanpipe.core.tokens.shards.verify_shards`: every file's size and sha256), in seconds and MB/s
   of the decoder-only shards, against the time our stage took to write them.
   Both read from the page cache (the files were just written): the peer's 3.5x more bytes would
   cost it more from a cold disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.dedup import vocabulary
from flanpipe.core.config import PackSlice, TokenizerSource, parse_config
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens import binpack
from flanpipe.core.tokens.shards import PackedShards, verify_shards
from flanpipe.core.tokens.tokenizers import load_processor, train_spm
from flanpipe.stages.pack import tokenize_and_pack

CLASS_WORDS = ["yes", "no", "maybe", "positive", "negative", "entailment", "neutral", "contradiction"]
ROWS_PER_SHARD = 50_000
READ_BATCHES = 2_000
BATCH_ROWS = 8


def synthetic_examples(n: int, seed: int = 0, vocab_size: int = 60_000) -> tuple[list[str], list[str]]:
    """FLAN-like (inputs, targets): input word counts log-normal around 90 (a long tail of passages
    up to 1,500 words), 40% with an OPTIONS suffix; targets one class word (60%) or log-normal text
    around 15 words. Words follow a Zipf law over a made-up vocabulary.

    >>> x, y = synthetic_examples(3)
    >>> len(x), len(y), all(isinstance(t, str) and t for t in x + y)
    (3, 3, True)
    """
    rng = np.random.default_rng(derive_seed(seed, "bench/pack"))
    vocab = vocabulary(vocab_size, seed)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    in_words = np.minimum(np.ceil(rng.lognormal(np.log(90), 0.9, n)), 1500).astype(np.int64)
    free = rng.random(n) >= 0.6
    tg_words = np.where(free, np.minimum(np.ceil(rng.lognormal(np.log(15), 0.9, n)), 300), 0).astype(np.int64)
    words = vocab[rng.choice(len(vocab), int(in_words.sum() + tg_words.sum()), p=p / p.sum())]
    counts = np.concatenate([in_words, tg_words])
    texts = [" ".join(words[e - k:e]) for e, k in zip(np.cumsum(counts), counts, strict=True)]
    inputs, targets = texts[:n], texts[n:]
    options = rng.random(n) < 0.4
    for i in np.flatnonzero(options):
        inputs[i] += "\n\nOPTIONS:\n- yes\n- no"
    classes = rng.integers(len(CLASS_WORDS), size=n)
    targets = [t if f else CLASS_WORDS[c] for t, f, c in zip(targets, free, classes, strict=True)]
    return inputs, targets


def _write_mixture(directory: Path, inputs: list[str], targets: list[str]) -> Path:
    n = len(inputs)
    table = pa.table({"inputs": inputs, "targets": targets, "dataset": [f"d{i % 62:02d}" for i in range(n)],
                      "example_id": [f"ex{i}" for i in range(n)],
                      "template_id": pa.array(np.arange(n) % 10, pa.int32()),
                      "epoch": pa.array(np.zeros(n), pa.int32())})
    directory.mkdir(parents=True)
    for k, start in enumerate(range(0, n, ROWS_PER_SHARD)):
        pq.write_table(table.slice(start, ROWS_PER_SHARD), directory / f"part-{k:05d}.parquet",
                       compression="zstd")
    return directory


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_pack(rows: int = 100_000, threads: int = 2, vocab: int = 32_000, window: int = 20_000,
               repeats: int = 2) -> dict:
    """Run the three measurements; returns the figures (``print_pack`` shows them)."""
    r: dict = {"rows": rows, "threads": threads, "window": window}
    start = time.perf_counter()
    inputs, targets = synthetic_examples(rows)
    r["mb"] = (sum(len(t.encode()) for t in inputs) + sum(len(t.encode()) for t in targets)) / 1e6
    r["build_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="flanpipe-bench-pack-") as tmp_name:
        tmp = Path(tmp_name)
        shards = _write_mixture(tmp / "mixture", inputs, targets)
        start = time.perf_counter()
        sample = [line for t in inputs[:50_000] + targets[:50_000] for line in t.split("\n") if line]
        model, r["vocab"] = train_spm(sample, TokenizerSource(vocab_size=vocab), seed=0, threads=threads)
        r["train_s"] = time.perf_counter() - start
        (tmp / "spm.model").write_bytes(model)
        sp = load_processor(model)

        def raw(return_type=int):
            sp.encode(inputs, num_threads=threads, return_type=return_type)
            sp.encode(targets, num_threads=threads, return_type=return_type)

        def ours(model_kind):
            model = {"architecture": "t5"} if model_kind == "encoder_decoder" else {}  # (the kind follows it)
            cfg = parse_config({"tokenize": {"model_kind": model_kind, "pack_window": window},
                                "train": {"model": model}})
            return tokenize_and_pack("bench", shards, tmp / "spm.model", tmp / f"packed-{model_kind}",
                                     PackSlice.of(cfg), threads=threads)

        ours("decoder_only")  # warm-up: Numba kernels loaded, files cached
        r["raw_s"] = _best_of(repeats, raw)
        r["raw_numpy_s"] = _best_of(repeats, lambda: raw("numpy"))
        r["ours_s"] = _best_of(repeats, lambda: ours("decoder_only"))
        dec = ours("decoder_only")["packing"]
        enc = ours("encoder_decoder")["packing"]
        r.update(decoder_only=dec, encoder_decoder=enc)
        r["format"] = {kind: bench_format(tmp / f"packed-{kind}", tmp / f"stored-fields-{kind}",
                                          read=kind == "decoder_only", repeats=repeats + 1)
                       for kind in ("decoder_only", "encoder_decoder")}

        packed = tmp / "packed-decoder_only"
        r["verify"] = {"s": _best_of(repeats + 1, lambda: verify_shards(packed)),
                       "mb": sum(p.stat().st_size for p in (packed / "shards").iterdir()) / 1e6}
        index = pq.read_table(tmp / "packed-decoder_only/index.parquet",
                              columns=["input_tokens", "target_tokens"])
        size_in = index.column("input_tokens").to_numpy().astype(np.int64)
        size_tg = index.column("target_tokens").to_numpy().astype(np.int64)
    r["tokens"] = int(size_in.sum() + size_tg.sum())
    for name, dims in (("decoder_only", (size_in + size_tg, 2048 - 768, np.zeros_like(size_in), 0)),
                       ("encoder_decoder", (size_in, 1024, size_tg, 256))):
        for packer in ("best_fit", "next_fit"):
            def run(packer=packer, dims=dims):
                for w in range(0, rows, window):
                    binpack.pack(packer, *_window(dims, w, window))
            r[f"{name}_{packer}_examples_per_s"] = rows / _best_of(3, run)
    r["ours_mb_per_s"] = r["mb"] / r["ours_s"]
    r["raw_mb_per_s"] = r["mb"] / r["raw_s"]
    r["raw_numpy_mb_per_s"] = r["mb"] / r["raw_numpy_s"]
    r["ratio"] = r["raw_s"] / r["ours_s"]
    r["ratio_numpy"] = r["raw_numpy_s"] / r["ours_s"]
    return r


class StoredFields:
    """The peer of section 4: the format before stage version 3, every field stored, and its reader
    (a memory-mapped take of whole records, as ``PackedShards.take`` did then)."""

    def __init__(self, directory: Path):
        self.maps = [np.load(p, mmap_mode="r") for p in sorted(directory.glob("part-*.npy"))]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])
        self.dtype = self.maps[0].dtype

    @classmethod
    def write(cls, shards: PackedShards, directory: Path) -> StoredFields:
        """The rows of ``shards`` in the old format, shard for shard."""
        directory.mkdir()
        for k, s in enumerate(shards.manifest["shards"]):
            start = sum(t["rows"] for t in shards.manifest["shards"][:k])
            np.save(directory / f"part-{k:05d}.npy", shards.take(np.arange(start, start + s["rows"])))
        return cls(directory)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty(len(indices), self.dtype)
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.maps[k][indices[sel] - self.starts[k]]
        return out


def bench_format(packed: Path, peer_dir: Path, read: bool = True, batches: int = READ_BATCHES,
                 batch_rows: int = BATCH_ROWS, repeats: int = 3) -> dict:
    """Bytes per row of ``packed`` next to the old format written from the same rows (checked
    equal field for field); with ``read``, batch-read throughput of both (see the module's 4.)."""
    ours = PackedShards(packed)
    peer = StoredFields.write(ours, peer_dir)
    for start in range(0, len(ours), 4096):  # the rebuilt fields equal the stored ones
        rows = np.arange(start, min(start + 4096, len(ours)))
        if not (ours.take(rows) == peer.take(rows)).all():
            raise AssertionError(f"{packed}: rows {start}.. read differently from the old format")
    files = sorted((packed / "shards").iterdir())
    r = {"rows": len(ours), "examples": sum(s["examples"] for s in ours.manifest["shards"]),
         "shards": len(ours.manifest["shards"]),
         "bytes": sum(p.stat().st_size for p in files),
         "peer_bytes": sum(p.stat().st_size for p in peer_dir.iterdir()),
         "row_tokens": sum(ours.stored_dtype[name].shape[0] for name in ours.stored_dtype.names)}
    r["bytes_per_row"], r["peer_bytes_per_row"] = r["bytes"] / r["rows"], r["peer_bytes"] / r["rows"]
    r["bytes_ratio"] = r["peer_bytes"] / r["bytes"]
    if not read:
        return r
    import torch

    from flanpipe.stages.train import BatchPlan, step_rows, to_batch

    width = ours.dtype["tokens"].shape[0]
    plan = BatchPlan(row_tokens=width, micro_batch_rows=batch_rows, world_size=1, accumulation=1)
    steps = [step_rows(step, plan, len(ours), seed=0) for step in range(batches)]
    cpu = torch.device("cpu")
    best = {}
    for _ in range(repeats):  # alternating, so that a busy spell of the machine hits both
        for name, data in (("ours", ours), ("peer", peer)):
            batch = lambda idx, data=data: to_batch(data.take(idx), cpu)  # noqa: E731
            for what, read in (("take", data.take), ("batch", batch)):
                seconds = _best_of(1, lambda read=read: [read(idx) for idx in steps])
                best[name, what] = min(best.get((name, what), seconds), seconds)
    for (name, what), seconds in best.items():
        r[f"{name}_{what}_rows_per_s"] = batches * batch_rows / seconds
    r["take_ratio"] = r["ours_take_rows_per_s"] / r["peer_take_rows_per_s"]
    r["batch_ratio"] = r["ours_batch_rows_per_s"] / r["peer_batch_rows_per_s"]
    r["batch_rows"] = batch_rows
    return r


def _window(dims: tuple, start: int, size: int) -> tuple:
    return tuple(d[start:start + size] if isinstance(d, np.ndarray) else d for d in dims)


def print_pack(r: dict) -> None:
    dec, enc = r["decoder_only"], r["encoder_decoder"]
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    print(f"pack benchmark: {r['rows']:,} FLAN-like examples, {r['mb']:.1f} MB of text, "
          f"{r['tokens']:,} tokens after truncation (1024 input / 256 target); {r['vocab']:,}-piece "
          f"unigram model trained in {r['train_s']:.1f} s; {r['threads']} encoder threads; windows of "
          f"{r['window']:,} examples")
    print("  1. tokenizer throughput (best of the runs)")
    print(f"     ours, Parquet -> packed .npy shards  {r['ours_mb_per_s']:7.2f} MB/s  ({r['ours_s']:.2f} s)")
    print(f"     raw SentencePieceProcessor.encode    {r['raw_mb_per_s']:7.2f} MB/s  ({r['raw_s']:.2f} s)"
          f"   ours/raw {r['ratio']:.2f}x")
    print(f"     raw encode, return_type='numpy'      {r['raw_numpy_mb_per_s']:7.2f} MB/s  "
          f"({r['raw_numpy_s']:.2f} s)   ours/raw {r['ratio_numpy']:.2f}x")
    print("  2. packing efficiency (non-pad tokens / all tokens), same examples")
    print(f"     decoder-only, rows of {dec['row_tokens']}: best-fit decreasing {pct(dec['efficiency'])} "
          f"({dec['rows']:,} rows), next-fit {pct(dec['efficiency_next_fit'])} ({dec['rows_next_fit']:,}), "
          f"pad-to-max {pct(dec['efficiency_pad_to_max'])} ({dec['examples']:,})")
    next_over = enc["rows_next_fit"] / enc["rows_lower_bound"] - 1
    print(f"     encoder-decoder, 1024 + 256: best-fit {enc['rows']:,} rows = lower bound "
          f"{enc['rows_lower_bound']:,} + {pct(enc['rows_over_lower_bound'])}; next-fit "
          f"{enc['rows_next_fit']:,} rows (+{pct(next_over)}); efficiency {pct(enc['efficiency'])}")
    print("  3. packer speed, one core (examples/s)")
    print(f"     decoder-only: best fit {r['decoder_only_best_fit_examples_per_s']:,.0f}, next fit "
          f"{r['decoder_only_next_fit_examples_per_s']:,.0f}; encoder-decoder: best fit "
          f"{r['encoder_decoder_best_fit_examples_per_s']:,.0f}, next fit "
          f"{r['encoder_decoder_next_fit_examples_per_s']:,.0f}")
    fmt, enc_fmt = r["format"]["decoder_only"], r["format"]["encoder_decoder"]
    print("  4. packed shards on disk and read back: ours (tokens + example lengths, the rest rebuilt) "
          "against the old format (every field stored), same rows")
    print(f"     decoder-only, {fmt['rows']:,} rows of {fmt['row_tokens']} in {fmt['shards']} shards: "
          f"{fmt['bytes_per_row']:,.0f} bytes per row, old {fmt['peer_bytes_per_row']:,.0f}   old/ours "
          f"{fmt['bytes_ratio']:.2f}x  ({fmt['bytes'] / 1e6:,.1f} MB against "
          f"{fmt['peer_bytes'] / 1e6:,.1f} MB)")
    print(f"     encoder-decoder, {enc_fmt['rows']:,} rows: {enc_fmt['bytes_per_row']:,.0f} bytes per row, "
          f"old {enc_fmt['peer_bytes_per_row']:,.0f}   old/ours {enc_fmt['bytes_ratio']:.2f}x")
    print(f"     batch reads, {fmt['batch_rows']} rows in the trainer's order, page cache warm (rows/s): "
          f"take {fmt['ours_take_rows_per_s']:,.0f}, old {fmt['peer_take_rows_per_s']:,.0f}   ours/old "
          f"{fmt['take_ratio']:.2f}x; take + int64 tensors {fmt['ours_batch_rows_per_s']:,.0f}, old "
          f"{fmt['peer_batch_rows_per_s']:,.0f}   ours/old {fmt['batch_ratio']:.2f}x")
    v = r["verify"]
    print(f"  5. the trainer's shard check (sizes and sha256 against the pack manifest): {v['s']:.3f} s for "
          f"{v['mb']:,.1f} MB ({v['mb'] / v['s']:,.0f} MB/s), {100 * v['s'] / r['ours_s']:.1f}% of the "
          f"{r['ours_s']:.2f} s pack took to write them")
    speed = r["decoder_only_best_fit_examples_per_s"]
    checks = [("throughput >= 0.8x raw encode", r["ratio"] >= 0.8, f"{r['ratio']:.2f}x"),
              ("decoder-only >= 99.5% non-pad", dec["efficiency"] >= 0.995, pct(dec["efficiency"])),
              ("encoder-decoder within 4% of the bound", enc["rows_over_lower_bound"] <= 0.04,
               "+" + pct(enc["rows_over_lower_bound"])),
              ("packer >= 100k examples/s per core", speed >= 1e5, f"{speed:,.0f}"),
              ("shards >= 3x smaller", fmt["bytes_ratio"] >= 3, f"{fmt['bytes_ratio']:.2f}x")]
    print("  targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT MET'} ({v})" for name, ok, v in checks))


def run(rows: int, threads: int, vocab: int) -> int:
    """``flanpipe bench pack``."""
    print_pack(bench_pack(rows, threads=threads, vocab=vocab))
    return 0
