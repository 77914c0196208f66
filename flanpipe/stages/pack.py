"""Stage 4b, tokenize and pack: one mixture into fixed-width token rows a trainer can memory-map.

The mixture's shards are read in order, in windows of ``tokenize.pack_window`` examples. Each window
is tokenized with the tokenizer's batch encoder (:mod:`flanpipe.core.tokens.tokenizers`: SentencePiece's
threads or the Rust ``tokenizers`` pool, no per-row Python loop), BOS put before the inputs where the
tokenizer's convention or ``tokenize.add_bos`` says so, truncated to the input and target budgets (BOS and EOS
included, truncations counted per dataset), packed by best-fit
decreasing (:mod:`flanpipe.core.tokens.binpack`), and its rows are shuffled (seeded) and appended to the
shards.

Model kinds (``tokenize.model_kind``), with ``Li``/``Lt`` the input/target budgets:

- ``decoder_only``: rows of ``Li + Lt`` tokens holding whole examples ``[BOS] inputs SEP targets EOS``,
  ``SEP`` being EOS (``tokenize.format: eos``, the paper's) or the separator's tokens (``text``;
  :mod:`flanpipe.core.tokens.formats` owns the formats), or with ``chat`` the tokenizer's chat template's
  prompt then its assistant turn (:mod:`flanpipe.core.tokens.chat`: the template places every special
  token, and the assistant turn, end of turn included, is the target); ``segment_ids`` number
  the examples of a row from 1 (0 is padding), ``positions`` restart at 0 for each example, and
  ``loss_mask`` is 1 on target tokens (their EOS included). The model predicts token ``t`` from
  tokens before it in the same segment, and the loss counts where ``loss_mask[t]``.
- ``encoder_decoder``: paired rows, ``inputs`` of ``Li`` tokens and ``targets`` of ``Lt``, each
  with its own ``*_segment_ids`` and ``*_positions``; segment ``s`` of a row's inputs belongs to
  segment ``s`` of its targets, and ``loss_mask`` marks the target tokens.

Every packer puts a row's examples back to back from slot 0 in segment order, so the shards store
only the tokens and each example's input and target lengths; segment ids, positions and loss masks
are rebuilt as rows are read (:mod:`flanpipe.core.tokens.shards`).

Output, ``data/packed/{mixture}/``:

- ``shards/part-XXXXX.{tokens,examples,examples_per_row}.npy``: per shard, the rows' tokens, the
  examples' lengths and the examples per row (:mod:`flanpipe.core.tokens.shards` describes them;
  :class:`flanpipe.core.tokens.shards.PackedShards` reads them, memory-mapped);
- ``index.parquet``: one line per example: its row and segment, offsets, token counts before and
  after truncation, dataset, example id, template and epoch;
- ``stats.parquet`` (tokens and truncations per dataset), ``packing.parquet`` (the mixture's packing
  efficiency next to next-fit and pad-to-max, and rows against the lower bound) and ``manifest.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config import PackSlice
from flanpipe.core.io import (
    ParquetReader,
    atomic_dir,
    code_version,
    mixture_shards,
    sha256_file,
    utc_now,
    write_json_atomic,
    write_parquet_atomic,
)
from flanpipe.core.logs import progress
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.text.schemas import PACKED_INDEX_SCHEMA, PACKED_STATS_SCHEMA, PACKING_SCHEMA
from flanpipe.core.tokens import binpack
from flanpipe.core.tokens.chat import ChatTemplate, chat_template
from flanpipe.core.tokens.formats import bos_token, separator_ids
from flanpipe.core.tokens.shards import (
    EXAMPLE_DTYPE,
    SHARD_FILES,
    rebuild,
    record_dtype,
    row_dtype,
    stored_dtype,
)
from flanpipe.core.tokens.tokenizers import Tokenizer, load_tokenizer
from flanpipe.core.versions import STAGE_VERSIONS

# 5: the manifest's and packing.parquet's `layout` is `model_kind`; 4: tokenize.format (eos, text; chat,
# added later, leaves those unchanged); 3: shards store tokens and lengths
STAGE_VERSION = STAGE_VERSIONS["pack"]
log = logging.getLogger(__name__)

COLUMNS = ["inputs", "targets", "dataset", "example_id", "template_id", "epoch"]


class Encoded:
    """A batch of texts as one flat token array: ``ids[starts[i]:starts[i] + lengths[i]]``;
    ``full[i]``: the text's tokens before any cut (``lengths`` unless :func:`prepend` cut it)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.lengths = np.fromiter(map(len, arrays), np.int64, len(arrays))
        self.starts = np.zeros(len(arrays), np.int64)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        self.ids = np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)
        self.full = self.lengths


