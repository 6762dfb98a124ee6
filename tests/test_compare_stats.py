"""The compare's intervals and paired comparisons (pipelines/eval/compare_stats.py), against values
worked out by hand."""

from __future__ import annotations

import math

import pytest

from pipelines.eval.compare_stats import interval, paired

pytestmark = pytest.mark.timeout(30)


def test_interval_is_students_t_over_seeds():
    iv = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975,2} = 4.3027
    assert iv.mean == pytest.approx(2.0) and iv.n == 3
    assert iv.half_width == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert iv.cell() == "2.00 ± 2.48"
    assert interval([5.0]).cell() == "5.00" and interval([]).cell() == "–"


def test_paired_difference_removes_what_a_seed_shares():
    a = {0: 0.50, 1: 0.70, 2: 0.90}  # seeds differ a lot, the methods by 0.1 each time
    b = {0: 0.40, 1: 0.61, 2: 0.79}
    p = paired(a, b)
    assert p.diff.mean == pytest.approx(0.1, abs=1e-9) and p.diff.n == 3
    assert p.diff.half_width < 0.05 and p.p_value < 0.01  # the unpaired intervals overlap
    assert interval(list(a.values())).half_width > 0.4
    assert paired({0: 1.0, 3: 2.0}, {0: 0.5}).diff.n == 1  # only the seeds both have
