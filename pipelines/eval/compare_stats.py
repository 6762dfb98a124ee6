"""The compare's statistics: a mean with its 95% interval over seeds, and a paired comparison
of two methods run with the same seeds (same pi_0, same seed documents, same evaluation items).

With n seeds the interval is Student's t: mean ± t_{0.975, n-1} · sd / sqrt(n). Three seeds
make a wide interval (t = 4.30); the paired difference removes what the two runs of one seed
share (the seed documents, the order of training) and so is the sharper test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # NaN with one value
    n: int

    def cell(self, digits: int = 2) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def interval(values: list[float], level: float = 0.95) -> Interval:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), 0)
    if arr.size == 1:
        return Interval(float(arr[0]), float("nan"), 1)
    t = stats.t.ppf(0.5 + level / 2, arr.size - 1)
    return Interval(float(arr.mean()), float(t * arr.std(ddof=1) / math.sqrt(arr.size)), arr.size)


@dataclass(frozen=True)
class Paired:
    diff: Interval  # a - b over the seeds both have
    p_value: float  # two-sided paired t-test (NaN under 2 pairs or no spread)

    def cell(self, digits: int = 3) -> str:
        if self.diff.n == 0:
            return "–"
        p = "" if math.isnan(self.p_value) else f" (p {self.p_value:.2f})"
        return f"{self.diff.cell(digits)}{p}"


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """a and b: seed -> value. The difference a - b over the seeds both have."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [a[s] - b[s] for s in seeds]
    p = float("nan")
    if len(diffs) >= 2 and np.std(diffs) > 0:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return Paired(interval(diffs), p)