def encode(tokenizer: Tokenizer, texts: pa.ChunkedArray | pa.Array, threads: int) -> Encoded:
    """Batch-encode a text column (SentencePiece's thread pool, or the Rust ``tokenizers`` one)."""
    return Encoded(tokenizer.encode_batch(texts.to_pylist(), threads))


def prepend(encoded: Encoded, token: int, keep_last: int | None = None) -> Encoded:
    """``token`` before every text; with ``keep_last``, a longer text first keeps only its last
    ``keep_last`` tokens (left truncation done here, so that the token survives it). ``full``
    counts the token and the whole text.

    >>> e = prepend(Encoded([np.array([5, 6, 7]), np.array([], np.int32), np.array([8])]), 1, keep_last=2)
    >>> e.ids.tolist(), e.lengths.tolist(), e.full.tolist()
    ([1, 6, 7, 1, 1, 8], [3, 1, 2], [4, 1, 2])
    """
    kept = encoded.lengths if keep_last is None else np.minimum(encoded.lengths, keep_last)
    out = Encoded([])
    out.lengths = kept + 1
    out.starts = np.zeros(len(kept), np.int64)
    np.cumsum(out.lengths[:-1], out=out.starts[1:])
    out.ids = np.empty(int(out.lengths.sum()), np.int32)
    out.ids[out.starts] = token
    within = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    source = np.repeat(encoded.starts + encoded.lengths - kept, kept) + within
    out.ids[np.repeat(out.starts + 1, kept) + within] = encoded.ids[source]
    out.full = encoded.full + 1
    return out


def windows(shards: list[Path], size: int, columns: list[str] = COLUMNS) -> Iterator[pa.Table]:
    """The rows of ``shards``, in order, as tables of ``size`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for path in shards:
        for batch in ParquetReader(path).iter_batches(batch_size=size, columns=columns):
            pending.append(batch)
            count += batch.num_rows
            while count >= size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, size)
                rest = table.slice(size)
                pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


@dataclass(frozen=True)
class PackedRows:
    """Packed rows as the shards store them: ``tokens`` (records of
    :func:`flanpipe.core.tokens.shards.stored_dtype`), ``examples`` (their examples' lengths,
    :data:`flanpipe.core.tokens.shards.EXAMPLE_DTYPE`, row by row in segment order) and
    ``examples_per_row``."""

    tokens: np.ndarray
    examples: np.ndarray
    examples_per_row: np.ndarray


class ShardWriter:
    """Appends packed rows and writes every ``rows_per_shard`` of them as one shard: the files
    ``part-XXXXX.{tokens,examples,examples_per_row}.npy``."""

    def __init__(self, directory: Path, dtype: np.dtype, rows_per_shard: int):
        self.directory, self.rows_per_shard = directory, rows_per_shard
        self.pending = [PackedRows(np.zeros(0, dtype), np.zeros(0, EXAMPLE_DTYPE), np.zeros(0, np.uint16))]
        self.count = 0
        self.shards: list[dict] = []

    def add(self, rows: PackedRows) -> None:
        self.pending.append(rows)
        self.count += len(rows.tokens)
        while self.count >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> list[dict]:
        """Write the rows left (or one empty shard if there were none); returns the shards' list."""
        if self.count or not self.shards:
            self._flush(self.count)
        return self.shards

    def _flush(self, n: int) -> None:
        parts = self.pending
        tokens = np.concatenate([p.tokens for p in parts])
        examples = np.concatenate([p.examples for p in parts])
        per_row = np.concatenate([p.examples_per_row for p in parts])
        m = int(per_row[:n].sum())
        arrays = {"tokens": tokens[:n], "examples": examples[:m], "examples_per_row": per_row[:n]}
        files = {kind: f"part-{len(self.shards):05d}.{kind}.npy" for kind in SHARD_FILES}
        for kind in SHARD_FILES:
            np.save(self.directory / files[kind], arrays[kind], allow_pickle=False)
        self.shards.append({"rows": n, "examples": m, "files": files,
                            "bytes": sum((self.directory / f).stat().st_size for f in files.values()),
                            "sha256": {kind: sha256_file(self.directory / f) for kind, f in files.items()}})
        self.pending = [PackedRows(tokens[n:], examples[m:], per_row[n:])]
        self.count = len(tokens) - n


