"""Packed shards: what the pack stage stores, and reading rows back with the fields derived from it.

A packed row holds whole examples back to back from its slot 0, in segment order (every packer
places them so), then padding. So a row's tokens and its examples' lengths say everything: where
each example starts, where its target starts, where the padding begins. On disk, per shard of
``data/packed/{mixture}/shards/``:

- ``part-XXXXX.tokens.npy``: one record per row with the model kind's token fields
  (:func:`stored_dtype`: ``tokens``, or ``inputs`` and ``targets``);
- ``part-XXXXX.examples.npy``: one ``(input_tokens, target_tokens)`` record per example
  (:data:`EXAMPLE_DTYPE`, EOS and BOS included), row by row, in segment order;
- ``part-XXXXX.examples_per_row.npy``: ``uint16``, the number of examples in each row.

Reading (:meth:`PackedShards.take`) gathers the rows' tokens and lengths from the memory-mapped
files and rebuilds segment ids, positions and loss masks for the whole batch at once
(:func:`spans`, a few ``np.repeat`` calls), into the records :func:`row_dtype` describes: the
fields the shards stored before stage version 3.

>>> shards = PackedShards("data/packed/nli")          # doctest: +SKIP
>>> row = shards[0]                                    # doctest: +SKIP
>>> [len(i) + len(t) for i, t in unpack_row(row)]     # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flanpipe.core.io import ArtifactMismatch, reading, verify_sha256

MODEL_KINDS = ("decoder_only", "encoder_decoder")
"""What packed rows are for (``tokenize.model_kind``): a decoder-only model or an encoder-decoder."""
EXAMPLE_DTYPE = np.dtype([("input_tokens", "<u2"), ("target_tokens", "<u2")])
"""An example's stored lengths: its inputs and its targets, each with its EOS (inputs with BOS, if added)."""
SHARD_FILES = ("tokens", "examples", "examples_per_row")
"""The files of one shard, ``part-XXXXX.{kind}.npy``."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id of the vocabulary.

    >>> token_dtype(32000).str, token_dtype(128256).str
    ('<u2', '<i4')
    """
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def stored_dtype(model_kind: str, max_input: int, max_target: int, vocab_size: int) -> np.dtype:
    """The record of one row in ``part-XXXXX.tokens.npy``: the model kind's token fields.

    >>> stored_dtype("decoder_only", 4, 2, 32000).names
    ('tokens',)
    >>> stored_dtype("encoder_decoder", 4, 2, 32000)["targets"].shape
    (2,)
    """
    tok = token_dtype(vocab_size)
    if model_kind == "decoder_only":
        return np.dtype([("tokens", tok, (max_input + max_target,))])
    if model_kind == "encoder_decoder":
        return np.dtype([("inputs", tok, (max_input,)), ("targets", tok, (max_target,))])
    raise ValueError(f"unknown model kind {model_kind!r}; allowed: {', '.join(MODEL_KINDS)}")


def record_dtype(stored: np.dtype) -> np.dtype:
    """The record a reader gets: each token field followed by its segment ids and positions, then
    the loss mask (over the targets).

    >>> record_dtype(stored_dtype("encoder_decoder", 4, 2, 32000)).names  # doctest: +NORMALIZE_WHITESPACE
    ('inputs', 'inputs_segment_ids', 'inputs_positions', 'targets', 'targets_segment_ids',
     'targets_positions', 'loss_mask')
    """
    fields = []
    for name in stored.names:
        prefix = "" if name == "tokens" else f"{name}_"
        shape = stored[name].shape
        fields += [(name, stored[name].base, shape), (f"{prefix}segment_ids", np.uint16, shape),
                   (f"{prefix}positions", np.uint16, shape)]
    fields.append(("loss_mask", np.uint8, stored[stored.names[-1]].shape))
    return np.dtype(fields)


