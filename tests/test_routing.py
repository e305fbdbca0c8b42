"""Thresholds from a target fraction / latency, and the routing baselines' building blocks."""

import math
import warnings

import numpy as np
import pytest

from dynamicdet.modeling import routing


def test_fraction_thresholds_on_distinct_scores():
    s = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05])
    for k in np.linspace(0, 1, 11):
        tau = routing.threshold_for_fraction(s, k)
        assert (s >= tau).sum() == round(k * len(s))
    assert routing.threshold_for_fraction(s, 0.0) == math.inf
    assert routing.threshold_for_fraction(s, 1.0) == -math.inf


def test_fraction_within_one_over_n_on_random_scores():
    rng = np.random.default_rng(0)
    s = rng.random(301)
    for k in (0.1, 0.33, 0.5, 0.9):
        frac = (s >= routing.threshold_for_fraction(s, k)).mean()
        assert abs(frac - k) <= 1 / len(s)


def test_ties_at_the_cut_go_one_way():
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    tau = routing.threshold_for_fraction(s, 0.4)  # want 2 of 5; the tie block is 3 wide
    n = int((s >= tau).sum())
    assert n in (1, 4)  # the tie cannot be split
    assert abs(n - 2) == min(abs(1 - 2), abs(4 - 2))
    s_all_tied = np.full(6, 0.3)
    n = int((s_all_tied >= routing.threshold_for_fraction(s_all_tied, 0.5)).sum())
    assert n in (0, 6)


def test_latency_rule():
    assert routing.fraction_for_latency(15.0, 10.0, 20.0) == pytest.approx(0.5)
    assert routing.fraction_for_latency(10.0, 10.0, 20.0) == 0.0
    with pytest.raises(routing.TargetOutOfRange, match=r"outside the reachable range \[10\.000, 20\.000\] ms"):
        routing.fraction_for_latency(25.0, 10.0, 20.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert routing.fraction_for_latency(5.0, 10.0, 20.0, clip=True) == 0.0
        assert "clipped" in str(w[0].message)
    with pytest.raises(routing.TargetOutOfRange):
        routing.threshold_for_fraction([0.1, 0.2], 1.5)
    s = np.linspace(0, 1, 100)
    tau = routing.threshold_for_latency(s, 19.0, 10.0, 20.0)
    assert (s >= tau).mean() == pytest.approx(0.9, abs=0.01)


def test_top_fraction_random_and_capture():
    m = routing.top_fraction(np.array([0.1, 5.0, 3.0, -1.0]), 0.5)
    assert m.tolist() == [False, True, True, False]
    r = routing.random_route(100, 0.3, seed=1)
    assert r.sum() == 30 and not np.array_equal(r, routing.random_route(100, 0.3, seed=2))
    assert routing.capture_ratio(0.45, 0.4, 0.5) == pytest.approx(0.5)


def test_confidence_escalation_prefers_uncertain_images():
    dets = {1: np.array([[0, 0, 1, 1, 0.95, 0]] * 10), 2: np.array([[0, 0, 1, 1, 0.2, 0]] * 3), 3: np.zeros((0, 6))}
    u = routing.confidence_escalation_score(dets, [1, 2, 3])
    assert u[0] < u[1] < u[2] == 1.0