def encode_chat(chat: ChatTemplate, table: pa.Table, tcfg: PackSlice, threads: int) -> tuple[
        Encoded, Encoded, int]:
    """A window's examples in the ``chat`` format (:mod:`flanpipe.core.tokens.chat`): the prompts (user
    turn and generation prompt) and the replies (assistant turn), each cut to its budget with the
    template's tokens kept (``full``: before the cut), and the rows whose reply took its own tokens."""
    tokens = chat.encode(table.column("inputs").to_pylist(), table.column("targets").to_pylist(), threads)
    left = tcfg.truncate_inputs == "left"
    inputs = Encoded([chat.cut_prompt(p, tcfg.max_input_tokens, left) for p in tokens.prompts])
    targets = Encoded([chat.cut_reply(r, tcfg.max_target_tokens) for r in tokens.replies])
    inputs.full = np.fromiter(map(len, tokens.prompts), np.int64, len(tokens.prompts))
    targets.full = np.fromiter(map(len, tokens.replies), np.int64, len(tokens.replies))
    return inputs, targets, int(tokens.merged.sum())


def pack_window(table: pa.Table, tokenizer: Tokenizer, tcfg: PackSlice, dtype: np.dtype, eos: int,
                pad: int, threads: int, rng: np.random.Generator, bos: int | None = None,
                separator: np.ndarray | None = None, chat: ChatTemplate | None = None
                ) -> tuple[PackedRows, dict[str, np.ndarray], dict]:
    """Tokenize, truncate and pack one window (``dtype``: the stored row, ``bos``: put before each
    example's inputs, ``separator``: the tokens after them, EOS where None; ``chat``: the ``chat``
    format's template, which places every special token itself). Returns its rows (shuffled), the
    per-example placement (row within the window, segment, offsets, token counts) and the window's
    counts."""
    li_max, lt_max = tcfg.max_input_tokens, tcfg.max_target_tokens
    merged = 0
    if chat is not None:
        sep, end = np.zeros(0, np.int32), np.zeros(0, np.int32)
        inputs, targets, merged = encode_chat(chat, table, tcfg, threads)
    else:
        sep = np.array([eos], np.int32) if separator is None else separator.astype(np.int32)
        end = np.array([eos], np.int32)
        inputs = encode(tokenizer, table.column("inputs"), threads)
        targets = encode(tokenizer, table.column("targets"), threads)
        if bos is not None:
            inputs = prepend(inputs, bos, li_max - 1 - len(sep) if tcfg.truncate_inputs == "left" else None)
    k, e = len(sep), len(end)
    keep_in = np.minimum(inputs.lengths, li_max - k)
    keep_tg = np.minimum(targets.lengths, lt_max - e)
    size_in, size_tg = keep_in + k, keep_tg + e  # the separator (or EOS), EOS
    if tcfg.model_kind == "decoder_only":
        dims = (size_in + size_tg, li_max + lt_max, np.zeros_like(size_in), 0)
    else:
        dims = (size_in, li_max, size_tg, lt_max)
    placed = binpack.pack(tcfg.packer, *dims)
    bins, seg, off_a, off_b, n_rows = (placed.row, placed.segment, placed.offset_a, placed.offset_b,
                                       placed.rows)
    perm = rng.permutation(n_rows)
    row = perm[bins]
    tokens = np.zeros(n_rows, dtype)
    left = tcfg.truncate_inputs == "left"
    if tcfg.model_kind == "decoder_only":
        tokens["tokens"] = pad
        binpack.fill_decoder_only(tokens["tokens"], row, off_a, inputs.ids, inputs.starts, inputs.lengths,
                                  keep_in, targets.ids, targets.starts, targets.lengths, keep_tg, sep, end,
                                  left)
        target_off = off_a + size_in
    else:
        tokens["inputs"] = pad
        tokens["targets"] = pad
        binpack.fill_side(tokens["inputs"], row, off_a, inputs.ids, inputs.starts, inputs.lengths, keep_in,
                          eos, left)
        binpack.fill_side(tokens["targets"], row, off_b, targets.ids, targets.starts, targets.lengths,
                          keep_tg, eos, False)
        target_off = off_b
    for offsets, sizes in zip((off_a, off_b), dims[::2], strict=True):
        _check_back_to_back(row, seg, offsets, sizes, tcfg.packer)
    packed = packed_rows(tokens, row, seg, size_in, size_tg)
    check_rows(packed, row, seg, off_a, size_in, targets, keep_tg, end, tokenizer.bos_id, table)
    placement = {"row": row, "segment": seg, "input_offset": off_a, "target_offset": target_off,
                 "input_tokens": size_in, "target_tokens": size_tg,
                 "input_tokens_full": inputs.full + k, "target_tokens_full": targets.full + e}
    counts = {"rows": n_rows, "rows_lower_bound": binpack.rows_lower_bound(*dims),
              "rows_next_fit": binpack.next_fit(*dims)[4], "chat_replies_merged": merged}
    return packed, placement, counts