def row_dtype(model_kind: str, max_input: int, max_target: int, vocab_size: int) -> np.dtype:
    """The record of one packed row as :class:`PackedShards` gives it.

    >>> row_dtype("decoder_only", 4, 2, 32000).names
    ('tokens', 'segment_ids', 'positions', 'loss_mask')
    """
    return record_dtype(stored_dtype(model_kind, max_input, max_target, vocab_size))


@dataclass(frozen=True)
class Spans:
    """Per slot of ``(rows, width)`` rows: the example it belongs to (``segment_ids``, 1-based in
    the row, 0 on padding), its position in the example (0 on padding), and which of the example's
    pieces it is in (``piece``, 1-based, 0 on padding)."""

    segment_ids: np.ndarray  # uint16
    positions: np.ndarray  # uint16
    piece: np.ndarray  # uint8


def spans(pieces: np.ndarray, examples_per_row: np.ndarray, width: int) -> Spans:
    """Segment ids, positions and pieces of rows of ``width`` slots whose examples lie back to
    back from slot 0, in order: ``examples_per_row[r]`` of them in row ``r``, example ``k`` made of
    ``pieces[k, 0]``, ``pieces[k, 1]``, ... tokens (for decoder-only rows: inputs, targets).

    Each row is cut into blocks (every piece of every example, then the row's padding), and each
    field is one ``np.repeat`` of a per-block value over the blocks' sizes.

    >>> s = spans(np.array([[2, 1], [1, 2], [3, 1]]), np.array([2, 1]), 7)
    >>> s.segment_ids.tolist()
    [[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0, 0]]
    >>> s.positions.tolist()
    [[0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 0, 0, 0]]
    >>> s.piece.tolist()
    [[1, 1, 2, 1, 2, 2, 0], [1, 1, 1, 2, 0, 0, 0]]
    """
    pieces = np.asarray(pieces, np.int64)
    examples, n_pieces = pieces.shape
    per_row = np.asarray(examples_per_row, np.int64)
    rows = len(per_row)
    if int(per_row.sum()) != examples:
        raise ValueError(f"examples_per_row counts {int(per_row.sum())} examples, pieces holds {examples}")
    first = np.zeros(rows + 1, np.int64)  # row r's examples are first[r]:first[r + 1]
    np.cumsum(per_row, out=first[1:])
    row_of = np.repeat(np.arange(rows), per_row)
    ends = np.zeros(examples + 1, np.int64)  # example k ends ends[k + 1] tokens into its rows' run
    np.cumsum(pieces.sum(axis=1), out=ends[1:])
    padding = width - (ends[first[1:]] - ends[first[:-1]])
    if (padding < 0).any():
        raise ValueError(f"row {int(np.argmax(padding < 0))}: its examples hold more than {width} tokens")

    # block n_pieces * k + row_of[k] + p is piece p of example k; block n_pieces * first[r + 1] + r
    # is row r's padding
    blocks = np.arange(n_pieces) + (n_pieces * np.arange(examples) + row_of)[:, None]
    size = np.empty(examples * n_pieces + rows, np.int64)
    size[blocks] = pieces
    size[n_pieces * first[1:] + np.arange(rows)] = padding
    segment = np.zeros(len(size), np.uint16)
    segment[blocks] = (np.arange(examples) - first[row_of] + 1)[:, None]
    piece = np.zeros(len(size), np.uint8)
    piece[blocks] = np.arange(1, n_pieces + 1)
    lead = np.zeros(len(size), np.int64)  # a block's first position in its example
    lead[blocks] = np.cumsum(pieces, axis=1) - pieces
    start = (np.cumsum(size) - size) % width  # a block's first slot in its row (rows are width slots)

    shape = (rows, width)
    piece_of = np.repeat(piece, size).reshape(shape)
    # a slot's position: its place in the row less its example's first slot; 0 on padding
    first_slot = np.repeat((start - lead).astype(np.uint16), size).reshape(shape)
    positions = np.arange(width, dtype=np.uint16) - first_slot
    positions *= piece_of > 0
    return Spans(np.repeat(segment, size).reshape(shape), positions, piece_of)


