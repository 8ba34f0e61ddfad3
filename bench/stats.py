"""Pure statistics for the benchmark report: percentiles, summaries, ratios.

Percentiles use linear interpolation between closest ranks (numpy's default, "type 7"),
so p50 of an even-sized sample is the mean of the middle two and p95 of five runs lies
between the 4th and the 5th. With few runs a p95 is close to the maximum: the report
always gives `n` next to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 <= q <= 100) of `values`; None for an empty sample."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    data = sorted(float(v) for v in values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float], digits: int = 4) -> dict:
    """n, min, p50, p95, max, mean of a sample (None values are dropped: failed runs are
    counted separately by the caller, never averaged in)."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return {"n": 0, "min": None, "p50": None, "p95": None, "max": None, "mean": None}

    def r(x: float) -> float:
        return round(x, digits)

    return {"n": len(data), "min": r(min(data)), "p50": r(percentile(data, 50)), "p95": r(percentile(data, 95)),
            "max": r(max(data)), "mean": r(sum(data) / len(data))}


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i] for interleaved runs (each pair measured back to back)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return [x / y for x, y in zip(a, b) if y]


# two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond 30)
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
        11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11, 18: 2.10, 19: 2.09, 20: 2.09,
        21: 2.08, 22: 2.07, 23: 2.07, 24: 2.06, 25: 2.06, 26: 2.06, 27: 2.05, 28: 2.05, 29: 2.05, 30: 2.04}


def ratio_summary(a: Sequence[float], b: Sequence[float]) -> dict:
    """a against b, measured in interleaved pairs (a[i] and b[i] back to back).

    `ratio_of_means` with a 95% confidence interval from the paired differences
    (mean(a - b) +- t * sd / sqrt(n), divided by mean(b)): robust to values that come in
    whole units (the kernel's ns per run), where per-pair ratios are too coarse. The
    median and quartiles of the per-pair ratios are given too."""
    pairs = paired_ratios(a, b)
    n = len(pairs)
    out = {
        "pairs": n,
        "median_pair_ratio": _r(percentile(pairs, 50)),
        "pair_ratio_p25": _r(percentile(pairs, 25)),
        "pair_ratio_p75": _r(percentile(pairs, 75)),
        "ratio_of_means": None,
        "ci95": None,
    }
    if n and sum(b):
        mb = sum(b) / len(b)
        diffs = [x - y for x, y in zip(a, b)]
        md = sum(diffs) / n
        out["ratio_of_means"] = _r(1 + md / mb)
        if n > 1:
            sd = math.sqrt(sum((d - md) ** 2 for d in diffs) / (n - 1))
            half = _T95.get(n - 1, 1.96) * sd / math.sqrt(n)
            out["ci95"] = [_r(1 + (md - half) / mb), _r(1 + (md + half) / mb)]
    return out


def datapath_verdict(ratio: dict, aa: Sequence[float], same_instructions: bool = True) -> dict:
    """Does management add anything to the packet path? `ratio`: the deployed program
    against the mean of the hand-loaded copies (ratio_summary); `aa`: each hand copy
    against the mean of the others (what identical programs show on this machine: JIT
    image placement alone moves them a few %).

    The noise band is the hand copies' own spread, [min(aa), max(aa)], widened to
    include 1.00. The deployed program's 95% interval (its point when there is none):
    - overlaps the band: "within noise" (met): it cannot be told from one more hand copy;
    - lies wholly below it: "faster" (met): kube-xdp adds nothing; with equal tags the
      instructions are the same, so the gap is placement, and the band (from a few
      copies) was narrower than the placement noise really is;
    - lies wholly above it: "slower" (missed): the deployed program costs more per packet
      than any hand copy differs from the others.
    Different program tags (different instructions) make the comparison unlike-for-like:
    "instructions differ" (missed). met is None when nothing could be computed.
    Returns {met, verdict, band, interval, why}."""
    r = ratio.get("ratio_of_means")
    aa = [a for a in aa if a is not None]
    if r is None or not aa:
        return {"met": None, "verdict": "not measured", "band": None, "interval": None,
                "why": "no ratio, or no hand copies to compare with"}
    band = [min(min(aa), 1.0), max(max(aa), 1.0)]
    lo, hi = ratio.get("ci95") or [r, r]
    out = {"band": [round(band[0], 4), round(band[1], 4)], "interval": [lo, hi]}
    if not same_instructions:
        return {**out, "met": False, "verdict": "instructions differ",
                "why": "the deployed program's tag differs from the hand copies': not the same instructions"}
    if hi < band[0]:
        return {**out, "met": True, "verdict": "faster",
                "why": f"interval {lo:.3f}-{hi:.3f} lies below the hand copies' spread {band[0]:.3f}-{band[1]:.3f}: "
                       "the deployed program is faster, never slower (same instructions: placement)"}
    if lo > band[1]:
        return {**out, "met": False, "verdict": "slower",
                "why": f"interval {lo:.3f}-{hi:.3f} lies above the hand copies' spread {band[0]:.3f}-{band[1]:.3f}"}
    return {**out, "met": True, "verdict": "within noise",
            "why": f"interval {lo:.3f}-{hi:.3f} overlaps the hand copies' spread {band[0]:.3f}-{band[1]:.3f}"}


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)