class PackCheckError(RuntimeError):
    """A packed row is not what its examples say: an empty loss mask, a loss mask that is not the
    target's tokens, or an example that starts with two BOS tokens."""


def check_rows(packed: PackedRows, row: np.ndarray, segment: np.ndarray, input_offset: np.ndarray,
               input_tokens: np.ndarray, targets: Encoded, keep_targets: np.ndarray, end: np.ndarray,
               bos: int | None, table: pa.Table) -> None:
    """Every packed example, read back as the trainer reads it (:func:`~flanpipe.core.tokens.shards.rebuild`):
    its loss mask is not empty and covers exactly its target tokens, kept as truncation keeps them,
    then ``end`` (EOS; also where the pad id is the EOS id: the mask comes from the stored lengths,
    never from token ids); and it does not start with two ``bos`` tokens. Raises
    :class:`PackCheckError` naming the first bad example's dataset and id.

    >>> tokens = np.array([([7, 5, 1, 6, 1, 1],)], [("tokens", "<u2", (6,))])
    >>> rows = packed_rows(tokens, np.array([0]), np.array([1]), np.array([3]), np.array([2]))
    >>> tg = Encoded([np.array([6], np.int32)])
    >>> table = pa.table({"dataset": ["rte"], "example_id": ["r1"]})
    >>> check_rows(rows, np.array([0]), np.array([1]), np.array([0]), np.array([3]), tg, np.array([1]),
    ...            np.array([1], np.int32), 7, table)
    >>> check_rows(rows, np.array([0]), np.array([1]), np.array([0]), np.array([3]),
    ...            Encoded([np.array([9], np.int32)]), np.array([1]), np.array([1], np.int32), 7, table)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    flanpipe.stages.pack.PackCheckError: pack: rte/r1: its loss mask does not cover exactly its target ...
    """
    order = np.lexsort((segment, row))  # the examples as rows hold them
    names = table.select(["dataset", "example_id"])

    def fail(i: int, what: str) -> None:
        raise PackCheckError(f"pack: {names['dataset'][int(i)]}/{names['example_id'][int(i)]}: {what}")

    lengths = keep_targets + len(end)
    if (lengths == 0).any():
        fail(np.flatnonzero(lengths == 0)[0], "its loss mask is empty (no target token)")
    record = np.empty(len(packed.tokens), record_dtype(packed.tokens.dtype))
    for name in packed.tokens.dtype.names:
        record[name] = packed.tokens[name]
    rebuild(record, packed.examples, packed.examples_per_row)
    side = "tokens" if "tokens" in record.dtype.names else "targets"
    got = record[side][record["loss_mask"].astype(bool)]
    kept, n = keep_targets[order], lengths[order]
    starts = np.cumsum(n) - n
    expected = np.empty(int(n.sum()), np.int64)
    within = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    expected[np.repeat(starts, kept) + within] = targets.ids[np.repeat(targets.starts[order], kept) + within]
    for j, token in enumerate(end):
        expected[starts + kept + j] = token
    if len(got) != len(expected) or not np.array_equal(got, expected):
        at = int(np.argmax(got[:len(expected)] != expected[:len(got)])) if min(len(got), len(expected)) else 0
        fail(order[np.searchsorted(starts, at, side="right") - 1],
             f"its loss mask does not cover exactly its target tokens and EOS ({len(got)} masked tokens "
             f"in the window, {len(expected)} expected)")
    if bos is not None:
        inputs = record["tokens" if side == "tokens" else "inputs"]
        two = input_tokens >= 2
        first = inputs[row, input_offset]
        second = inputs[row, np.minimum(input_offset + 1, inputs.shape[1] - 1)]
        double = two & (first == bos) & (second == bos)
        if double.any():
            fail(np.flatnonzero(double)[0], f"it starts with BOS twice (id {bos}); a chat template that "
                 "writes its own BOS, or tokenize.add_bos with inputs that hold one already?")


