"""Seeds as a dimension (experiments.seeds): two smoke seeds trained, tabled and scored with intervals."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dynamicdet.config import load_config
from dynamicdet.engine.runs import STEP1


def test_a_seed_changes_train_seed_only():
    from dynamicdet.experiments.seeds import seed_config

    base, one = load_config("smoke").to_dict(), seed_config("smoke", 1).to_dict()
    assert one["train"]["seed"] == 1
    one["train"]["seed"] = base["train"]["seed"]
    assert one == base  # same data (data.seed), model, recipe
    assert seed_config("smoke", 0).to_dict() == base  # seed 0 is the config's own run (shares its cache)


@pytest.mark.slow
def test_two_seeds_train_table_and_score_with_intervals(smoke_cfg, tmp_path):
    from dynamicdet.engine.jobs import work
    from dynamicdet.experiments.seeds import campaign, seed_config, seed_folder, seed_tables, write_seed_results
    from dynamicdet.experiments.seeds.tables import anchor_far_end

    jobs = campaign("smoke", [0, 1], few=1, longer=False, two_stage=False)
    names = [j.name for j in jobs]
    # seed 0 (one of the first `few`): both routers, the static scales and ultralytics' yolov8n; seed 1: no far end
    assert names == [
        "seed0-joint",
        "seed0-paper-router",
        "seed0-static-n",
        "seed0-ultralytics-n",
        "seed1-joint",
        "seed1-paper-router",
    ]
    work(jobs, tmp_path / "locks", poll_s=0, log=lambda m: None)
    assert all(j.done() for j in jobs)
    for seed in (0, 1):
        seed_tables("smoke", seed, out=tmp_path, timing_seed=0)
    assert anchor_far_end("smoke", [0, 1], tmp_path) == []  # smoke's one static scale is no frontier to anchor
    w0, w1 = (torch.load(STEP1.path(seed_config("smoke", s)) / "step1.pt", weights_only=False) for s in (0, 1))
    key = next(k for k in w0["model"] if k.endswith("weight"))
    assert not torch.equal(w0["model"][key], w1["model"][key])  # another seed, other weights
    df = write_seed_results("smoke", (0, 1), out=tmp_path)
    two_stage = df["claim"].str.startswith("two-stage")
    assert (df.loc[~two_stage, "runs"] == 2).all() and (df.loc[two_stage, "runs"] == 1).all()  # trained once
    testable = df[df["verdict"] != "not testable"]
    assert not testable.empty and testable["ci95 lo"].notna().all()
    assert set(testable["verdict"]) == {"two runs"}  # a verdict needs three runs: two carry their margins only
    # the paper's router is scored beside the default, and the static model at Dy /100's cost is absent at smoke
    assert df["claim"].str.contains("paper's router").any()
    table = pd.read_csv(tmp_path / "seeds.csv")
    # per seed: the five Dy rows, and the static model on seed 0 only (smoke's one scale is the far end)
    assert table.groupby("seed")["model"].count().to_dict() == {0: 6, 1: 5}
    # latency depends on the network, not the seed: timed once (on seed 0), every seed carries the same times
    for col in ("latency_ms_b1", "latency_ms_b4", "latency_ms_onnx_b1"):
        times = table.pivot_table(index="model", columns="seed", values=col).dropna()
        assert len(times) == 5 and np.array_equal(times[0], times[1]), col
    assert "k_measured" in table  # the fraction each /k achieved, beside k
    assert {"GFLOPs", "latency_ms_b1", "latency_ms_b4", "latency_ms_onnx_b1", "AP"} <= set(table.columns)
    summary = pd.read_csv(tmp_path / "seeds_summary.csv", dtype={"seed": str})
    assert list(summary["seed"]) == ["0", "1", "mean", "std", "ci95 lo", "ci95 hi"]
    lead = summary.set_index("seed")["AP det2 - det1"].astype(float)
    assert lead["mean"] == pytest.approx((lead["0"] + lead["1"]) / 2)
    # the seed's step-1 setup (threads, workers...) as its run folder recorded it
    setup = pd.read_csv(seed_folder("smoke", 1, tmp_path) / "step1_setup.csv")
    recorded = json.loads((STEP1.path(seed_config("smoke", 1)) / "step1_setup.json").read_text())
    assert int(setup["torch_threads"].iloc[0]) == recorded["torch_threads"] >= 1
    frontier = pd.read_csv(tmp_path / "seeds_frontier.csv")
    assert {"GFLOPs", "CPU latency, batch 1 (torch)"} <= set(frontier["cost"]) and "gap seed 1" in frontier
    record = json.loads((tmp_path / "seeds_provenance.json").read_text())
    assert record["seeds"] == [0, 1] and record["git_sha"]


def _variable_speed(folder, dy50_ap, statics=2, consistent=True):
    folder.mkdir(parents=True, exist_ok=True)
    models = ["Dy /0", "Dy /50", "Dy /100", "yolov8n (static)", "yolov8s (static)"][: 3 + statics]
    pd.DataFrame(
        {
            "model": models,
            "GFLOPs": [1.0, 1.5, 2.0, 1.0, 3.0][: 3 + statics],
            "latency_ms_b1": [10.0, 25.0, 28.0, 10.0, 30.0][: 3 + statics],
            "AP": [0.50, dy50_ap, 0.60, 0.50, 0.70][: 3 + statics],
            "consistent": [True, consistent, True, True, True][: 3 + statics],
        }
    ).to_csv(folder / "variable_speed.csv", index=False)


def test_seeds_frontier_gives_each_gap_an_interval_and_its_verdict(tmp_path):
    from dynamicdet.experiments.seeds import seed_folder, seeds_frontier

    # static lines: AP 0.50 at cost 1 (10 ms), 0.70 at cost 3 (30 ms) -> 0.55 at GFLOPs 1.5, 0.65 at 25 ms
    for seed, ap in zip((0, 1, 2), (0.57, 0.58, 0.59), strict=True):
        _variable_speed(seed_folder("standard", seed, tmp_path), ap, consistent=seed != 2)
    df = seeds_frontier("standard", (0, 1, 2), tmp_path).set_index(["cost", "model"])
    assert set(df.index.get_level_values("cost")) == {"GFLOPs", "CPU latency, batch 1 (torch)"}  # columns present
    flops = df.loc[("GFLOPs", "Dy /50")]
    assert [flops[f"gap seed {s}"] for s in (0, 1, 2)] == pytest.approx([0.02, 0.03, 0.04])
    assert flops["mean"] == pytest.approx(0.03) and flops["ci95 lo"] > 0
    # in log cost the frontier at 1.5 GFLOPs is 0.5 + 0.2 ln 1.5 / ln 3 = 0.574: gaps -0.004 ... +0.016, across 0
    assert flops["mean (log cost)"] == pytest.approx(0.58 - (0.5 + 0.2 * np.log(1.5) / np.log(3)))
    assert flops["verdict"] == "not decided: linear in cost reproduced, in log cost not decided"
    assert flops["checks passed"]  # GFLOPs are counted, not timed
    lat = df.loc[("CPU latency, batch 1 (torch)", "Dy /50")]
    assert lat["mean"] == pytest.approx(-0.07) and lat["verdict"] == "contradicted"  # below in both interpolations
    assert not lat["checks passed"]  # seed 2's latency table flagged the row
    assert df.loc[("CPU latency, batch 1 (torch)", "Dy /0"), "checks passed"]
    assert flops["bracketed"]  # 1.5 GFLOPs lies between the static models' 1 and 3 on every seed
    dy100 = df.loc[("CPU latency, batch 1 (torch)", "Dy /100")]  # 28 ms: within 10-30 ms
    assert dy100["bracketed"] and not dy100["verdict"].startswith("not scored")
    _variable_speed(seed_folder("standard", 1, tmp_path), 0.58, statics=1)  # one static model: no line
    one = seeds_frontier("standard", (0, 1, 2), tmp_path).set_index(["cost", "model"])
    assert one.loc[("GFLOPs", "Dy /50"), "verdict"] == "not testable"
    assert not one.loc[("GFLOPs", "Dy /50"), "bracketed"]


def test_the_far_end_static_model_anchors_the_seeds_that_did_not_train_it(tmp_path):
    """yolov8s trains on the first seeds only: the others take its costs and its mean AP, marked as not theirs,
    so that every seed's frontier brackets Dy /100 instead of extrapolating past yolov8ns."""
    from dynamicdet.experiments.seeds import seed_folder, seeds_frontier
    from dynamicdet.experiments.seeds.tables import TRAINED, anchor_far_end

    for seed, statics in ((0, 2), (1, 2), (2, 1), (3, 0)):  # seed 2: yolov8n only; seed 3: no static model
        _variable_speed(seed_folder("standard", seed, tmp_path), 0.58, statics=statics)
    one = seed_folder("standard", 1, tmp_path) / "variable_speed.csv"
    t = pd.read_csv(one)
    t.loc[t["model"] == "yolov8s (static)", "AP"] = 0.72  # seed 0: 0.70, seed 1: 0.72 -> mean 0.71
    t.to_csv(one, index=False)
    before = seeds_frontier("standard", (0, 1, 2), tmp_path).set_index(["cost", "model"])
    assert not before["bracketed"].any()  # seed 2's one static model draws no line
    assert anchor_far_end("standard", [0, 1, 2], tmp_path) == ["yolov8s (static) -> seed2"]
    assert anchor_far_end("standard", [0, 1, 2], tmp_path) == ["yolov8s (static) -> seed2"]  # redone, not doubled
    two = pd.read_csv(seed_folder("standard", 2, tmp_path) / "variable_speed.csv").set_index("model")
    assert len(two) == 5 and two.loc["yolov8s (static)", "AP"] == pytest.approx(0.71)
    assert two.loc["yolov8s (static)", ["GFLOPs", "latency_ms_b1"]].tolist() == [3.0, 30.0]  # its costs
    assert two[TRAINED].tolist() == [True, True, True, True, False]
    after = seeds_frontier("standard", (0, 1, 2), tmp_path).set_index(["cost", "model"])
    assert after["bracketed"].all()
    # a point beyond the static models on a seed gets no verdict from an extrapolated gap
    far = pd.read_csv(seed_folder("standard", 0, tmp_path) / "variable_speed.csv")
    far.loc[far["model"] == "Dy /100", "GFLOPs"] = 3.5
    far.to_csv(seed_folder("standard", 0, tmp_path) / "variable_speed.csv", index=False)
    beyond = seeds_frontier("standard", (0, 1, 2), tmp_path).set_index(["cost", "model"]).loc[("GFLOPs", "Dy /100")]
    assert not beyond["bracketed"] and beyond["verdict"].startswith("not scored: outside the static models'")
    # only the far end is anchored: seed 3 gets yolov8s, never another seed's yolov8n (detector 1's own twin)
    assert anchor_far_end("standard", [3], tmp_path) == ["yolov8s (static) -> seed3"]
    three = pd.read_csv(seed_folder("standard", 3, tmp_path) / "variable_speed.csv").set_index("model")
    assert "yolov8n (static)" not in three.index and three.loc["yolov8s (static)", "AP"] == pytest.approx(0.71)
    # a subset of the seeds anchors with the mean of every seed folder that trained it, and keeps what is there
    assert anchor_far_end("standard", [2], tmp_path) == ["yolov8s (static) -> seed2"]
    again = pd.read_csv(seed_folder("standard", 2, tmp_path) / "variable_speed.csv").set_index("model")
    assert again.loc["yolov8s (static)", "AP"] == pytest.approx(0.71)
    assert anchor_far_end("smoke", [0], tmp_path) == []  # one static scale: no far end to anchor


