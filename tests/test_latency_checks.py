"""The latency table's consistency checks, on fabricated timings (no timing in a test)."""

import numpy as np
import pandas as pd
import pytest

from dynamicdet.metrics import latency_checks

K = {"Dy /0": 0.0, "Dy /10": 0.1, "Dy /50": 0.5, "Dy /90": 0.9, "Dy /100": 1.0}


def table(b1: dict[str, float], static: float = 20.0) -> pd.DataFrame:
    names = [*K, "yolov8n (static)"]
    ms = [b1[n] for n in K] + [static]
    return pd.DataFrame({"model": names, "latency_ms_b1": ms, "latency_ms_b8": [m / 2 for m in ms]})


def linear(t0: float = 20.4, t1: float = 30.0) -> dict[str, float]:
    return {n: (1 - k) * t0 + k * t1 for n, k in K.items()}


def failed(checks: pd.DataFrame) -> set[tuple[str, str, str]]:
    return {(r.batch, r.check, r.model) for r in checks.itertuples() if not r.passed}


def test_a_consistent_table_passes_every_check():
    checks = latency_checks(table(linear()), K, "yolov8n (static)")
    # per batch: 1 same-network + 4 non-decreasing + 3 linear-mix checks
    assert len(checks) == 2 * 8
    assert checks["passed"].all()
    same = checks[(checks["check"] == "same network") & (checks["batch"] == "b1")]["value"].item()
    assert same == pytest.approx(20.4 / 20.0)


def test_dy0_faster_than_its_own_network_fails():
    # the quick run's table: Dy /0 at 0.73x the identical static yolov8n
    checks = latency_checks(table(linear(t0=14.6)), K, "yolov8n (static)")
    assert ("b1", "same network", "Dy /0") in failed(checks)
    assert ("b8", "same network", "Dy /0") in failed(checks)


def test_a_dip_fails_monotonicity_and_the_linear_mix():
    t = linear()
    t["Dy /10"] = 0.9 * t["Dy /0"]  # /10 below /0 (seen: 16.7 -> 15.1 ms)
    bad = failed(latency_checks(table(t), K, "yolov8n (static)"))
    assert ("b1", "non-decreasing", "Dy /10") in bad
    assert ("b1", "linear mix", "Dy /10") in bad
    assert ("b1", "non-decreasing", "Dy /50") not in bad


def test_bounds_are_inclusive_tolerances():
    t = linear()
    t["Dy /50"] *= 1.049  # inside 5%
    assert latency_checks(table(t), K, None)["passed"].all()
    t["Dy /50"] *= 1.01 / 1.049 * 1.05  # about 6% above the mix
    assert ("b1", "linear mix", "Dy /50") in failed(latency_checks(table(t), K, None))


def test_without_a_same_architecture_static_model_that_check_is_skipped():
    checks = latency_checks(table(linear(t0=14.6)), K, None)
    assert "same network" not in set(checks["check"])
    assert checks["passed"].all()


def test_the_dy_rows_need_both_ends():
    with pytest.raises(ValueError, match="k = 0 and k = 1"):
        latency_checks(table(linear()), {"Dy /10": 0.1, "Dy /50": 0.5}, None)


def test_nan_timings_fail_rather_than_pass():
    t = linear()
    t["Dy /50"] = np.nan
    bad = failed(latency_checks(table(t), K, None))
    assert ("b1", "linear mix", "Dy /50") in bad