def packed_rows(tokens: np.ndarray, row: np.ndarray, segment: np.ndarray, input_tokens: np.ndarray,
                target_tokens: np.ndarray) -> PackedRows:
    """The rows ``tokens`` with their examples' lengths, given each example's row and segment.

    >>> r = packed_rows(np.zeros(2, [("tokens", "u2", (8,))]), np.array([1, 0, 1]), np.array([2, 1, 1]),
    ...                 np.array([3, 2, 2]), np.array([1, 2, 1]))
    >>> r.examples.tolist(), r.examples_per_row.tolist()
    ([(2, 2), (2, 1), (3, 1)], [1, 2])
    """
    order = np.lexsort((segment, row))  # row by row, in segment order
    examples = np.empty(len(order), EXAMPLE_DTYPE)
    examples["input_tokens"], examples["target_tokens"] = input_tokens[order], target_tokens[order]
    return PackedRows(tokens, examples, np.bincount(row, minlength=len(tokens)).astype(np.uint16))


def _check_back_to_back(row: np.ndarray, segment: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                        packer: str) -> None:
    """The shards store lengths, not offsets: in each row, the first example must start at 0 and
    every other one where the one before it ends."""
    order = np.lexsort((segment, row))
    offsets, sizes = offsets[order], sizes[order]
    starts = np.cumsum(sizes) - sizes
    per_row = np.bincount(row)[np.unique(row)]
    expected = starts - np.repeat(starts[np.cumsum(per_row) - per_row], per_row)
    if not np.array_equal(offsets, expected):
        raise RuntimeError(f"tokenize.packer {packer!r} left a gap between the examples of a row; the "
                           "packed shards cannot describe it")