def rebuild(out: np.ndarray, examples: np.ndarray, examples_per_row: np.ndarray) -> None:
    """Fill the derived fields of ``out`` (records of :func:`record_dtype`, token fields set) from
    its rows' examples (:data:`EXAMPLE_DTYPE`, row by row) and their number per row.

    >>> out = np.zeros(1, row_dtype("decoder_only", 3, 2, 100))
    >>> rebuild(out, np.array([(2, 1), (1, 1)], EXAMPLE_DTYPE), np.array([2]))
    >>> out["segment_ids"].tolist(), out["positions"].tolist(), out["loss_mask"].tolist()
    ([[1, 1, 1, 2, 2]], [[0, 1, 2, 0, 1]], [[0, 0, 1, 0, 1]])
    """
    if "tokens" in out.dtype.names:  # decoder-only: inputs EOS targets EOS, the loss on the targets
        both = examples.view("<u2").reshape(-1, 2)  # (input_tokens, target_tokens) per example
        s = spans(both, examples_per_row, out.dtype["tokens"].shape[0])
        out["segment_ids"], out["positions"], out["loss_mask"] = s.segment_ids, s.positions, s.piece == 2
        return
    for side, column in (("inputs", "input_tokens"), ("targets", "target_tokens")):
        s = spans(examples[column][:, None], examples_per_row, out.dtype[side].shape[0])
        out[f"{side}_segment_ids"], out[f"{side}_positions"] = s.segment_ids, s.positions
    out["loss_mask"] = out["targets_segment_ids"] > 0


def verify_shards(directory: str | Path) -> float:
    """Check every shard file of a packed mixture against its pack manifest: each shard's files add
    up to its ``bytes`` and each file has its ``sha256``. Raises
    :class:`~flanpipe.core.io.ArtifactMismatch` naming the file (a truncated or overwritten shard
    would otherwise train, or fail naming nothing). Returns the seconds the check took (it reads
    every byte: about 1 s per GB from the page cache).
    """
    started = time.perf_counter()
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    folder = directory / "shards"
    for shard in manifest["shards"]:
        paths = {kind: folder / name for kind, name in shard.get("files", {}).items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ArtifactMismatch(f"{missing[0]}: missing, though {directory / 'manifest.json'} lists it; "
                                "rerun the pack rule")
        size = sum(p.stat().st_size for p in paths.values())
        if "bytes" in shard and size != shard["bytes"]:
            sizes = {str(p): p.stat().st_size for p in paths.values()}
            raise ArtifactMismatch(f"{folder}: the files of shard {paths['tokens'].name} hold {size} bytes "
                                f"({sizes}), the pack manifest says {shard['bytes']}; rerun the pack rule")
        for kind, path in paths.items():
            verify_sha256(path, shard.get("sha256", {}).get(kind), directory / "manifest.json")
    return time.perf_counter() - started


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load``, with errors that name the shard file (a truncated one: ``mmap length is greater
    than file size``)."""
    with reading(path, "a packed shard array (.npy)"):
        return np.load(path, mmap_mode=mmap_mode)


class PackedShards:
    """The packed rows of one mixture (``data/packed/{mixture}``), memory-mapped shard by shard.

    ``len(shards)`` rows; ``shards[i]`` is row ``i`` (a record of :attr:`dtype`, the model kind's
    fields); ``shards.take(indices)`` gathers rows into one array, segment ids, positions and loss
    masks rebuilt from the stored lengths.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))
        shards = self.manifest["shards"]
        if any("files" not in s for s in shards):
            raise ValueError(f"{self.directory}: written by pack stage version "
                             f"{self.manifest.get('stage_version')}, which stored segment ids, positions and "
                             "loss masks in the shards; rerun the pack rule")
        if "model_kind" not in self.manifest:
            raise ValueError(f"{self.directory}: written by pack stage version "
                             f"{self.manifest.get('stage_version')}, whose manifest names the model kind "
                             "`layout`; rerun the pack rule")
        self.model_kind: str = self.manifest["model_kind"]
        folder = self.directory / "shards"
        # (plain ndarray views of the maps: indexing a np.memmap costs more than the copy it makes)
        self._tokens, self._examples = (
            [_load_npy(folder / s["files"][kind], mmap_mode="r").view(np.ndarray) for s in shards]
            for kind in ("tokens", "examples"))
        per_row = [_load_npy(folder / s["files"]["examples_per_row"]).astype(np.int64) for s in shards]
        for s, tokens, examples, counts in zip(shards, self._tokens, self._examples, per_row, strict=True):
            found = (len(tokens), len(counts), len(examples), int(counts.sum()))
            if found != (s["rows"], s["rows"], s["examples"], s["examples"]):
                raise ValueError(f"{folder / s['files']['tokens']}: (rows, row counts, examples, examples "
                                 f"counted) = {found}, where the manifest says {s['rows']} rows and "
                                 f"{s['examples']} examples; rerun the pack rule")
        self._starts = np.cumsum([0] + [len(t) for t in self._tokens])
        if self._starts[-1] != self.manifest["rows"]:
            raise ValueError(f"{self.directory}: shards hold {self._starts[-1]} rows, the manifest says "
                             f"{self.manifest['rows']}; rerun the pack rule")
        self._examples_per_row = np.concatenate(per_row)
        # row i's examples: _first_example[i] onwards in its own shard's examples file
        self._first_example = np.concatenate([np.cumsum(c) - c for c in per_row])
        self.stored_dtype: np.dtype = self._tokens[0].dtype
        self.dtype: np.dtype = record_dtype(self.stored_dtype)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.void:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return self.take(np.array([i % len(self)]))[0]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (in that order) as one structured array of :attr:`dtype`."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and not (0 <= indices.min() and indices.max() < len(self)):
            raise IndexError(f"rows {indices.min()}..{indices.max()} asked of {len(self)}")
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        per_row = self._examples_per_row[indices]
        # the rows' examples, in order: their shard and their place in its examples file
        example_shard = np.repeat(shard, per_row)
        example_at = np.repeat(self._first_example[indices] - (np.cumsum(per_row) - per_row), per_row) \
            + np.arange(int(per_row.sum()))
        out = np.empty(len(indices), self.dtype)
        examples = np.empty(len(example_at), EXAMPLE_DTYPE)
        for k in sorted(set(shard.tolist())):  # the few shards of a batch
            rows = shard == k
            tokens = self._tokens[k][indices[rows] - self._starts[k]]
            for name in self.stored_dtype.names:
                out[name][rows] = tokens[name]
            mine = example_shard == k
            examples[mine] = self._examples[k][example_at[mine]]
        rebuild(out, examples, per_row)
        return out