def test_run_summary_reads_the_gain_difficulty_spearman_of_a_pipeline_run(tmp_path):
    """A pipeline run has no gain_difficulty.csv: the Spearman comes from notebook 04's router_signals."""
    from dynamicdet.experiments.seeds import run_summary

    pd.DataFrame({"detector": ["detector 1", "detector 2"], "AP": [0.3, 0.35]}).to_csv(
        tmp_path / "joint_training.csv", index=False
    )
    pd.DataFrame({"model": ["Dy /0", "yolov8n (static)"], "GFLOPs": [1.0, 1.0], "AP": [0.3, 0.32]}).to_csv(
        tmp_path / "variable_speed.csv", index=False
    )
    assert pd.isna(run_summary(tmp_path)["spearman gain~difficulty"])  # neither table: NaN, not an error
    signals = pd.DataFrame(
        {"ranked by": ["learned router (this run)", "generator: difficulty"], "spearman with AP gain": [0.4, 0.2]}
    )
    signals.to_csv(tmp_path / "router_signals.csv", index=False)
    summary = run_summary(tmp_path)
    assert summary["spearman gain~difficulty"] == pytest.approx(0.2)
    assert summary["AP det2 - det1"] == pytest.approx(0.05) and summary["AP det1 - static"] == pytest.approx(-0.02)
    # a seed run's own table wins over notebook 04's
    pd.DataFrame({"Spearman(AP gain, difficulty)": [-0.1]}).to_csv(tmp_path / "gain_difficulty.csv", index=False)
    assert run_summary(tmp_path)["spearman gain~difficulty"] == pytest.approx(-0.1)


