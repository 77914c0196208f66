"""Mixing rates, apportioning, repeats and per-mixture duplicates against hand-worked values."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.core.text.schemas import DROPPED_SCHEMA
from flanpipe.stages.mix import (
    FATES,
    Fates,
    Pool,
    apportion,
    duplicate_components,
    mixing_rates,
    repeat_sample,
    resolve_mixture,
)


def test_rates_follow_seqio_rule_by_hand():
    # n = 100, 3000, 30000 with K = 3000: min(n, K) = 100, 3000, 3000 -> 100/6100, 3000/6100, 3000/6100
    rates = mixing_rates(np.array([100, 3000, 30000]), rate_max=3000, temperature=1.0)
    assert rates.tolist() == pytest.approx([100 / 6100, 3000 / 6100, 3000 / 6100])
    # T = 2: square roots, 10 : 54.77 : 54.77
    rates = mixing_rates(np.array([100, 3000, 30000]), rate_max=3000, temperature=2.0)
    r = np.sqrt([100, 3000, 3000])
    assert rates.tolist() == pytest.approx((r / r.sum()).tolist())


def test_empty_datasets_get_no_rate():
    assert mixing_rates(np.array([0, 10]), 3000, 1.0).tolist() == [0.0, 1.0]
    assert mixing_rates(np.array([0, 0]), 3000, 1.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("total", [0, 1, 7, 1000, 12345])
def test_apportion_sums_and_stays_within_one(total):
    rng = np.random.default_rng(total)
    rates = rng.random(13)
    rates /= rates.sum()
    counts = apportion(total, rates)
    assert counts.sum() == total
    assert np.abs(counts - total * rates).max() < 1


def test_repeats_are_whole_passes_then_a_partial_one():
    idx, epoch = repeat_sample(4, 10, np.random.default_rng(0))
    assert sorted(idx.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3] or np.bincount(idx).tolist().count(3) == 2
    assert np.bincount(idx, minlength=4).min() == 2 and np.bincount(idx).max() == 3
    assert np.bincount(epoch).tolist() == [4, 4, 2]
    assert len(set(idx[epoch == 2].tolist())) == 2  # no row twice within a pass


# --- duplicates resolved per mixture -------------------------------------------------------------

def write_dropped(path, rows: list[tuple[int, str, int]]) -> str:
    """A dedupe output: (row, kept dataset, kept row) per dropped row."""
    rows = [{"row_index": r, "example_id": f"x:{r}", "reason": "exact", "kept_dataset": d,
             "kept_row_index": k, "kept_example_id": f"{d}:{k}", "similarity": 1.0} for r, d, k in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=DROPPED_SCHEMA), path)
    return str(path)


def pool(name: str, n: int, priority: list[int], contaminated=(), exact=None) -> Pool:
    rows = np.arange(n)
    other = np.stack([np.arange(n, dtype=np.uint64), np.full(n, sum(map(ord, name)), np.uint64)], 1)
    hashes = other if exact is None else exact
    return Pool(name=name, row_index=rows, example_id=np.array([f"{name}:train:{i}" for i in rows], object),
                priority=np.array(priority, np.uint64), exact=hashes,
                contaminated=np.isin(rows, list(contaminated)))


def fates_of(fates: Fates, pools: list[Pool]) -> dict:
    """{(dataset, row): (fate, twin (dataset, row) or None)}."""
    out = {}
    for d, q, f, t in zip(fates.dataset, fates.position, fates.fate, fates.twin, strict=True):
        twin = (pools[fates.dataset[t]].name, int(pools[fates.dataset[t]].row_index[fates.position[t]])) \
            if t >= 0 else None
        out[(pools[d].name, int(pools[d].row_index[q]))] = (FATES[f], twin)
    return out


@pytest.fixture
def dropped(tmp_path):
    """sst2 row 0 is kept by dedupe; cola row 0 is its exact copy, cola row 1 an exact copy of cola
    row 0 (a chain: its component's root is sst2 row 0)."""
    return [write_dropped(tmp_path / "sst2.dropped.parquet", []),
            write_dropped(tmp_path / "cola.dropped.parquet", [(0, "sst2", 0), (1, "cola", 0)])]


def same_hash(n: int) -> np.ndarray:
    return np.zeros((n, 2), np.uint64)


def test_a_twin_counts_only_in_the_mixture_it_is_in(dropped):
    components = duplicate_components(dropped)
    sst2, cola = pool("sst2", 2, [5, 6], exact=same_hash(2)), pool("cola", 3, [1, 2, 3], exact=same_hash(3))
    # both present: sst2 row 0 is kept, both cola copies are its duplicates
    both = fates_of(resolve_mixture([sst2, cola], components, cap=10), [sst2, cola])
    assert both[("sst2", 0)] == ("kept", None)
    assert both[("cola", 0)] == ("exact", ("sst2", 0)) and both[("cola", 1)] == ("exact", ("sst2", 0))
    assert both[("cola", 2)] == ("kept", None)
    # sst2 left out (its cluster held out): cola row 0 stays, and row 1 is now its duplicate
    alone = fates_of(resolve_mixture([cola], components, cap=10), [cola])
    assert alone == {("cola", 0): ("kept", None), ("cola", 1): ("exact", ("cola", 0)),
                     ("cola", 2): ("kept", None)}


def test_a_twin_capped_away_or_contaminated_hands_over(dropped):
    components = duplicate_components(dropped)
    # cap 1: sst2 row 1 has the lower priority, so sst2 row 0 (the twin) is capped away
    sst2, cola = pool("sst2", 2, [9, 1], exact=same_hash(2)), pool("cola", 3, [1, 2, 3], exact=same_hash(3))
    capped = fates_of(resolve_mixture([sst2, cola], components, cap=1), [sst2, cola])
    assert capped[("sst2", 0)] == ("capped", None) and capped[("sst2", 1)] == ("kept", None)
    assert capped[("cola", 0)] == ("kept", None)  # stays: its twin is not in this mixture
    assert capped[("cola", 1)] == ("exact", ("cola", 0))
    assert capped[("cola", 2)] == ("capped", None)  # the cap of 1 is cola row 0's now
    # the twin contaminated in this mixture: counted as contaminated, the copy stays
    sst2 = pool("sst2", 2, [5, 6], contaminated=[0], exact=same_hash(2))
    dirty = fates_of(resolve_mixture([sst2, cola], components, cap=10), [sst2, cola])
    assert dirty[("sst2", 0)] == ("contaminated", None) and dirty[("cola", 0)] == ("kept", None)


def test_the_cap_repeats_until_no_representative_is_capped(tmp_path):
    """A capped representative hands over to a row of another dataset, which then pushes that
    dataset's own last row out of its cap: worked by hand."""
    paths = [write_dropped(tmp_path / "sst2.dropped.parquet", []),
             write_dropped(tmp_path / "cola.dropped.parquet", [(0, "sst2", 0)])]
    sst2 = pool("sst2", 2, [9, 1])  # cap 1: row 1 kept, row 0 capped
    cola = pool("cola", 2, [1, 5])  # row 0 (priority 1) returns and takes the cap from row 1
    f = fates_of(resolve_mixture([sst2, cola], duplicate_components(paths), cap=1), [sst2, cola])
    assert f == {("sst2", 0): ("capped", None), ("sst2", 1): ("kept", None),
                 ("cola", 0): ("kept", None), ("cola", 1): ("capped", None)}
    # near, not exact, when the kept twin's normalised text differs
    cola2 = pool("cola", 2, [1, 5])
    f = fates_of(resolve_mixture([pool("sst2", 2, [1, 9]), cola2], duplicate_components(paths), 10),
                 [pool("sst2", 2, [1, 9]), cola2])
    assert f[("cola", 0)] == ("near", ("sst2", 0))