def unpack_row(row: np.void) -> list[tuple[np.ndarray, np.ndarray]]:
    """The examples of one packed row, in segment order, as (input tokens, target tokens), each
    with its EOS.

    >>> rec = np.zeros(1, [("tokens", "u2", (9,)), ("segment_ids", "u2", (9,)),
    ...                    ("positions", "u2", (9,)), ("loss_mask", "u1", (9,))])[0]
    >>> rec["tokens"][:7] = [5, 1, 6, 1, 7, 1, 1]    # pad 0 after them
    >>> rec["segment_ids"][:7] = [1, 1, 1, 1, 2, 2, 2]
    >>> rec["loss_mask"][:7] = [0, 0, 1, 1, 0, 0, 1]
    >>> [(i.tolist(), t.tolist()) for i, t in unpack_row(rec)]
    [([5, 1], [6, 1]), ([7, 1], [1])]
    """
    names = row.dtype.names
    if "tokens" in names:
        seg, tok, mask = row["segment_ids"], row["tokens"], row["loss_mask"].astype(bool)
        return [(tok[(seg == s) & ~mask], tok[(seg == s) & mask]) for s in range(1, int(seg.max()) + 1)]
    seg_in, seg_tg = row["inputs_segment_ids"], row["targets_segment_ids"]
    segments = range(1, int(seg_in.max()) + 1)
    return [(row["inputs"][seg_in == s], row["targets"][seg_tg == s]) for s in segments]