def test_convergence_is_the_ap_gained_over_the_last_fifth_of_the_epochs(tmp_path):
    from dynamicdet.experiments.seeds import seed_folder
    from dynamicdet.experiments.seeds.summary import convergence

    for seed, late in ((0, 0.02), (1, 0.04)):
        folder = seed_folder("standard", seed, tmp_path)
        folder.mkdir(parents=True)
        epochs = list(range(1, 16))
        curve = pd.DataFrame({"model": "detector 1", "epoch": epochs, "AP": [0.01 * e for e in epochs]})
        curve.loc[curve["epoch"] == 15, "AP"] = 0.12 + late  # epoch 12 is at 0.12: (1 - 0.2) * 15 = 12
        curve.to_csv(folder / "learning_curves.csv", index=False)
    df = convergence("standard", (0, 1, 2), tmp_path).set_index("model")
    row = df.loc["detector 1"]
    assert (row["epochs"], row["from epoch"]) == (15, 12)
    assert row["gain seed 0"] == pytest.approx(0.02) and row["gain seed 1"] == pytest.approx(0.04)
    assert pd.isna(row["gain seed 2"]) and row["mean"] == pytest.approx(0.03)  # seed 2 has no curves


def test_trainer_gap_pairs_our_loop_with_ultralytics_seed_by_seed(tmp_path):
    from dynamicdet.experiments.seeds import seed_folder
    from dynamicdet.experiments.seeds.summary import trainer_gap

    for seed, (ours, theirs) in enumerate(((0.64, 0.66), (0.65, 0.66), (0.66, 0.665))):
        folder = seed_folder("standard", seed, tmp_path)
        folder.mkdir(parents=True)
        pd.DataFrame({"model": ["Dy /0", "yolov8n (static)"], "AP": [0.6, ours]}).to_csv(
            folder / "variable_speed.csv", index=False
        )
        ref = {"model": ["yolov8n (static, ultralytics' trainer)"], "trainer": ["ultralytics"], "AP": [theirs]}
        pd.DataFrame({**ref, "epochs": [15]}).to_csv(folder / "trainer_reference.csv", index=False)
    df = trainer_gap("standard", (0, 1, 2, 3), tmp_path).set_index("seed")  # seed 3 has no reference: left out
    assert list(df.index) == ["0", "1", "2", "mean", "std", "ci95 lo", "ci95 hi"]
    assert df.loc["0", "ours - ultralytics"] == pytest.approx(-0.02)
    assert df.loc["mean", "ours - ultralytics"] == pytest.approx((-0.02 - 0.01 - 0.005) / 3)
    assert (
        df.loc["ci95 lo", "ours - ultralytics"]
        < df.loc["mean", "ours - ultralytics"]
        < df.loc["ci95 hi", "ours - ultralytics"]
    )