def test_latency_table_is_retimed_then_written_with_a_consistent_column(monkeypatch, tmp_path):
    """latency_table on fabricated timings: a failed check is timed again; a table that stays bad says so."""
    from types import SimpleNamespace

    from dynamicdet.config import load_config
    from dynamicdet.experiments import variable_speed as vs

    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path))
    cfg = load_config("smoke")
    cfg.eval.static_scales = ["n"]
    taus = {"Dy /0": np.inf, "Dy /10": 0.9, "Dy /50": 0.5, "Dy /90": 0.1, "Dy /100": -np.inf}
    z = np.linspace(0.005, 0.995, 100)  # logits: a fraction 1 - tau of them at or above tau
    res = SimpleNamespace(table=pd.DataFrame({"model": list(taus), "tau": list(taus.values())}))  # a Tradeoff's table
    static = pd.DataFrame({"model": ["yolov8n (static)"]})
    t = SimpleNamespace(cfg=cfg, device="cpu", timing_model=SimpleNamespace(score=None))
    monkeypatch.setattr(vs, "timing_stream", lambda t: ([None] * 100, z))
    monkeypatch.setattr(vs, "load_static", lambda cfg, scale: None)
    monkeypatch.setattr(vs, "prepare_for_timing", lambda model, device: None)
    timings = []  # Dy /0's figure at each timing pass (one per batch size)

    def fake(t, fns, images, batch, segment, precision=None):
        assert segment == max(1, vs.TIMING_SEGMENT_IMAGES // batch)
        k = {n: float((z >= taus[n]).mean()) for n in taus}
        ms = {n: (1 - k[n]) * 20.4 + k[n] * 30.0 for n in taus}
        ms["Dy /0"] = timings.pop(0)
        return {**ms, "B1 + router": 18.0, "yolov8n (static)": 20.0}

    monkeypatch.setattr(vs, "stream_latency", fake)
    timings[:] = [14.6, 14.6, 20.4, 20.4]  # try 1 (batch 1 and eval.batch): Dy /0 at 0.73x its own network
    df = vs.latency_table(t, res, static, progress=False, tries=3)
    assert not timings and df["consistent"].all()
    assert df.set_index("model").loc["Dy /50", "k_timed"] == pytest.approx(0.5, abs=0.01)
    checks = pd.read_csv(vs.LATENCY.path(cfg).with_name(vs.LATENCY.path(cfg).stem + "_checks.csv"))
    assert checks["passed"].all()

    vs.LATENCY.path(cfg).unlink()
    timings[:] = [14.6, 14.6]  # one try, still bad: written, flagged, warned
    with pytest.warns(UserWarning, match="checks failed after 1"):
        df = vs.latency_table(t, res, static, progress=False, tries=1)
    flagged = df.set_index("model")["consistent"]
    assert not flagged["Dy /0"] and not flagged["yolov8n (static)"] and flagged["B1 + router"]
    assert vs.LATENCY.path(cfg).exists()


def test_split_batches_cost_more_than_the_mix_without_making_the_table_inconsistent():
    # batch 8 (quick run): /50 at 1.25x the linear mix, /100 under /90: route() splits mixed batches
    lat = table(linear())
    b8 = lat.set_index("model")["latency_ms_b8"]
    b8["Dy /50"] *= 1.25
    b8["Dy /90"] = 1.05 * b8["Dy /100"]
    lat["latency_ms_b8"] = b8.to_numpy()
    checks = latency_checks(lat, K, "yolov8n (static)")
    assert ("b8", "linear mix", "Dy /50") in failed(checks) and ("b8", "non-decreasing", "Dy /100") in failed(checks)
    assert not checks.loc[~checks["passed"], "decides"].any()  # measured, recorded, not deciding
    assert checks.loc[checks["batch"] == "b1", "decides"].all()
    assert checks.loc[(checks["batch"] == "b8") & (checks["check"] == "same network"), "decides"].all()


def test_time_until_consistent_keeps_the_best_attempt_and_marks_the_compared_rows():
    from dynamicdet.evaluation.speed import time_until_consistent

    def check(t: pd.DataFrame) -> pd.DataFrame:
        return latency_checks(t, K, "yolov8n (static)")

    bad_mix, dip = linear(), linear()
    bad_mix["Dy /50"] *= 1.10  # one failed check (the mix)
    dip["Dy /10"] = 0.9 * dip["Dy /0"]  # two failed checks per batch (monotone and mix)
    attempts = [table(dip), table(bad_mix), table(dip)]
    calls = []

    def time_once(attempt: int) -> pd.DataFrame:
        calls.append(attempt)
        return attempts[attempt]

    df, checks, failed_rows = time_until_consistent(time_once, check, K, "yolov8n (static)", tries=3)
    assert calls == [0, 1, 2]
    assert df is attempts[1]  # the fewest failed checks
    assert failed_rows == {"Dy /50", "Dy /0", "Dy /100", "yolov8n (static)"}

    calls.clear()
    attempts[1] = table(linear())
    df, _, failed_rows = time_until_consistent(time_once, check, K, "yolov8n (static)", tries=3)
    assert calls == [0, 1] and df is attempts[1] and failed_rows == set()  # stops at the first clean timing

    calls.clear()
    df, _, failed_rows = time_until_consistent(time_once, check, K, "yolov8n (static)", tries=0)
    assert calls == [0] and failed_rows  # at least one timing, whose failure is reported
