"""Mixing rates, apportioning and repeats against hand-worked values."""

import numpy as np
import pytest

from flanpipe.mix import apportion, mixing_rates, repeat_sample


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