def test_gap_table_compares_the_trainers_as_independent_samples_and_keeps_a_missing_run_out():
    from scipy import stats

    from dynamicdet.experiments.seeds.summary import gap_table

    ours, theirs = [0.33, 0.27, 0.28, 0.30], [0.34, 0.34, 0.31]
    rows = [
        {"seed": str(i), "our loop": a, "ultralytics": b}
        for i, (a, b) in enumerate(zip(ours, [*theirs, None], strict=True))
    ]
    df = gap_table(rows).set_index("seed")
    assert pd.isna(df.loc["3", "ours - ultralytics"])  # seed 3's ultralytics run is missing
    assert df.loc["mean", "ours - ultralytics"] == pytest.approx(np.mean(ours) - np.mean(theirs))
    welch = stats.ttest_ind(ours, theirs, equal_var=False).confidence_interval(0.95)
    assert df.loc["ci95 lo", "ours - ultralytics"] == pytest.approx(welch.low)
    assert df.loc["ci95 hi", "ours - ultralytics"] == pytest.approx(welch.high)
    # a paired interval over seeds 0-2 would be another number: the seed numbers pair nothing
    paired = stats.ttest_1samp(np.subtract(ours[:3], theirs), 0).confidence_interval(0.95)
    assert paired.low != pytest.approx(welch.low)
    assert df.loc["mean", "ultralytics"] == pytest.approx(np.mean(theirs))
    assert gap_table(rows[:1]).shape[0] == 1  # one run per trainer: no statistics


