"""Guards of the train loop: a step whose loss or gradient norm is not finite.

A loss that turns NaN or infinite (bf16 overflow, a learning rate too high, a poisoned row) would
otherwise be stepped on and checkpointed, and every later step would train from broken weights.
:func:`check_finite` is called once per step, on every rank with the same all-reduced values, so
every rank stops (or skips) together:

- the loss is checked before the step's optimizer update (DeepSpeed steps at the last micro-batch's
  ``engine.step()``): a non-finite loss stops the run with no update applied and no checkpoint
  written from that state;
- the gradient norm is known only after the update (ZeRO computes it inside its step): a non-finite
  one stops the run before the next step and before any checkpoint of the updated weights.

``train.max_nonfinite_steps`` (default 0) lets a run skip that many steps of non-finite loss instead
(the trainer then checks the loss before the backward pass and leaves the step's update out); a
non-finite gradient norm always stops the run. The error names the step and the dataset and example
id of every example in the step's rows (``index.parquet`` of the packed mixture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


class NonFiniteStep(RuntimeError):
    """A training step's loss or gradient norm is NaN or infinite."""


@dataclass(frozen=True)
class Verdict:
    """What the trainer does with a step: ``train`` it, ``skip`` it (no update), or ``stop``."""

    action: str
    message: str = ""


def step_examples(packed_dir: str | Path, rows: np.ndarray, limit: int = 20) -> list[str]:
    """``dataset/example_id`` of every example in the packed ``rows`` (in row, then segment order),
    at most ``limit`` of them, then how many more. Read from the pack's ``index.parquet``.

    >>> import pyarrow as pa, tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> pq.write_table(pa.table({"row": [0, 1, 1], "segment": [1, 1, 2],
    ...                          "dataset": ["anli", "rte", "rte"], "example_id": ["a7", "r1", "r2"]}),
    ...                d / "index.parquet")
    >>> step_examples(d, np.array([1]))
    ['rte/r1', 'rte/r2']
    """
    wanted = sorted(set(np.asarray(rows).tolist()))
    columns = ["row", "segment", "dataset", "example_id"]
    index = pq.read_table(Path(packed_dir) / "index.parquet", columns=columns,
                          filters=[("row", "in", wanted)])
    index = index.sort_by([("row", "ascending"), ("segment", "ascending")])
    names = [f"{d}/{e}" for d, e in zip(index.column("dataset").to_pylist(),
                                        index.column("example_id").to_pylist(), strict=True)]
    more = len(names) - limit
    return names[:limit] + ([f"... and {more} more"] if more > 0 else [])


def check_finite(step: int, loss: float | None, grad_norm: float | None, skipped: int, allowed: int,
                 examples, skippable: bool = True) -> Verdict:
    """The verdict on 1-based ``step`` given its all-reduced ``loss`` (None: not checked here) and
    gradient norm (None: not known yet, or DeepSpeed had no need of it); ``skipped`` steps were
    skipped already, ``allowed`` may be (``train.max_nonfinite_steps``); ``skippable``: whether the
    step can still be left out (its update not applied yet, no gradient computed). ``examples()``
    names the step's examples (called only when the step is not finite).

    >>> check_finite(3, 2.5, 1.0, 0, 0, list).action
    'train'
    >>> check_finite(3, float("nan"), None, 0, 1, list).action
    'skip'
    >>> print(check_finite(3, float("inf"), None, 1, 1, lambda: ["rte/r1"]).message)
    ... # doctest: +NORMALIZE_WHITESPACE
    train: step 3: the loss is inf, not finite (1 of train.max_nonfinite_steps 1 skipped already);
    the step's rows hold rte/r1
    """
    what = None
    if loss is not None and not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif grad_norm is not None and not math.isfinite(grad_norm):
        what = f"the gradient norm is {grad_norm}"
        skippable = False  # known only after the update
    if what is None:
        return Verdict("train")
    if skippable and skipped < allowed:
        return Verdict("skip", f"train: step {step}: {what}; skipped ({skipped + 1} of "
                               f"train.max_nonfinite_steps {allowed})")
    budget = (f"{skipped} of train.max_nonfinite_steps {allowed} skipped already" if allowed else
              "train.max_nonfinite_steps is 0")
    if not skippable and allowed:
        budget += "; found after the backward pass, where a step cannot be skipped"
    return Verdict("stop", f"train: step {step}: {what}, not finite ({budget}); the step's rows hold "
                           f"{', '.join(examples())}")
