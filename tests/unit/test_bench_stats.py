"""The benchmark harness's pure statistics (bench/stats.py)."""

import pytest

from bench.stats import paired_ratios, percentile, ratio_summary, summary, within_noise


def test_percentile_interpolates_between_ranks():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 95) == 10
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    assert percentile([5, 1, 3], 0) == 1 and percentile([5, 1, 3], 100) == 5
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summary_drops_failed_runs_and_counts_the_rest():
    s = summary([2.0, None, 1.0, 3.0])
    assert s["n"] == 3 and s["p50"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and s["mean"] == 2.0
    assert summary([])["n"] == 0 and summary([])["p50"] is None


def test_paired_ratios_need_equal_lengths():
    assert paired_ratios([2, 4], [1, 2]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        paired_ratios([1], [1, 2])


def test_ratio_summary_ratio_of_means_with_paired_interval():
    r = ratio_summary([10, 11, 10, 10], [10, 10, 10, 10])
    assert r["pairs"] == 4 and r["median_pair_ratio"] == 1.0 and r["ratio_of_means"] == pytest.approx(1.025)
    lo, hi = r["ci95"]
    assert lo < 1.0 < hi                       # one odd round in four: not a difference
    steady = ratio_summary([11] * 10, [10] * 10)
    assert steady["ci95"] == [1.1, 1.1] and steady["ratio_of_means"] == 1.1
    assert ratio_summary([1], [2])["ci95"] is None


def test_within_noise_against_the_interval_and_the_hand_copies():
    assert within_noise({"ratio_of_means": 1.03, "ci95": [0.99, 1.07]}, [1.0]) is True
    assert within_noise({"ratio_of_means": 1.04, "ci95": [1.02, 1.06]}, [1.0, 0.99]) is False
    # no further from 1 than the furthest hand-loaded copy is from the others
    assert within_noise({"ratio_of_means": 0.968, "ci95": [0.95, 0.98]}, [1.01, 0.96, 1.0]) is True
    assert within_noise({"ratio_of_means": None}, [1.0]) is None
    assert within_noise({"ratio_of_means": 1.0, "ci95": None}, []) is None