def test_budget_sets_every_claim_at_twice_the_epochs_beside_the_seeds_own(tmp_path):
    from test_claims import results

    from dynamicdet.experiments.seeds import seed_folder
    from dynamicdet.experiments.seeds.summary import budget

    assert budget("standard", 0, tmp_path) is None  # no seed0-2x tables: nothing to compare
    results(seed_folder("standard", 0, tmp_path), ap1=0.60, ap2=0.64)  # detector 2 ahead at 15 epochs
    results(seed_folder("standard", 0, tmp_path, longer=True), ap1=0.70, ap2=0.69)  # behind at 30
    df = budget("standard", 0, tmp_path).set_index("claim")
    lead = df.loc["detector 2 beats detector 1"]
    assert lead["margin (15 epochs)"] == pytest.approx(0.04) and lead["margin (30 epochs)"] == pytest.approx(-0.01)
    assert lead["sign differs"]
    # c(0.5) 0.8 against random's 0.5 at both budgets, but in AP the router is below random once detector 2 trails
    router = df.loc["the router beats random routing at /50"]
    assert router["margin (15 epochs)"] == pytest.approx(0.3 * 0.04) and router["sign differs"]
    assert router["margin (30 epochs)"] == pytest.approx(0.3 * -0.01)
    assert not df.loc["hard images are the crowded, small, occluded, cluttered ones", "sign differs"]  # 0.9 at both


def test_the_trainer_comparison_runs_the_campaigns_own_jobs():
    from dynamicdet.experiments.seeds.campaign import campaign, trainer_jobs

    names = [j.name for j in trainer_jobs("standard", [0, 1])]
    assert names == ["seed0-static-n", "seed0-ultralytics-n", "seed1-static-n", "seed1-ultralytics-n"]
    assert set(names) <= {j.name for j in campaign("standard", [0, 1])}  # the same names: the same locks and caches


def test_a_train_override_is_a_row_of_its_own_for_both_trainers():
    from dynamicdet.engine.runs import STATIC_MODELS, STEP1
    from dynamicdet.experiments.seeds.campaign import seed_config, trainer_jobs
    from dynamicdet.experiments.static_models import static_config

    names = [j.name for j in trainer_jobs("quick", [0], train={"workers": 2})]
    assert names == ["seed0-workers2-static-n", "seed0-workers2-ultralytics-n"]  # not the campaign's locks
    base, two = seed_config("quick", 0), seed_config("quick", 0, train={"workers": 2})
    assert (base.train.workers, two.train.workers, two.train.seed) == (0, 2, 0)
    assert STEP1.path(static_config(base, "n")) != STEP1.path(static_config(two, "n"))  # our loop's cache
    assert STATIC_MODELS.path(base) != STATIC_MODELS.path(two)  # ultralytics' cache


def test_gap_rejects_a_train_key_that_does_not_exist(capsys):
    from dynamicdet.experiments.seeds import __main__ as cli

    with pytest.raises(SystemExit):
        cli.main(["gap", "--config", "smoke", "--train", "wokers=2"])
    assert "wokers=2" in capsys.readouterr().err


