"""Packers: every example placed once, rows never overflow, and best fit against a naive reference."""

import numpy as np
import pytest

from flanpipe.core.tokens import binpack


def flan_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Input and target token counts (EOS included) shaped like FLAN's: long-tailed inputs, mostly
    short targets with some long ones."""
    rng = np.random.default_rng(seed)
    inputs = np.minimum(np.ceil(rng.lognormal(5.0, 1.0, n)), 1023).astype(np.int64) + 1
    long_target = np.minimum(np.ceil(rng.lognormal(3.5, 1.0, n)), 255)
    targets = np.where(rng.random(n) < 0.6, rng.integers(1, 4, n), long_target).astype(np.int64) + 1
    return inputs, targets


def check_placement(result, size_a, cap_a, size_b, cap_b):
    """Each example in one bin, segments numbered 1.. in placement, spans disjoint and in the row."""
    bins, seg, off_a, off_b, n = result.row, result.segment, result.offset_a, result.offset_b, result.rows
    assert bins.min() >= 0 and bins.max() == n - 1 and len(np.unique(bins)) == n
    for b in range(n):
        members = np.flatnonzero(bins == b)
        assert sorted(seg[members].tolist()) == list(range(1, len(members) + 1))
        for off, size, cap in ((off_a, size_a, cap_a), (off_b, size_b, cap_b)):
            order = members[np.argsort(seg[members])]
            ends = off[order] + size[order]
            assert off[order][0] == 0 and (off[order][1:] == ends[:-1]).all()  # back to back, in order
            assert ends[-1] <= cap
    return n


def naive_best_fit_decreasing(sizes: list[int], cap: int) -> list[int]:
    """The textbook algorithm: largest first, into the fullest row it fits, by scanning every row.
    Returns the rows' fill levels, sorted."""
    fills: list[int] = []
    for s in sorted(sizes, reverse=True):
        fitting = [i for i, f in enumerate(fills) if f + s <= cap]
        if fitting:
            best = max(fitting, key=lambda i: fills[i])
            fills[best] += s
        else:
            fills.append(s)
    return sorted(fills)


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_matches_the_textbook_algorithm(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 200, 600)
    result = binpack.pack("best_fit", sizes, 256, np.zeros_like(sizes), 0)
    fills = np.bincount(result.row, weights=sizes).astype(int)
    assert sorted(fills.tolist()) == naive_best_fit_decreasing(sizes.tolist(), 256)
    check_placement(result, sizes, 256, np.zeros_like(sizes), 0)


@pytest.mark.parametrize("packer", ["best_fit", "next_fit", "none"])
def test_every_packer_places_each_example_once_within_the_row(packer):
    inputs, targets = flan_like(3000)
    check_placement(binpack.pack(packer, inputs + targets, 1280, np.zeros_like(inputs), 0),
                    inputs + targets, 1280, np.zeros_like(inputs), 0)
    check_placement(binpack.pack(packer, inputs, 1024, targets, 256), inputs, 1024, targets, 256)


def test_targets_heavy_windows_pack_on_the_targets():
    """When targets fill rows faster than inputs, best fit runs on the targets and still fits both."""
    rng = np.random.default_rng(3)
    inputs, targets = rng.integers(1, 50, 2000), rng.integers(1, 128, 2000)  # e.g. translation
    n = check_placement(binpack.pack("best_fit", inputs, 1024, targets, 256), inputs, 1024, targets, 256)
    assert n <= 1.01 * binpack.rows_lower_bound(inputs, 1024, targets, 256)


def test_best_fit_reaches_the_efficiency_targets_on_flan_like_lengths():
    inputs, targets = flan_like(20_000)
    total = int((inputs + targets).sum())
    n = binpack.pack("best_fit", inputs + targets, 1280, np.zeros_like(inputs), 0).rows
    n_next = binpack.pack("next_fit", inputs + targets, 1280, np.zeros_like(inputs), 0).rows
    assert total / (n * 1280) >= 0.995 > total / (n_next * 1280)
    rows = binpack.pack("best_fit", inputs, 1024, targets, 256).rows
    assert rows <= 1.04 * binpack.rows_lower_bound(inputs, 1024, targets, 256)


def test_an_example_larger_than_a_row_is_refused():
    with pytest.raises(ValueError, match="larger than a row"):
        binpack.pack("best_fit", np.array([3, 11]), 10, np.zeros(2, np.int64), 0)
    with pytest.raises(ValueError, match="allowed: best_fit"):
        binpack.pack("first_fit", np.array([3]), 10, np.zeros(1, np.int64), 0)


def test_empty_window():
    assert binpack.pack("best_fit", np.zeros(0, np.int64), 10, np.zeros(0, np.int64), 0).rows == 0
