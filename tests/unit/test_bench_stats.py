"""The benchmark harness's pure statistics (bench/stats.py)."""

import pytest

from bench.stats import datapath_verdict, paired_ratios, percentile, ratio_summary, summary


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


def test_datapath_verdict_interval_against_the_hand_copies_spread():
    # the last full run's udp-drop: faster than the mean of the copies, its interval
    # reaching into their spread: within noise (the old rule said MISSED)
    v = datapath_verdict({"ratio_of_means": 0.993, "ci95": [0.987, 0.9996]}, [0.995, 1.004, 0.998, 1.003])
    assert (v["met"], v["verdict"]) == (True, "within noise") and v["band"] == [0.995, 1.004]
    # wholly below the spread: faster, met (management adds nothing)
    v = datapath_verdict({"ratio_of_means": 0.96, "ci95": [0.95, 0.97]}, [0.99, 1.01])
    assert (v["met"], v["verdict"]) == (True, "faster")
    # wholly above it: slower, missed
    v = datapath_verdict({"ratio_of_means": 1.04, "ci95": [1.02, 1.06]}, [1.0, 0.99, 1.01])
    assert (v["met"], v["verdict"]) == (False, "slower") and "1.020-1.060" in v["why"]
    # the band always contains 1.00: copies all on one side of it still leave 1.00 as noise
    assert datapath_verdict({"ratio_of_means": 1.0, "ci95": [0.999, 1.001]}, [1.02, 1.03])["met"] is True
    # no interval (one round): the point is judged
    assert datapath_verdict({"ratio_of_means": 1.05, "ci95": None}, [0.99, 1.01])["verdict"] == "slower"


def test_datapath_verdict_unlike_programs_and_missing_data():
    v = datapath_verdict({"ratio_of_means": 1.0, "ci95": [0.99, 1.01]}, [1.0], same_instructions=False)
    assert (v["met"], v["verdict"]) == (False, "instructions differ")
    assert datapath_verdict({"ratio_of_means": None}, [1.0])["met"] is None
    assert datapath_verdict({"ratio_of_means": 1.0, "ci95": None}, [])["met"] is None
