"""The benchmark suite (bench/suite.py) runs end to end at the smoke size (figures themselves are not asserted)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from dynamicdet import paths

PARTS = ["routes", "step2", "step1", "controller", "stream", "datagen", "export", "disturbance"]  # suite's order


def _run(script: str, results: str, *args: str, env: dict | None = None) -> dict:
    """Run ``bench/<script>`` (or ``-m studies.<name>``) at the smoke config; the smoke record it merged into
    ``results/<results>.json``."""
    cmd = ["-m", script] if script.startswith("studies.") else [str(paths.REPO_ROOT / "bench" / script)]
    r = subprocess.run(
        [sys.executable, *cmd, "--config", "smoke", *args],
        cwd=paths.REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((paths.results_dir() / f"{results}.json").read_text())["smoke"]


def _bench(*args: str) -> dict:
    return _run("suite.py", "bench", "--fast", *args)


@pytest.mark.slow
def test_bench_smoke_writes_report(smoke_cfg):
    rec = _bench()
    items = {row["item"].split(".")[0] for row in rec["rows"]}
    assert items == {"1", "2", "3", "4", "5", "6", "6b", "7", "8", "8a", "8b", "8c", "9", "10"}
    assert not any("measured" in row for row in rec["rows"])
    assert all(row["mark"] in {"PASS", "MISS", "-"} for row in rec["rows"])
    assert all(isinstance(row["value"], float) and row["value"] > 0 for row in rec["rows"])
    md = (paths.results_dir() / "bench.md").read_text()
    assert "## smoke" in md and md.count("| 2. route()") == 10
    assert rec["env"]["torch"].startswith("2.14.1")
    # every part's wall time, in the suite's order, and no more than the whole run's
    assert list(rec["part_s"]) == PARTS and all(t > 0 for t in rec["part_s"].values())
    assert sum(rec["part_s"].values()) <= rec["wall_s"] + 1
    assert "bench wall time" in md and "(time per part: routes " in md

    # a partial run re-measures its part and keeps the others, marked with the run that measured them
    again = _bench("--parts", "datagen")
    assert [r["item"] for r in again["rows"]] == [r["item"] for r in rec["rows"]]
    for old, new in zip(rec["rows"], again["rows"], strict=True):
        if new["item"].startswith("7."):
            assert "measured" not in new
        else:
            assert new["measured"] == f"{rec['date']}, git {rec['git_sha']}"
            assert new["value"] == old["value"]
    # the kept parts keep their wall times, the re-measured one has this run's
    assert list(again["part_s"]) == PARTS
    assert {p: t for p, t in again["part_s"].items() if p != "datagen"} == {
        p: t for p, t in rec["part_s"].items() if p != "datagen"
    }
    md = (paths.results_dir() / "bench.md").read_text()
    assert "measured in an earlier run" in md
    assert "the last run (datagen) took" in md  # the header names the run its wall time belongs to


@pytest.mark.slow
def test_controller_compare_smoke_runs_every_loop_in_rotated_order(smoke_cfg):
    rec = _run("controller_compare.py", "controller_compare", "--reps", "2", "--passes", "1")
    runs = rec["runs"]
    # a repetition whose calibration stays inverted (timing noise) is skipped, never an error
    assert len(runs) in (0, 9, 18)
    for rep in {x["rep"] for x in runs}:
        mine = [x for x in runs if x["rep"] == rep]
        assert {(x["loop"], x["phase"]) for x in mine} == {
            (loop, phase) for loop in ("open loop", "integral", "model") for phase in ("quiet", "loaded", "quiet again")
        }
        first = {x["loop"] for x in mine if x["position"] == 1}
        assert first == {("open loop", "integral", "model")[rep]}  # rotated: repetition i starts with loop i
    assert all(0.0 <= x["fraction hard"] <= 1.0 and x["achieved / target"] > 0 for x in runs)
    assert "## smoke" in (paths.results_dir() / "controller_compare.md").read_text()


@pytest.mark.slow
def test_segment_compare_smoke_runs_both_estimators_in_alternating_order(smoke_cfg):
    rec = _run("segment_compare.py", "segment_compare", "--reps", "2")
    runs = rec["runs"]
    names = ("whole passes", "segments of 6")
    for rep in (0, 1):
        first = {x["estimator"] for x in runs if x["rep"] == rep and x["position"] == 1}
        assert first == {names[rep]}  # alternating: repetition 1 starts with the other estimator
        assert sorted((x["estimator"], x["k"]) for x in runs if x["rep"] == rep) == sorted(
            (n, k) for n in names for k in (0.1, 0.5, 0.9)
        )
    # one ratio per timing round with whole passes, one per segment of 6 images of each timing round with
    # segments (0: a round skipped as noisy, which a busy machine may cause)
    rounds, segments = max(3, smoke_cfg.eval.latency_repeats // 4), -(-rec["settings"]["images"] // 6)
    for x in runs:
        assert x["ratios"] in (0, rounds if x["estimator"] == "whole passes" else rounds * segments)
    assert {s["estimator"] for s in rec["summary"]} == set(names)
    assert "## smoke" in (paths.results_dir() / "segment_compare.md").read_text()


@pytest.mark.slow
def test_reproducibility_smoke_compares_every_setup_with_the_reference(smoke_cfg, tmp_path):
    rec = _run("studies.reproducibility", "reproducibility", "--epochs", "1", env={"TMPDIR": str(tmp_path)})
    assert not any(tmp_path.glob("dynamicdet-repro-*"))  # the setups' run folders are removed
    rows = {r["setup"]: r for r in rec["rows"]}
    assert set(rows) == {
        "reference",
        "reference again",
        "1 thread",
        "2 workers",  # smoke uses the main process: the other setup is 2 workers
        "under load",
        "two at once (a)",
        "two at once (b)",
    }
    ref = rows["reference"]
    assert (
        ref["max |w - w_ref|"] == 0 and ref["identical tensors"].split("/")[0] == ref["identical tensors"].split("/")[1]
    )
    assert rows["1 thread"]["torch threads"] == 1 and rows["2 workers"]["workers"] == 2
    assert rows["two at once (a)"]["torch threads"] == 1
    # the same setup twice: bit-identical weights (the property tests/test_train.py asserts)
    assert rows["reference again"]["max |w - w_ref|"] == 0
    assert "## smoke, 1 epochs" in (paths.results_dir() / "reproducibility.md").read_text()


@pytest.mark.slow
def test_step1_speed_smoke_times_batches_and_whole_epochs():
    script = ["-m", "studies.step1_speed"]
    out = paths.results_dir("smoke_tuning")
    for mode in ([], ["--epoch"]):
        setups = ["2 threads, 0 workers", "1 thread, 2 workers"]
        r = subprocess.run(
            [sys.executable, *script, "--config", "smoke", "--iters", "2", "--rounds", "1", "--setups", *setups, *mode],
            cwd=paths.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        name = "step1_speed_epoch" if mode else "step1_speed"
        df = pd.read_csv(out / f"{name}.csv")
        assert list(df["setup"]) == setups and (df["img/s (best of rounds)"] > 0).all()
        assert df["vs the first setup"].iloc[0] == 1.0
        assert "'2 threads, 0 workers'" in (out / f"{name}.md").read_text()  # the command, quoted as typed
    bad = subprocess.run(
        [sys.executable, *script, "--setups", "3 threads"], cwd=paths.REPO_ROOT, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "unknown ['3 threads']" in bad.stderr


def _main_job_module():
    import studies.main_job

    return studies.main_job


def test_main_job_goals_mark_each_quick_run_and_leave_untimed_installs_open():
    mj = _main_job_module()
    good = {
        "date": "d1",
        "git sha": "abcdef123456",
        "config": "quick",
        "install min": 2.0,
        "total min": 19.5,
        "AP det1": 0.31,
        "AP det2 - det1": 0.04,
        "c(0.5) learned": 0.7,
        "c(0.5) random": 0.5,
        "c(0.5) confidence escalation": 0.6,
        "spearman gain~difficulty": 0.2,
        "latency consistent": True,
    }
    bad = {**good, "date": "d2", "install min": float("nan"), "AP det1": 0.25, "c(0.5) learned": 0.55}
    other = {**good, "config": "smoke"}  # the goals are the quick config's
    table = mj.goals_table(pd.DataFrame([good, bad, other])).set_index("goal")
    assert list(table.columns) == ["row 1: d1, abcdef1", "row 2: d2, abcdef1"]
    assert (table.iloc[:, 0] == "PASS").all()
    second = table.iloc[:, 1]
    assert second["wall time <= 20 min"] == "n/a"  # a reused install: the wall time is not the main job's
    assert second["AP det1 >= 0.30"] == "MISS" and second["c(0.5) learned >= random + 0.15"] == "MISS"
    assert second["c(0.5) learned >= confidence escalation"] == "MISS" and second["AP det2 - det1 >= 0.03"] == "PASS"


def test_main_job_record_appends_each_run_to_csv_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    mj = _main_job_module()
    row = {"date": "d", "git sha": "0123456789ab", "config": "quick", "args": "", "install min": 2.0}
    row |= {"pipeline min": 18.0, "total min": 20.0, "AP det1": 0.3, "AP det2": 0.33, "AP det2 - det1": 0.03}
    row |= {"c(0.5) learned": 0.7, "c(0.5) random": 0.5, "c(0.5) confidence escalation": 0.6}
    row |= {"spearman gain~difficulty": 0.1, "latency consistent": True}
    claims = {
        "d1": [],  # a run recorded before the scorecard was kept
        "d2": [
            {
                "claim": "the router beats random routing at /50",
                "this run": 0.6,
                "margin": 0.12,
                "verdict": "reproduced",
            }
        ],
    }
    for date in ("d1", "d2"):
        detail = {"date": date, "git sha": "0123456789ab", "stage_wall_s": {"data": 1.0}, "claims": claims[date]}
        df = mj.record({"row": {**row, "date": date}, "detail": detail})
    assert list(df["date"]) == ["d1", "d2"] and list(df["git sha"]) == ["0123456789ab"] * 2  # sha kept as text
    assert [r["date"] for r in json.loads((tmp_path / "main_job.json").read_text())] == ["d1", "d2"]
    md = (tmp_path / "main_job.md").read_text()
    assert "row 1: d1, 0123456" in md and "row 2: d2, 0123456" in md and "| wall time <= 20 min" in md
    scorecard = md.split("## The claims scorecard of each run")[1]
    line = next(x for x in scorecard.splitlines() if x.startswith("| the router beats random"))
    assert [c.strip() for c in line.strip("|").split("|")] == [
        "the router beats random routing at /50",
        "reproduced (+0.120)",
    ]


@pytest.mark.slow
def test_main_job_smoke_runs_make_reproduce_in_a_fresh_clone(tmp_path):
    args = "--no-two-stage --notebooks 02_joint_training,05_variable_speed"
    cmd = [sys.executable, "-m", "studies.main_job", "--config", "smoke"]
    cmd += ["--venv", sys.prefix, f"--args={args}"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    r = subprocess.run(cmd, cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(tmp_path.glob("dynamicdet-main-job-*"))  # the clone is removed
    df = pd.read_csv(paths.results_dir() / "main_job.csv")
    assert list(df["config"]) == ["smoke"] and (df["args"] == args).all()
    assert df["install min"].isna().all() and (df["pipeline min"] > 0).all()
    assert df["AP det1"].between(0, 1).all() and df["AP det2"].between(0, 1).all()
    (run,) = json.loads((paths.results_dir() / "main_job.json").read_text())
    assert "train (step 1 + step 2)" in run["stage_wall_s"] and "02_joint_training.ipynb" in run["notebook_wall_s"]
    assert run["claims"] and {c["claim"] for c in run["claims"]} >= {"detector 2 beats detector 1"}
    assert "## The claims scorecard of each run" in (paths.results_dir() / "main_job.md").read_text()