def test_the_campaign_trains_notebook_08s_two_stage_models_after_the_seeds_and_before_twice_the_epochs():
    from dynamicdet.experiments.seeds.campaign import campaign

    # what the two-stage jobs do (train, time nothing): tests/test_two_stage.py, in a run folder of its own
    jobs = campaign("smoke", [0, 1], few=1)
    names = [j.name for j in jobs]
    first, last = names.index("two-stage-faster_rcnn"), names.index("two-stage-mask_rcnn")
    assert last == first + 1 and first > names.index("seed1-paper-router") and names[last + 1] == "seed0-2x-joint"
    assert "two-stage-faster_rcnn" not in [j.name for j in campaign("smoke", [0], two_stage=False)]


def test_gap_writes_both_trainers_aps_per_seed_from_the_campaigns_caches(tmp_path, monkeypatch, capsys):
    from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_ROW
    from dynamicdet.experiments.seeds import __main__ as cli
    from dynamicdet.experiments.seeds.campaign import seed_config
    from dynamicdet.experiments.static_models import static_config

    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path / "home"))
    ran = []
    monkeypatch.setattr(cli, "work", lambda jobs, *a, **k: ran.extend(j.name for j in jobs))  # the runs exist
    for seed, (ours, theirs) in enumerate(((0.30, 0.33), (0.28, 0.34), (0.32, 0.31))):
        cfg = seed_config("smoke", seed)
        for path, ap in (
            (STATIC_ROW.path(static_config(cfg, "n")), ours),
            (REFERENCE_ROW.path(cfg, model="yolov8n"), theirs),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"AP": ap}))
    df = cli.trainer_comparison("smoke", [0, 1, 2, 3], tmp_path / "out")  # seed 3 not trained: NaN, left out
    assert ran[:2] == ["seed0-static-n", "seed0-ultralytics-n"] and len(ran) == 8
    table = pd.read_csv(tmp_path / "out" / "smoke.csv", dtype={"seed": str}).set_index("seed")
    assert table.loc["1", "ours - ultralytics"] == pytest.approx(-0.06) and pd.isna(table.loc["3", "our loop"])
    assert table.loc["mean", "ours - ultralytics"] == pytest.approx(0.30 - (0.33 + 0.34 + 0.31) / 3)
    assert df.shape == table.reset_index().shape and "Welch" in (tmp_path / "out" / "smoke.md").read_text()
    record = json.loads((tmp_path / "out" / "smoke_provenance.json").read_text())
    assert record["seeds"] == [0, 1, 2, 3] and record["command"].endswith("--config smoke --seeds 0 1 2 3")
    assert cli.main(["gap", "--config", "smoke", "--seeds", "0", "--out", str(tmp_path / "cli")]) == 0
    assert "ours - ultralytics" in capsys.readouterr().out  # the command prints the comparison it wrote
    cli.trainer_comparison("smoke", [0], tmp_path / "out", train={"workers": 2})  # not trained: its own files
    record = json.loads((tmp_path / "out" / "smoke-workers2_provenance.json").read_text())
    assert record["command"].endswith("--seeds 0 --train workers=2") and record["train"] == {"workers": 2}
    assert ran[-2:] == ["seed0-workers2-static-n", "seed0-workers2-ultralytics-n"]


def test_seeds_summary_keeps_a_correlations_interval_inside_its_range(tmp_path):
    from test_claims import results

    from dynamicdet.experiments.seeds import seed_folder, seeds_summary

    rho = (0.97, 0.98, 0.95)  # a plain t-interval reaches 0.967 + 4.303 x 0.0153 / sqrt(3) = 1.005
    for seed, r in enumerate(rho):
        results(seed_folder("standard", seed, tmp_path), rho=r)
    df = seeds_summary("standard", (0, 1, 2), tmp_path).set_index("seed")["spearman phi~difficulty"].astype(float)
    assert df["mean"] == pytest.approx(np.mean(rho)) and df["ci95 lo"] < df["mean"] < df["ci95 hi"] <= 1
    assert np.mean(rho) + 4.302653 * np.std(rho, ddof=1) / np.sqrt(3) > 1
