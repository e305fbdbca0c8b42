"""The latency harness: alternation, statistics, and the inverted-range guard."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dynamicdet.evaluation import speed
from dynamicdet.modeling.yolo import DynamicDetector


def test_time_interleaved_calls_in_alternation_and_reports_stats():
    calls = []
    res = speed.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu", warmup=1, repeats=4
    )
    # warm-up: a, b; then 4 rounds, every other one in reverse order (a drift within a round
    # charges both positions alike)
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 2
    for k in ("a", "b"):
        r = res[k]
        assert r["repeats"] == 4 and len(r["times_ms"]) == 4  # each round's time, in round order
        assert 0 <= r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["median_ms"] == pytest.approx(float(np.median(r["times_ms"]))) and r["min_ms"] == min(r["times_ms"])


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # rounds at different machine speeds, and one round in which only the numerator was slowed (a burst)
    num, den = [10.0, 20.0, 30.0, 12.0], [10.0, 20.0, 30.0, 6.0]
    r = speed.paired_ratio(num, den)
    assert r == {"ratio": 1.0, "lo": 1.0, "hi": 2.0, "rounds": 4}
    assert np.median(num) / np.median(den) > 1.05  # what a ratio of medians would have said
    with pytest.raises(ValueError, match="same rounds"):
        speed.paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same rounds"):
        speed.paired_ratio([], [])


def test_segment_times_interleave_the_models_segment_by_segment(monkeypatch):
    calls = []
    batches = [torch.full((1,), float(i)) for i in range(5)]
    fns = {"a": lambda x: calls.append(("a", int(x))), "b": lambda x: calls.append(("b", int(x)))}
    t = speed.segment_times(fns, batches, "cpu", segment=2, warmup=0, repeats=2)
    assert set(t) == {"a", "b"} and all(v.shape == (2, 3) for v in t.values())  # (rounds, segments)
    # round 0: a then b on batches 0-1, on 2-3, on 4; round 1: the same sequence reversed
    seq = [("a", 0, 1), ("b", 0, 1), ("a", 2, 3), ("b", 2, 3), ("a", 4), ("b", 4)]
    expand = [(name, i) for name, *idx in seq for i in idx]
    expand_rev = [(name, i) for name, *idx in seq[::-1] for i in idx]
    assert calls == expand + expand_rev
    # without segments: one segment, the whole stream per call
    assert speed.segment_times(fns, batches, "cpu", warmup=0, repeats=2)["a"].shape == (2, 1)
    with pytest.raises(ValueError, match="segment"):
        speed.segment_times(fns, batches, "cpu", segment=0)
    with pytest.raises(ValueError, match="no image"):
        speed.segment_times(fns, [], "cpu")

    # stream_times: a round's pass = the sum of its segments, per image
    def fake(fns, device, warmup, repeats):
        return {key: speed._stats([(key[0] + 1) * (10.0 if key[1] == "b" else 1.0)] * repeats) for key in fns}

    monkeypatch.setattr(speed, "time_interleaved", fake)
    seg = speed.segment_times(fns, batches, "cpu", segment=2, repeats=4)
    assert np.allclose(seg["a"], [[1.0, 2.0, 3.0]] * 4) and np.allclose(seg["b"], [[10.0, 20.0, 30.0]] * 4)
    st = speed.stream_times(fns, batches, "cpu", repeats=4, segment=2)
    assert np.allclose(st["a"], 6.0 / 5) and np.allclose(st["b"], 60.0 / 5)


def _fake_times(easy, hard):
    def fake(fns, device, warmup, repeats):  # keys (segment, name) of speed.segment_times
        ms = {"easy": easy, "hard": hard(repeats)}
        return {key: speed._stats([ms.get(key[1], 1.0)] * repeats) for key in fns}

    return fake


def test_route_latencies_remeasure_then_warn_on_inverted_range(monkeypatch):
    model = DynamicDetector("yolov8", "n", nc=2)
    seen = []

    def hard(repeats):
        seen.append(repeats)
        return 5.0  # always faster than easy: noise that never goes away

    monkeypatch.setattr(speed, "time_interleaved", _fake_times(10.0, hard))
    with pytest.warns(UserWarning, match=r"hard route measured no slower.*5\.000 vs 10\.000 ms"):
        r = speed.route_latencies(model, 32, batch=1, warmup=0, repeats=3, retries=2)
    assert seen == [3, 6, 12]  # doubled repeats on each retry
    assert r["noisy"] and r["hard"] == 5.0  # recorded, not raised


def test_route_latencies_accept_a_retry_that_restores_the_order(monkeypatch):
    model = DynamicDetector("yolov8", "n", nc=2)
    monkeypatch.setattr(speed, "time_interleaved", _fake_times(10.0, lambda r: 20.0 if r > 3 else 5.0))
    r = speed.route_latencies(model, 32, batch=1, warmup=0, repeats=3)
    assert r["easy"] == 10.0 and r["hard"] == 20.0 and not r["noisy"]


@pytest.mark.slow
def test_real_route_latencies_run_on_a_small_model():
    # real timings: their order is not asserted (a busy machine may invert it); the harness must time all four
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an inverted (noisy) range is possible under load, and allowed
        r = speed.route_latencies(DynamicDetector("yolov8", "n", nc=2), 64, batch=1, warmup=1, repeats=5, retries=0)
    assert {"easy", "hard", "score", "router"} <= set(r) and all(r[k] > 0 for k in ("easy", "hard", "score", "router"))


# time_latency_table on fabricated timings: every pass is a fake that returns fixed ms per image
K = {"Dy /0": 0.0, "Dy /50": 0.5, "Dy /100": 1.0}
ROWS = [*K, "B1 + router", "yolov8n (static)"]


def _passes(timings: dict[str, list[dict[str, float]]], calls: list[str]) -> dict:
    """cost column -> a pass that pops that column's next timing (one per attempt) and logs the call."""

    def timed(col: str) -> dict[str, float]:
        calls.append(col)
        return timings[col].pop(0)

    return {col: (lambda col=col: timed(col)) for col in timings}


