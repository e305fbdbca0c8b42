"""The bottom-level numeric helpers, on fabricated numbers."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dynamicdet import metrics


def test_spearman_ranks_with_average_ties():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.spearman(a, a**3) == pytest.approx(1.0)  # any increasing map: perfect rank agreement
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    # ties take their average rank: b ranks (1.5, 1.5, 3, 4, 5), Pearson of the ranks
    b = [0.0, 0.0, 1.0, 2.0, 3.0]
    ra, rb = np.arange(1.0, 6.0), np.array([1.5, 1.5, 3.0, 4.0, 5.0])
    assert metrics.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert isinstance(metrics.spearman([1, 2], [2, 1]), float)


def test_mix_is_linear_in_the_hard_fraction():
    assert metrics.mix(easy=2.0, hard=5.0, k=0.0) == 2.0 and metrics.mix(easy=2.0, hard=5.0, k=1.0) == 5.0
    # cost(0.9) = 0.1 cost_easy + 0.9 cost_hard
    assert metrics.mix(easy=50.0, hard=80.0, k=0.9) == pytest.approx(77.0)
    # elementwise: per-round easy / hard times (R, S) and per-segment fractions (S,)
    easy, hard = np.array([[10.0, 12.0], [20.0, 24.0]]), np.array([[30.0, 36.0], [60.0, 72.0]])
    assert np.allclose(metrics.mix(easy=easy, hard=hard, k=np.array([0.5, 0.25])), [[20.0, 18.0], [40.0, 36.0]])
    k = pd.Series([0.0, 0.5, 1.0])
    assert list(metrics.mix(easy=10.0, hard=30.0, k=k)) == [10.0, 20.0, 30.0]


def test_static_frontier_follows_any_cost_column():
    static = pd.DataFrame({"model": ["n", "s"], "GFLOPs": [1.0, 3.0], "AP": [0.6, 0.8], "other": [0, 0]})
    points = pd.DataFrame({"model": ["Dy /0", "Dy /50", "Dy /100"], "GFLOPs": [1.0, 2.0, 4.0], "AP": [0.6, 0.75, 0.8]})
    f = metrics.static_frontier(points=points, static=static, cost="GFLOPs")
    assert list(f.columns) == ["model", "GFLOPs", "AP", "AP_frontier", "gap"]  # the cost column keeps its name
    # AP_frontier = 0.6 + (GFLOPs - 1) * 0.1, extended beyond the largest static model
    assert np.allclose(f["AP_frontier"], [0.6, 0.7, 0.9]) and np.allclose(f["gap"], [0.0, 0.05, -0.1])
    with pytest.raises(ValueError, match=r"points lacks columns \['latency_ms_b1'\]"):
        metrics.static_frontier(points=points, static=static, cost="latency_ms_b1")


def test_static_frontier_in_log_cost():
    static = pd.DataFrame({"model": ["n", "s"], "GFLOPs": [1.0, 4.0], "AP": [0.6, 0.8]})
    points = pd.DataFrame({"model": ["Dy /50", "Dy /100"], "GFLOPs": [2.0, 8.0], "AP": [0.68, 0.9]})
    f = metrics.static_frontier(points=points, static=static, cost="GFLOPs", log_cost=True)
    # AP_frontier = 0.6 + 0.2 log(c / 1) / log(4): 2 GFLOPs is half way in log cost, 8 one half-step past the end
    assert np.allclose(f["AP_frontier"], [0.7, 0.9]) and np.allclose(f["gap"], [-0.02, 0.0])
    # linear in cost the same point sits above the line: 0.6 + 0.2 (2 - 1) / 3
    assert metrics.static_frontier(points=points, static=static, cost="GFLOPs")["gap"].iloc[0] == pytest.approx(
        0.68 - (0.6 + 0.2 / 3)
    )
    with pytest.raises(ValueError, match="log_cost needs GFLOPs > 0"):
        metrics.static_frontier(points=points.assign(GFLOPs=[0.0, 1.0]), static=static, cost="GFLOPs", log_cost=True)


def test_dominance_needs_no_interpolation():
    static = pd.DataFrame({"model": ["n", "s"], "GFLOPs": [1.0, 3.0], "AP": [0.6, 0.8]})
    points = pd.DataFrame({"model": ["a", "b", "c"], "GFLOPs": [1.0, 2.0, 2.5], "AP": [0.55, 0.7, 0.85]})
    d = metrics.dominance(points=points, static=static, cost="GFLOPs").set_index("model")
    assert d.loc["a", "dominated_by"] == ("n",)  # the same cost and less AP: below any frontier
    assert d.loc["b", "dominated_by"] == () and d.loc["b", "dominates"] == ()  # between the two: the line decides
    assert d.loc["c", "dominates"] == ("s",)  # cheaper than s and better
    one = metrics.dominance(points=points, static=static.iloc[:1], cost="GFLOPs")  # one static model is enough
    assert list(one["dominated_by"]) == [("n",), (), ()]


def test_interval_of_fabricated_margins_is_students_t():
    mean, sd, lo, hi = metrics.interval(np.array([0.1, 0.2, 0.3]))
    assert (mean, sd) == pytest.approx((0.2, 0.1))
    assert lo == pytest.approx(0.2 - 4.302653 * 0.1 / math.sqrt(3), rel=1e-6) and hi - mean == pytest.approx(mean - lo)
    # the 90% interval of an equivalence test: t_{0.95, 2} = 2.919986
    _, _, lo90, _ = metrics.interval(np.array([0.1, 0.2, 0.3]), level=0.90)
    assert lo90 == pytest.approx(0.2 - 2.919986 * 0.1 / math.sqrt(3), rel=1e-6)
    assert math.isnan(metrics.interval(np.array([0.1]))[2])


def test_bounded_intervals_stay_in_their_range():
    rho = np.array([0.99, 0.999, 0.95])
    assert rho.mean() + 4.302653 * rho.std(ddof=1) / math.sqrt(3) > 1  # the plain t-interval leaves [-1, 1]
    _, _, lo, hi = metrics.interval(rho, transform="fisher")
    z = np.arctanh(rho)  # Fisher z: the interval of atanh(rho), back with tanh
    assert hi == pytest.approx(math.tanh(z.mean() + 4.302653 * z.std(ddof=1) / math.sqrt(3)), rel=1e-6)
    assert -1 <= lo < hi <= 1
    share = np.array([0.02, 0.3, 0.01])
    assert share.mean() - 4.302653 * share.std(ddof=1) / math.sqrt(3) < 0  # the plain one leaves [0, 1]
    _, _, lo, hi = metrics.interval(share, transform="logit")
    assert 0 <= lo < hi <= 1
    assert 0 < metrics.interval(np.array([0.0, 0.0, 1.0]), transform="logit")[2]  # 0 and 1 are clipped, not infinite
    with pytest.raises(ValueError, match="unknown transform"):
        metrics.interval(share, transform="probit")


def test_superiority_compares_the_interval_with_zero_and_the_papers_effect():
    assert metrics.superiority(np.array([0.03, 0.04, 0.05]), effect=0.025) == (
        "reproduced",
        "consistent with the paper's effect",
    )
    assert metrics.superiority(np.array([-0.03, -0.04, -0.05]))[0] == "contradicted"
    # across 0 but wholly below the paper's +0.025: no seed count, the paper's effect is already excluded
    assert metrics.superiority(np.array([-0.002, 0.004, 0.001]), effect=0.025) == (
        "not decided",
        "excludes the paper's effect",
    )
    assert metrics.superiority([0.05], effect=0.025) == ("one run", "")
    assert metrics.superiority([0.05, 0.06]) == ("two runs", "")


def test_seeds_needed_is_the_smallest_n_whose_interval_excludes_zero():
    # mean 0.01, sd 0.02: n needs t_{0.975, n-1} / sqrt(n) < 0.5; t_{0.975,16} / sqrt(17) = 2.1199 / 4.1231 = 0.514,
    # t_{0.975,17} / sqrt(18) = 2.1098 / 4.2426 = 0.497: 18 seeds
    m = np.array([0.01, -0.01, 0.03])
    assert metrics.seeds_needed(m) == 18
    assert metrics.superiority(m, effect=0.025) == (
        "not decided",
        "consistent with the paper's effect; about 18 seeds would decide it",
    )
    wide = np.array([0.001, -0.05, 0.052])  # mean 0.001, sd 0.051: t / sqrt(n) < 0.02 needs thousands
    assert metrics.seeds_needed(wide) is None
    assert metrics.superiority(wide)[1] == f"> {metrics.SEEDS_CAP} seeds would decide it"


def test_equivalence_is_two_one_sided_tests():
    from scipy import stats

    def tost_p(x, bound):  # the larger p of H0: mean <= -bound and H0: mean >= +bound
        lower = stats.ttest_1samp(x, -bound, alternative="greater").pvalue
        return max(lower, stats.ttest_1samp(x, bound, alternative="less").pvalue)

    inside, outside, across = (
        np.array([0.001, -0.002, 0.003]),
        np.array([-0.03, -0.035, -0.04]),
        np.array([0, -0.02, 0.01]),
    )
    assert metrics.equivalence(inside, 0.01)[0] == "reproduced" and tost_p(inside, 0.01) < 0.05
    assert metrics.equivalence(outside, 0.01)[0] == "contradicted"  # 95% interval entirely below -0.01
    word, qualifier = metrics.equivalence(across, 0.01)
    assert word == "not decided" and tost_p(across, 0.01) >= 0.05 and "reaches beyond +-0.01" in qualifier
    assert metrics.equivalence(np.array([0.5, 0.52, 0.48]), 0.1, center=0.5, transform="logit")[0] == "reproduced"
    assert metrics.equivalence([0.0, 0.001], 0.01) == ("two runs", "")


def test_metrics_imports_nothing_from_the_library():
    tree = ast.parse(Path(metrics.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "itertools", "math", "numpy", "pandas", "scipy"}


def test_an_equivalence_interval_outside_at_90_but_not_95_percent_says_both():
    # shares centred on 0.29 against a bound of 0.5 +- 0.1: the 90% interval lies below 0.4, the 95% one reaches it
    verdict, words = metrics.equivalence([0.22, 0.33, 0.31], 0.1, center=0.5, transform="logit")
    assert verdict == "not decided" and "outside +-0.1, 95% [" in words and words.endswith("reaches it")