def tokenize_and_pack(mixture: str, shard_dir: str | Path, tokenizer: str | Path, out_dir: str | Path,
                      cfg: PackSlice, threads: int = 1) -> dict:
    """Tokenize and pack the mixture in ``shard_dir`` into ``out_dir``; returns the manifest."""
    tcfg = cfg
    out_dir = Path(out_dir)
    tok = load_tokenizer(tokenizer)
    eos, pad = tok.eos_id, tok.pad_id if tok.pad_id is not None else 0
    fmt = tcfg.format if tcfg.model_kind == "decoder_only" else "eos"
    chat = chat_template(tok) if fmt == "chat" else None
    bos = bos_token(tok, tcfg.add_bos) if chat is None else None
    sep = np.array(separator_ids(tok, fmt, tcfg.separator), np.int32)
    if chat is not None:
        chat.check_budgets(tcfg.max_input_tokens, tcfg.max_target_tokens)
    if len(sep) + (bos is not None) >= tcfg.max_input_tokens:
        raise ValueError(f"tokenize.separator {tcfg.separator!r} is {len(sep)} tokens: it leaves no room for "
                         f"the input in tokenize.max_input_tokens {tcfg.max_input_tokens}")
    dtype = stored_dtype(tcfg.model_kind, tcfg.max_input_tokens, tcfg.max_target_tokens, tok.vocab_size)
    record = row_dtype(tcfg.model_kind, tcfg.max_input_tokens, tcfg.max_target_tokens, tok.vocab_size)
    shards = mixture_shards(shard_dir)
    total = sum(ParquetReader(p).metadata.num_rows for p in shards)
    rng = np.random.default_rng(derive_seed(cfg.seed, f"pack/{mixture}"))

    with atomic_dir(out_dir / "shards") as tmp:
        writer = ShardWriter(tmp, dtype, tcfg.rows_per_shard)
        index_parts = []
        totals = dict.fromkeys(("rows", "rows_lower_bound", "rows_next_fit", "windows",
                                "chat_replies_merged"), 0)
        position = 0
        n_windows = math.ceil(total / tcfg.pack_window)
        for table in progress(windows(shards, tcfg.pack_window), n_windows, f"{mixture}: pack",
                              count=lambda _: 1, unit="windows"):
            rows, placed, counts = pack_window(table, tok, tcfg, dtype, eos, pad, threads, rng, bos, sep,
                                               chat)
            placed["row"] = placed["row"] + totals["rows"]
            placed["position"] = np.arange(position, position + table.num_rows)
            index_parts.append(_index_table(placed, table))
            writer.add(rows)
            for k in ("rows", "rows_lower_bound", "rows_next_fit", "chat_replies_merged"):
                totals[k] += counts[k]
            totals["windows"] += 1
            position += table.num_rows
        index = (pa.concat_tables(index_parts) if index_parts else PACKED_INDEX_SCHEMA.empty_table()).sort_by(
            [("row", "ascending"), ("segment", "ascending")])
        stats = token_stats(mixture, index, tcfg)
        check_truncation(stats, tcfg.max_truncated_fraction)  # (before the shards are in place)
        shard_list = writer.close()

    meta = {"stage": "pack", "stage_version": STAGE_VERSION, "mixture": mixture, "seed": cfg.seed}
    write_parquet_atomic(index, out_dir / "index.parquet", meta)
    write_parquet_atomic(stats, out_dir / "stats.parquet", meta)
    summary = packing_summary(mixture, stats, totals, tcfg, cfg.steps * cfg.tokens_per_batch)
    write_parquet_atomic(pa.Table.from_pylist([summary], schema=PACKING_SCHEMA), out_dir / "packing.parquet",
                         meta)
    manifest = {
        **meta, "model_kind": tcfg.model_kind, "format": fmt, "examples": index.num_rows,
        "rows": totals["rows"],
        "separator": {"text": tcfg.separator if fmt == "text" else None, "ids": sep.tolist()},
        **({"chat": chat.describe(totals["chat_replies_merged"])} if chat is not None else {}),
        "fields": {name: {"dtype": record[name].base.str, "shape": list(record[name].shape)}
                   for name in record.names},
        "stored": {"tokens": list(dtype.names), "examples": list(EXAMPLE_DTYPE.names),
                   "bytes": sum(s["bytes"] for s in shard_list)},
        "rows_per_shard": tcfg.rows_per_shard, "shards": shard_list,
        "tokenizer": {**tok.describe(), "pad_fill": pad, "bos_added": bos is not None},
        "inputs": [{"file": p.name, "sha256": sha256_file(p)} for p in shards],
        "packing": summary, "config": cfg.model_dump(),
        "code": code_version("pack", STAGE_VERSION), "created_at": utc_now(),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("%s: %d examples in %d rows of %d tokens, %.2f%% non-pad (next-fit %.2f%%, pad-to-max %.2f%%), "
             "%.2f%% over the lower bound; %d inputs and %d targets truncated", mixture, summary["examples"],
             summary["rows"], summary["row_tokens"], 100 * summary["efficiency"],
             100 * summary["efficiency_next_fit"], 100 * summary["efficiency_pad_to_max"],
             100 * summary["rows_over_lower_bound"], summary["truncated_inputs"],
             summary["truncated_targets"])
    if summary["non_pad_tokens"] < summary["budget_tokens"]:
        log.warning("%s: %d non-pad tokens, fewer than the training budget of %d (train.steps * "
                    "train.tokens_per_batch): the trainer will repeat the data", mixture,
                    summary["non_pad_tokens"], summary["budget_tokens"])
    return manifest


def _index_table(placed: dict[str, np.ndarray], table: pa.Table) -> pa.Table:
    columns = {name: pa.array(placed[name], PACKED_INDEX_SCHEMA.field(name).type)
               for name in PACKED_INDEX_SCHEMA.names if name in placed}
    for name in ("dataset", "example_id", "template_id", "epoch"):
        columns[name] = table.column(name).cast(PACKED_INDEX_SCHEMA.field(name).type)
    return pa.table({name: columns[name] for name in PACKED_INDEX_SCHEMA.names}, schema=PACKED_INDEX_SCHEMA)


def token_stats(mixture: str, index: pa.Table, tcfg: PackSlice) -> pa.Table:
    """Tokens and truncations per dataset."""
    table = index.append_column("trunc_in", pc.cast(pc.greater(index.column("input_tokens_full"),
                                                               tcfg.max_input_tokens), pa.int64()))
    table = table.append_column("trunc_tg", pc.cast(pc.greater(index.column("target_tokens_full"),
                                                               tcfg.max_target_tokens), pa.int64()))
    g = table.group_by("dataset").aggregate([
        ("row", "count"), ("input_tokens", "sum"), ("target_tokens", "sum"), ("input_tokens_full", "mean"),
        ("target_tokens_full", "mean"), ("input_tokens_full", "max"), ("target_tokens_full", "max"),
        ("trunc_in", "sum"), ("trunc_tg", "sum")]).sort_by("dataset")
    n = g.num_rows
    return pa.table({
        "mixture": pa.array([mixture] * n, pa.string()), "dataset": g.column("dataset"),
        "examples": g.column("row_count"), "input_tokens": g.column("input_tokens_sum"),
        "target_tokens": g.column("target_tokens_sum"),
        "mean_input_tokens_full": g.column("input_tokens_full_mean"),
        "mean_target_tokens_full": g.column("target_tokens_full_mean"),
        "max_input_tokens_full": g.column("input_tokens_full_max"),
        "max_target_tokens_full": g.column("target_tokens_full_max"),
        "truncated_inputs": g.column("trunc_in_sum"), "truncated_targets": g.column("trunc_tg_sum"),
    }).cast(PACKED_STATS_SCHEMA)


def check_truncation(stats: pa.Table, max_fraction: float) -> None:
    """Raise naming the first dataset (of :func:`token_stats`) whose inputs, or whose targets, were
    cut in more than ``max_fraction`` of its examples (``tokenize.max_truncated_fraction``).

    >>> stats = pa.table({"dataset": ["rte", "xsum"], "examples": [10, 4], "truncated_inputs": [0, 1],
    ...                   "truncated_targets": [1, 3]})
    >>> check_truncation(stats, 0.75)
    >>> check_truncation(stats, 0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: pack: xsum: the targets of 3 of 4 examples (0.75) were cut, more than ...
    """
    for dataset, n, cut_in, cut_tg in zip(*(stats.column(c).to_pylist() for c in (
            "dataset", "examples", "truncated_inputs", "truncated_targets")), strict=True):
        for side, cut in (("inputs", cut_in), ("targets", cut_tg)):
            if n and cut / n > max_fraction:
                budget = "max_input_tokens" if side == "inputs" else "max_target_tokens"
                raise ValueError(f"pack: {dataset}: the {side} of {cut} of {n} examples ({cut / n:.3g}) were "
                                 f"cut, more than tokenize.max_truncated_fraction {max_fraction}; raise "
                                 f"tokenize.{budget}, or allow it")


def packing_summary(mixture: str, stats: pa.Table, totals: dict, tcfg: PackSlice, budget: int) -> dict:
    """The mixture's packing figures, from its per-dataset :func:`token_stats` and the packers'
    row counts: efficiency next to next-fit and pad-to-max, rows against the lower bound."""
    width = tcfg.max_input_tokens + tcfg.max_target_tokens
    names = ("examples", "input_tokens", "target_tokens", "truncated_inputs", "truncated_targets")
    total = {name: int(pc.sum(stats.column(name)).as_py() or 0) for name in names}
    n, targets = total["examples"], total["target_tokens"]
    tokens = total["input_tokens"] + targets
    rows, bound, nf = totals["rows"], totals["rows_lower_bound"], totals["rows_next_fit"]
    return {
        "mixture": mixture, "model_kind": tcfg.model_kind, "packer": tcfg.packer, "row_tokens": width,
        "examples": n, "rows": rows, "non_pad_tokens": tokens, "target_tokens": targets,
        "efficiency": tokens / (rows * width) if rows else 0.0,
        "rows_lower_bound": bound, "rows_over_lower_bound": rows / bound - 1 if bound else 0.0,
        "rows_next_fit": nf, "efficiency_next_fit": tokens / (nf * width) if nf else 0.0,
        "efficiency_pad_to_max": tokens / (n * width) if n else 0.0,
        "truncated_inputs": total["truncated_inputs"], "truncated_targets": total["truncated_targets"],
        "budget_tokens": budget, "windows": totals["windows"],
    }