def _ms(t0: float = 20.4, t1: float = 30.0, static: float = 20.0, scale: float = 1.0) -> dict[str, float]:
    """A consistent timing: Dy /k on the linear mix (1 - k) t0 + k t1, the static model of Dy /0's network."""
    ms = {n: scale * ((1 - k) * t0 + k * t1) for n, k in K.items()}
    return {**ms, "B1 + router": 18.0 * scale, "yolov8n (static)": static * scale}


def test_time_latency_table_times_every_measure_and_keeps_a_consistent_timing():
    calls = []
    timings = {"latency_ms_b1": [_ms()], "latency_ms_b8": [_ms(scale=0.5)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a consistent table: no warning
        timed = speed.time_latency_table(
            passes=_passes(timings, calls), rows=ROWS, k_timed=K, same_static="yolov8n (static)", tries=3
        )
    assert calls == ["latency_ms_b1", "latency_ms_b8"]  # one attempt: every measure once, in order
    assert list(timed.table.columns) == ["model", "latency_ms_b1", "latency_ms_b8", "consistent"]
    assert list(timed.table["model"]) == ROWS and timed.table["consistent"].all() and not timed.inconsistent
    assert timed.table.set_index("model").loc["Dy /50", "latency_ms_b8"] == pytest.approx(12.6)
    # per batch: 1 same-network + 2 non-decreasing + 1 linear-mix check, all passed
    assert len(timed.checks) == 2 * 4 and timed.checks["passed"].all()


def test_time_latency_table_retimes_until_consistent():
    calls = []
    timings = {"latency_ms_b1": [_ms(t0=14.6), _ms()]}  # try 1: Dy /0 at 0.73x its own network
    timed = speed.time_latency_table(
        passes=_passes(timings, calls), rows=ROWS, k_timed=K, same_static="yolov8n (static)", tries=3
    )
    assert calls == ["latency_ms_b1"] * 2 and not timings["latency_ms_b1"]
    assert timed.table["consistent"].all() and timed.checks["passed"].all()


def test_time_latency_table_warns_and_marks_the_compared_rows_when_it_stays_inconsistent():
    bad = _ms()
    bad["Dy /50"] *= 1.10  # 10% above the linear mix
    timings = {"latency_ms_b1": [dict(bad), dict(bad)]}
    with pytest.warns(UserWarning, match=r"my table: latency checks failed after 2 timing\(s\)"):
        timed = speed.time_latency_table(
            passes=_passes(timings, []),
            rows=ROWS,
            k_timed=K,
            same_static="yolov8n (static)",
            tries=2,
            label="my table",
        )
    consistent = timed.table.set_index("model")["consistent"]
    # the failed row and those it was compared with: /0, /100 and the same-network static model
    assert timed.inconsistent == {"Dy /0", "Dy /50", "Dy /100", "yolov8n (static)"}
    assert not consistent[list(timed.inconsistent)].any() and consistent["B1 + router"]
    failed = timed.checks[~timed.checks["passed"]]
    assert list(failed["check"]) == ["linear mix"] and list(failed["model"]) == ["Dy /50"]


def test_time_latency_table_records_a_same_network_check_that_does_not_decide():
    calls = []
    timings = {"latency_ms_b1": [_ms(t0=14.6), _ms()]}
    timed = speed.time_latency_table(
        passes=_passes(timings, calls),
        rows=ROWS,
        k_timed=K,
        same_static="yolov8n (static)",
        same_network_decides=False,  # e.g. two exported graphs against one: recorded, not decided
    )
    same = timed.checks[timed.checks["check"] == "same network"]
    assert calls == ["latency_ms_b1"]  # no retry: the failed check does not decide
    assert not same["passed"].item() and not same["decides"].item() and timed.table["consistent"].all()


def test_time_latency_table_times_at_least_once():
    calls = []
    timings = {"latency_ms_b1": [_ms(t0=14.6)]}
    with pytest.warns(UserWarning, match="after 0 timing"):
        timed = speed.time_latency_table(
            passes=_passes(timings, calls), rows=ROWS, k_timed=K, same_static="yolov8n (static)", tries=0
        )
    assert calls == ["latency_ms_b1"] and not timed.table["consistent"].all()


def test_precise_timing_adds_rounds_until_each_time_relative_to_its_round_is_within_the_tolerance(monkeypatch):
    """eval.latency_tolerance: rounds are added until each model's time relative to the other models of its
    rounds is known to +-tol (95%); a swing of the machine's speed, alike for every model of a round, needs
    no more rounds; both intervals (absolute and relative to the round) are returned."""
    import types

    import numpy as np

    from dynamicdet.config import load_config
    from dynamicdet.experiments import variable_speed as vs

    rng = np.random.default_rng(0)
    calls = []
    own_noise = {"a": 0.10, "b": 0.0}  # "a" has a noise of its own (sd 10%); "b" only the machine's

    def fake_stream_times(fns, batches, device, warmup=1, repeats=3, segment=None):
        calls.append(repeats)
        speed = rng.lognormal(0, 0.2, repeats)  # the machine's speed, shared by every model of a round
        return {m: base * speed * (1 + rng.normal(0, own_noise[m], repeats)) for m, base in (("a", 10), ("b", 5))}

    monkeypatch.setattr(vs, "stream_times", fake_stream_times)
    cfg = load_config("smoke", {"eval": {"latency_tolerance": 0.02, "latency_repeats": 20}})
    t = types.SimpleNamespace(cfg=cfg, device="cpu", timing_model=None)
    fns = {"a": lambda x: x, "b": lambda x: x}
    precision = {}
    ms = vs.stream_latency(t, fns, [torch.zeros(1, 3, 8, 8)] * 2, precision=precision)
    assert len(calls) > 1  # 5 rounds cannot pin a 10% noise of its own to +-2%
    assert max(precision["ci95_paired"].values()) <= 0.02
    assert min(precision["ci95_rel"].values()) > 0.02  # the machine's swings stay in the absolute interval
    assert sum(calls) <= vs.MAX_ROUNDS + 5 and ms["a"] / ms["b"] == pytest.approx(2, rel=0.05)
    assert vs.relative_half_width(np.array([9.0, 11.0])) == pytest.approx(
        12.706 * np.std([9, 11], ddof=1) / 2**0.5 / 10, rel=1e-3
    )
    # the machine's swings alone: the first call's rounds are enough
    own_noise.update(a=0.0)
    calls.clear()
    vs.stream_latency(t, fns, [torch.zeros(1, 3, 8, 8)] * 2, precision=precision)
    assert len(calls) == 1 and max(precision["ci95_paired"].values()) < 1e-9
    # a noise that MAX_ROUNDS cannot pin to the tolerance: timing stops there and says so
    own_noise.update(a=0.10)
    monkeypatch.setattr(vs, "MAX_ROUNDS", 10)
    loose = {}
    with pytest.warns(UserWarning, match=r"timing stopped at 10 rounds above \+-2% \(95%, relative to the round\)"):
        vs.stream_latency(t, fns, [torch.zeros(1, 3, 8, 8)] * 2, precision=loose)
    assert loose["ci95_paired"]["a"] > 0.02  # the loose figure's interval is kept, not dropped


def test_the_interval_relative_to_the_round_cancels_the_machines_speed():
    """paired_half_widths: times scaled alike in each round have no relative spread; one model's own noise
    shows in every model's relative figure, most in its own."""
    import numpy as np

    from dynamicdet.evaluation.speed import paired_half_widths, relative_half_width

    speed = np.array([1.0, 1.3, 0.8, 1.1, 0.9])
    same = {"a": 10 * speed, "b": 5 * speed, "c": 7 * speed}
    assert max(paired_half_widths(same).values()) < 1e-12 and relative_half_width(same["a"]) > 0.1
    own = dict(same, a=10 * speed * np.array([1.0, 1.1, 0.9, 1.05, 0.95]))
    half = paired_half_widths(own)
    assert half["a"] > half["b"] > 0 and half["b"] == pytest.approx(half["c"])


def test_a_kept_timing_carries_its_own_intervals():
    """Precise timing: each figure's 95% interval stays with the attempt the table keeps (the one with the most
    passed checks, not necessarily the last)."""
    import warnings

    from dynamicdet.evaluation.speed import time_latency_table

    names = ("Dy /0", "Dy /50", "Dy /100")
    attempts = iter(
        [
            ({"Dy /0": 10.0, "Dy /50": 17.0, "Dy /100": 20.0}, {"ci95_rel": dict.fromkeys(names, 0.01)}),
            ({"Dy /0": 10.0, "Dy /50": 40.0, "Dy /100": 20.0}, {"ci95_rel": dict.fromkeys(names, 0.5)}),
        ]
    )  # the first breaks the linear mix only; the second also the monotone order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the kept table still fails a check: said in a warning
        timed = time_latency_table(
            passes={"latency_ms_b1": lambda: next(attempts)},
            rows=["Dy /0", "Dy /50", "Dy /100"],
            k_timed={"Dy /0": 0.0, "Dy /50": 0.5, "Dy /100": 1.0},
            same_static=None,
            tries=2,
        )
    assert timed.table["latency_ms_b1"].tolist() == [10.0, 17.0, 20.0]  # the first attempt is kept
    assert timed.table["ci95_rel_b1"].tolist() == [0.01, 0.01, 0.01]  # with its own intervals
