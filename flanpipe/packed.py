"""Reading packed shards back: memory-mapped rows, and examples out of rows.

>>> shards = PackedShards("data/packed/nli")          # doctest: +SKIP
>>> row = shards[0]                                    # doctest: +SKIP
>>> [len(i) + len(t) for i, t in unpack_row(row)]     # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class PackedShards:
    """The packed rows of one mixture (``data/packed/{mixture}``), memory-mapped shard by shard.

    ``len(shards)`` rows; ``shards[i]`` is row ``i`` (a record with the layout's fields);
    ``shards.take(indices)`` gathers rows into one array.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))
        self.layout: str = self.manifest["layout"]
        self._maps = [np.load(self.directory / "shards" / s["file"], mmap_mode="r")
                      for s in self.manifest["shards"]]
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        if self._starts[-1] != self.manifest["rows"]:
            raise ValueError(f"{self.directory}: shards hold {self._starts[-1]} rows, the manifest says "
                             f"{self.manifest['rows']}; rerun the pack rule")
        self.dtype = self._maps[0].dtype

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.void:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        i %= len(self)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._maps[k][i - self._starts[k]]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (in that order) as one structured array."""
        indices = np.asarray(indices, np.int64)
        out = np.empty(len(indices), self.dtype)
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self._maps[k][indices[sel] - self._starts[k]]
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
