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


def test_interval_and_verdict_of_fabricated_margins():
    mean, sd, lo, hi = metrics.interval(np.array([0.1, 0.2, 0.3]))
    assert (mean, sd) == pytest.approx((0.2, 0.1))
    assert lo == pytest.approx(0.2 - 4.302653 * 0.1 / math.sqrt(3), rel=1e-6) and hi - mean == pytest.approx(mean - lo)
    assert metrics.verdict(np.array([0.1, 0.2, 0.3])) == "inconclusive"  # lo = 0.2 - 0.248 < 0: straddles 0
    assert metrics.verdict(np.array([0.2, 0.25, 0.3])) == "reproduced"  # lo = 0.25 - 0.124 > 0
    assert metrics.verdict(np.array([-0.2, -0.25, -0.3])) == "not reproduced"
    assert metrics.verdict(np.array([0.0])) == "reproduced" and metrics.verdict(np.array([-0.01])) == "not reproduced"


def test_metrics_imports_nothing_from_the_library():
    tree = ast.parse(Path(metrics.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "itertools", "math", "numpy", "pandas", "scipy"}
