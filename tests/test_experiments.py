"""Routed evaluation and its baselines."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from dynamicdet.config import ConfigError, load_config
from dynamicdet.evaluation.coco_eval import coco_evaluate, detections_to_coco, per_image_ap
from dynamicdet.experiments import (
    evaluate_dets,
    latency_table,
    predict_val,
    route_detections,
    routed_evaluator,
    static_frontier,
    stream_latency,
    sweep_latency,
    target_latency,
    timing_stream,
    tradeoff,
    trained,
    variable_speed,
    variable_speed_table,
)
from dynamicdet.modeling import routing

# the tests that use a trained smoke model (steps 1 and 2, trained once for the module) are slow
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_smoke(smoke_cfg):

    return trained(smoke_cfg, progress=False)


@slow
def test_routed_eval_reproduces_both_detectors_at_k0_and_k1(trained_smoke):

    t = trained_smoke
    dets1, dets2 = route_detections(t, progress=False)
    phi = t.val_scores["logit"].to_numpy()
    for k, ref in ((0.0, dets1), (1.0, dets2)):
        tau = routing.threshold_for_fraction(phi, k)
        dets, hard = predict_val(t, lambda x, tau=tau: t.model.route(x, tau), "route", False)
        assert all(hard[i] == (k == 1.0) for i in hard)
        assert evaluate_dets(t, dets) == evaluate_dets(t, ref)
    # a split threshold: route() gives, image by image, the detections of the route it took
    tau = routing.threshold_for_fraction(phi, 0.5)
    dets, hard = predict_val(t, lambda x: t.model.route(x, tau), "route", False)
    assert 0 < sum(hard.values()) < len(hard)
    for i, d in dets.items():
        want = (dets2 if hard[i] else dets1)[i]
        assert d.shape == want.shape and np.allclose(d, want, atol=1e-2)


@slow
def test_tradeoff_table_rows_and_fractions(trained_smoke, smoke_cfg):

    res = tradeoff(trained_smoke, progress=False)
    table, sweep = res.table, res.sweep
    assert list(table["k"]) == smoke_cfg.eval.fractions
    n = len(trained_smoke.val_scores)
    assert (abs(table["k_measured"] - table["k"]) <= 1 / n + 1e-9).all()
    assert set(sweep["router"]) == {"learned", "random", "oracle (L1-L2)", "oracle (AP gain)", "confidence escalation"}
    assert table["GFLOPs"].iloc[0] == pytest.approx(res.gflops_easy)
    assert table["GFLOPs"].iloc[-1] == pytest.approx(res.gflops_hard)


@slow
def test_spliced_sweep_points_match_route(trained_smoke, smoke_cfg):
    """The sweep's spliced points use the decisions and the matches route() would produce."""

    t = trained_smoke
    sweep = tradeoff(t, progress=False).sweep
    learned = sweep[sweep["router"] == "learned"]
    assert set(learned.loc[learned["measured_by"] == "route()", "k"]) == set(smoke_cfg.eval.fractions)
    assert (learned["measured_by"] == "spliced").sum() == len(learned) - len(smoke_cfg.eval.fractions) > 0
    routed = routed_evaluator(t)
    ids, z = t.val_scores["image_id"].tolist(), t.val_scores["logit"].to_numpy()
    for _, row in learned[learned["measured_by"] == "route()"].iterrows():
        mask = z >= row["tau"]
        assert mask.mean() == pytest.approx(row["k_measured"])  # route() took the decisions z >= tau
        # route() on a sub-batch vs each detector on the full batch: same matches up to conv round-off
        assert routed.evaluate(dict(zip(ids, mask, strict=True)))["AP"] == pytest.approx(row["AP"], abs=2e-3)


@slow
def test_timing_stream_spreads_over_the_router_scores(trained_smoke):

    t = trained_smoke
    all_z = np.sort(t.val_scores["logit"].to_numpy())
    images, z = timing_stream(t, 4)
    # 12 val images, 4 picked at ranks (j + 0.5) * 12 / 4 -> 1, 4, 7, 10 of the sorted scores, then shuffled
    assert np.array_equal(np.sort(z), all_z[[1, 4, 7, 10]])
    for k in (0.25, 0.5, 0.75):
        tau = routing.threshold_for_fraction(all_z, k)
        assert abs((z >= tau).mean() - (all_z >= tau).mean()) <= 1 / 4
    # the images are those the scores belong to: the router scores them the same again
    s = t.cfg.data.img_size
    assert all(x.shape == (1, 3, s, s) for x in images)
    with torch.inference_mode():
        again = np.array([t.model.score_logit(x).item() for x in images])
    assert np.allclose(again, z, atol=1e-3)
    with pytest.raises(ValueError, match="stream_images"):
        timing_stream(t, 0)


@slow
def test_stream_latency_times_every_threshold_per_image(trained_smoke):

    t = trained_smoke
    images, _ = timing_stream(t, 5)
    ms = stream_latency(t, {"easy": float("inf"), "hard": float("-inf")}, images, batch=2)
    assert set(ms) == {"easy", "hard"} and all(v > 0 for v in ms.values())
    with pytest.raises(ValueError, match="no batch of 8"):
        stream_latency(t, {"easy": float("inf")}, images, batch=8)


def _fake_stream_latency(easy: float, hard: float, speeds=(1.0, 1.6, 0.7)):
    """Stand-in for stream_latency: ms/img = easy + (fraction of the stream on the hard route) (hard - easy);
    per round (``per_round``), every entry of timing round i slowed by ``speeds[i]`` (a machine whose
    speed changes between rounds); with ``segment``, (R, S): the same rule on each segment's images."""

    def fake(t, fns, images, batch=1, per_round=False, segment=None):

        _, z = timing_stream(t, len(images))
        step = len(z) if segment is None else segment
        parts = [z[i : i + step] for i in range(0, len(z), step)]
        out = {}
        for name, fn in fns.items():
            fracs = np.array([float((zs >= float(fn)).mean()) for zs in parts])
            out[name] = easy + fracs * (hard - easy)  # (S,)
        if not per_round:
            return {k: float(v @ [len(zs) for zs in parts] / len(z)) for k, v in out.items()}
        speed = np.asarray(speeds)[:, None]
        return {k: (v * speed).reshape(len(speeds), -1) if segment else (v * speed)[:, 0] for k, v in out.items()}

    return fake


@slow
def test_target_latency_rows_follow_the_threshold_rule(trained_smoke, monkeypatch):

    t = trained_smoke
    ks = (0.25, 0.75)
    # the real timing is exercised by test_stream_latency...; here the rule, on fixed latencies (no noise)
    monkeypatch.setattr(variable_speed, "stream_latency", _fake_stream_latency(10.0, 30.0))
    demo = target_latency(t, ks=ks, n_images=4, rounds=2, progress=False, segment=3)  # segments of 3 and 1 images
    n_val = len(t.val_scores)
    assert list(demo["target k"]) == list(ks) and (demo["images"] == 4).all() and (demo["rounds"] == 2).all()
    assert (demo["noisy_rounds"] == 0).all()
    # the median of two rounds lies between their min and max
    assert (demo["achieved / target_min"] <= demo["achieved / target"] + 1e-12).all()
    assert (demo["achieved / target"] <= demo["achieved / target_max"] + 1e-12).all()
    easy, hard = demo["lat_easy ms/img"], demo["lat_hard ms/img"]
    assert (easy == 10.0).all() and (hard == 30.0).all()
    # lat_t = lat_easy + k (lat_hard - lat_easy)
    assert np.allclose(demo["target ms/img"], easy + demo["target k"] * (hard - easy))
    assert (abs(demo["val fraction hard"] - demo["target k"]) <= 1 / n_val + 1e-9).all()
    assert (abs(demo["timed fraction hard"] - demo["target k"]) <= 1 / 4 + 1 / n_val + 1e-9).all()
    # with exact latencies the achieved latency is the latency model's, pooled over 2 rounds x 3 timing rounds
    # x 2 segments; the achieved ms/img weighs the segments by their images: easy + k_timed (hard - easy)
    assert np.allclose(demo["achieved / model"], 1.0) and (demo["achieved / model_n"] == 2 * 3 * 2).all()
    assert np.allclose(demo["achieved ms/img"], easy + demo["timed fraction hard"] * (hard - easy))
    whole = target_latency(t, ks=ks, n_images=4, rounds=2, progress=False, segment=None)
    assert (whole["achieved / model_n"] == 2 * 3).all()
    assert np.allclose(whole["achieved ms/img"], demo["achieved ms/img"])
    with pytest.raises(ValueError, match="rounds"):
        target_latency(t, rounds=0)
    with pytest.raises(ValueError, match="segment"):
        target_latency(t, segment=0)


@slow
def test_target_latency_records_noisy_calibrations_and_carries_on(trained_smoke, monkeypatch):
    """A machine so busy that the hard route times faster than the easy one fails nothing."""

    calls = []

    def inverted(t, fns, images, batch=1, per_round=False, segment=None):
        calls.append(set(fns))
        return {name: 5.0 if name == "hard" else 10.0 for name in fns}

    monkeypatch.setattr(variable_speed, "stream_latency", inverted)
    with pytest.warns(UserWarning, match="round skipped as noisy"):
        demo = target_latency(trained_smoke, ks=(0.5,), n_images=4, rounds=2, progress=False, retries=1)
    assert len(calls) == 2 * 2  # each round: the calibration and one retry, then skipped
    assert (demo["noisy_rounds"] == 2).all() and demo["achieved / target"].isna().all()
    assert list(demo["target k"]) == [0.5]


@slow
def test_latency_table_times_every_row_and_feeds_the_sweep_and_table(trained_smoke, smoke_cfg):

    t = trained_smoke
    res = tradeoff(t, progress=False)
    no_static = pd.DataFrame(columns=["model", "AP"])
    lat = latency_table(t, res, no_static, progress=False)
    b = smoke_cfg.eval.batch
    assert list(lat["model"]) == [*res.table["model"], "B1 + router"]
    assert (lat[["latency_ms_b1", f"latency_ms_b{b}"]] > 0).all().all()
    assert latency_table(t, res, no_static, progress=False).equals(lat)  # cached

    sweep = sweep_latency(res, lat)
    ms = lat.set_index("model")["latency_ms_b1"]
    easy, hard, score = ms["Dy /0"], ms["Dy /100"], ms["B1 + router"]
    learned = sweep[sweep["router"] == "learned"]
    # lat = lat_easy + k (lat_hard - lat_easy)
    assert np.allclose(learned["latency_ms"], easy + learned["k_measured"] * (hard - easy))
    esc = sweep[sweep["router"] == "confidence escalation"]
    extra = esc["latency_ms"] - (easy + esc["k_measured"] * (hard - easy))
    assert np.allclose(extra, esc["k_measured"] * max(easy - score, 0.0))

    table = variable_speed_table(res, no_static, lat, b)
    assert np.allclose(table["latency_ms_b1"], ms[table["model"]].to_numpy())
    assert np.allclose(table["FPS_b1"], 1000 / table["latency_ms_b1"])
    assert not any(c.startswith("ci95_rel_") for c in table)  # smoke times without a tolerance: no interval
    precise = lat.assign(ci95_rel_b1=0.01, ci95_paired_b1=0.004)  # precise timing: both intervals reach the table
    assert (variable_speed_table(res, no_static, precise, b)["ci95_rel_b1"] == 0.01).all()
    assert (variable_speed_table(res, no_static, precise, b)["ci95_paired_b1"] == 0.004).all()
    no_ends = dataclasses.replace(res, table=res.table[res.table["k"] != 1.0])
    with pytest.raises(ValueError, match="must include 0 and 1"):
        sweep_latency(no_ends, lat)


def test_a_tradeoff_cache_of_earlier_runs_loads_into_named_fields(tmp_path):
    """The cache keeps the dict earlier runs wrote (table, sweep, ap1, ap2, gflops): their caches stay valid."""
    from dynamicdet.experiments import Tradeoff

    table = pd.DataFrame({"model": ["Dy /0", "Dy /100"], "k": [0.0, 1.0], "AP": [0.5, 0.6]})
    sweep = pd.DataFrame({"router": ["learned"], "k": [0.5], "AP": [0.55]})
    old = {"table": table, "sweep": sweep, "ap1": {"AP": 0.5}, "ap2": {"AP": 0.6}, "gflops": {"easy": 1.0, "hard": 2.0}}
    torch.save(old, tmp_path / "tradeoff.pt")
    res = Tradeoff.load(tmp_path / "tradeoff.pt")
    assert res.table.equals(table) and res.sweep.equals(sweep)
    assert (res.detector1["AP"], res.detector2["AP"], res.gflops_easy, res.gflops_hard) == (0.5, 0.6, 1.0, 2.0)
    res.save(tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=False)
    assert set(again) == set(old) and again["gflops"] == old["gflops"] and again["ap2"] == old["ap2"]


def test_static_frontier_is_the_line_through_the_static_models():
    cost = "latency_ms_b1"
    static = pd.DataFrame({"model": ["s", "n"], "latency_ms_b1": [20.0, 10.0], "AP": [0.7, 0.6]})
    points = pd.DataFrame({"model": ["/0", "/50", "/100"], "latency_ms_b1": [8.0, 15.0, 25.0], "AP": [0.6, 0.62, 0.8]})
    f = static_frontier(points, static, cost=cost)
    # AP_frontier = 0.6 + (lat - 10) * 0.01: extended below n and beyond s, interpolated between
    assert np.allclose(f["AP_frontier"], [0.58, 0.65, 0.75])
    assert np.allclose(f["gap"], [0.02, -0.03, 0.05])
    three = pd.concat([static, pd.DataFrame({"model": ["m"], "latency_ms_b1": [30.0], "AP": [0.9]})])
    assert np.allclose(static_frontier(points, three, cost=cost)["AP_frontier"], [0.58, 0.65, 0.8])  # piecewise
    assert static_frontier(points, static.iloc[:1], cost=cost)["AP_frontier"].isna().all()  # one model: no line
    with pytest.raises(ValueError, match=r"static lacks columns \['AP'\]"):
        static_frontier(points, static.drop(columns="AP"), cost=cost)


def _gt(tmp_path, n_images=10):
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [20, 20, 40, 40], "area": 1600, "iscrowd": 0})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return path


def test_oracle_is_never_below_random_on_a_known_case(tmp_path):
    gt = _gt(tmp_path)
    ids = list(range(1, 11))
    good = np.array([[20, 20, 60, 60, 0.9, 0]], dtype=float)
    bad = np.array([[70, 70, 95, 95, 0.9, 0]], dtype=float)  # a miss and a false positive
    # detector 1 is right on images 1-5 only, detector 2 on all
    dets1 = {i: good if i <= 5 else bad for i in ids}
    dets2 = {i: good for i in ids}
    pa1 = per_image_ap(str(gt), detections_to_coco(dets1, [1]))
    pa2 = per_image_ap(str(gt), detections_to_coco(dets2, [1]))
    gain = np.array([pa2[i] - pa1[i] for i in ids])

    def ap(mask):
        routed = {i: (dets2[i] if hard else dets1[i]) for i, hard in zip(ids, mask, strict=True)}
        return coco_evaluate(str(gt), detections_to_coco(routed, [1]))["AP"]

    for k in (0.1, 0.3, 0.5, 0.7, 1.0):
        oracle = ap(routing.top_fraction(gain, k))
        rand = [ap(routing.random_route(10, k, s)) for s in range(5)]
        assert oracle >= max(rand) - 1e-12
    assert ap(routing.top_fraction(gain, 0.5)) == pytest.approx(1.0)  # the oracle fixes exactly the 5 bad images


def test_ablation_summary_averages_each_row_over_its_seeds():
    from dynamicdet.experiments.step1_ablation import summary

    table = pd.DataFrame(
        [
            {"row": "b", "recipe": "static", "seed": 0, "AP det1": 0.30, "AP det2": np.nan},
            {"row": "c", "recipe": "joint", "seed": 0, "AP det1": 0.30, "AP det2": 0.40},
            {"row": "c", "recipe": "joint", "seed": 1, "AP det1": 0.10, "AP det2": 0.20},
        ]
    )
    s = summary(table).set_index("row")
    assert s.loc["c", "seeds"] == 2 and s.loc["b", "seeds"] == 1
    # (0.30 + 0.10) / 2, (0.40 + 0.20) / 2, and the mean of the two detectors: (0.2 + 0.3) / 2
    assert np.isclose(s.loc["c", "AP det1"], 0.20) and np.isclose(s.loc["c", "AP det2"], 0.30)
    assert np.isclose(s.loc["c", "AP mean(det1, det2)"], 0.25) and np.isclose(s.loc["c", "AP det1 range"], 0.20)
    assert np.isnan(s.loc["b", "AP mean(det1, det2)"])  # a static model has no detector 2


def test_ablation_second_seed_names_a_known_row(smoke_cfg):
    from dynamicdet.experiments.step1_ablation import ablation_table

    with pytest.raises(ValueError, match="second_seed: row 'z'"):
        ablation_table(smoke_cfg, rows=(), second_seed={"z": 1}, progress=False)


def test_ablation_row_g_doubles_the_best_joint_recipe_and_the_cli_saves_it(monkeypatch):
    """Row g retrains the best joint recipe (or the one named) and row a at twice the epochs."""
    from dynamicdet import paths
    from dynamicdet.experiments import step1_ablation as ab

    ap = {"c": (0.30, 0.40), "d": (0.35, 0.45), "e": (0.20, 0.50)}  # mean(det1, det2): c 0.35, d 0.40, e 0.35

    def joint(row, recipe, cfg, progress):
        det1, det2 = ap[row] if row in ap else (0.0, 0.0)
        return {
            "row": row,
            "recipe": recipe,
            "epochs": cfg.train.epochs,
            "clip": cfg.train.clip,
            "AP det1": det1,
            "AP det2": det2,
        }

    def static(row, cfg, progress):
        return {"row": row, "recipe": "static", "epochs": cfg.train.epochs, "AP det1": 0.3, "AP det2": np.nan}

    monkeypatch.setattr(ab, "_joint_row", joint)
    monkeypatch.setattr(ab, "_static_row", static)
    epochs = load_config("smoke").train.epochs
    assert ab.main(["--config", "smoke", "--rows", "a,c,d,e,g", "--results", "smoke", "--name", "abl_g"]) == 0
    table = pd.read_csv(paths.results_dir("smoke") / "abl_g.csv")
    g = table[table["row"] == "g"].set_index("recipe")
    assert list(g.index) == ["joint, per-detector clip, 2x epochs", "static, ultralytics' trainer, 2x epochs"]
    assert (g["epochs"] == 2 * epochs).all() and g["clip"].iloc[0] == "per_detector"
    record = json.loads((paths.results_dir("smoke") / "provenance.json").read_text())["abl_g"]
    assert record["rows"] == ["a", "c", "d", "e", "g"] and record["base_config"]["name"] == "smoke"
    assert record["row g doubles"] == "joint, per-detector clip, 2x epochs"
    # a named recipe wins over the table's best; row g alone needs one
    named = ab.ablation_table("smoke", rows=("g",), best="e", progress=False)
    assert named.loc[0, "clip"] == "none" and named.loc[0, "epochs"] == 2 * epochs
    with pytest.raises(ValueError, match="row g doubles the best joint recipe"):
        ab.ablation_table("smoke", rows=("a", "g"), progress=False)  # before row a trains
    with pytest.raises(ValueError, match="best: row 'b' is not a joint recipe"):
        ab.ablation_table("smoke", rows=("g",), best="b", progress=False)
    with pytest.raises(SystemExit):
        ab.main(["--config", "smoke", "--rows", "a,zz"])
    with pytest.raises(ConfigError, match="config file not found"):  # before anything trains
        ab.main(["--config", "smoke", "--rows", "a", "--results", "no_such_config"])


def test_the_frontier_by_cost_has_one_row_per_cost_and_dynamic_row():
    from dynamicdet.experiments import frontier_by_cost

    table = pd.DataFrame(
        {
            "model": ["Dy /0", "Dy /100", "yolov8n (static)", "yolov8s (static)"],
            "GFLOPs": [1.0, 2.0, 1.0, 3.0],
            "latency_ms_b1": [10.0, 20.0, 10.0, 30.0],
            "latency_ms_b8": [5.0, 9.0, 5.0, 13.0],
            "AP": [0.6, 0.7, 0.6, 0.8],
        }
    )
    f = frontier_by_cost(table, 8)
    # no onnxruntime column in this table: three costs, two Dy rows each
    assert list(dict.fromkeys(f["cost"])) == ["GFLOPs", "CPU latency, batch 1 (torch)", "CPU latency, batch 8 (torch)"]
    assert len(f) == 6
    # the line (1, 0.6)-(3, 0.8) at 2 GFLOPs: 0.7 -> gap 0; by latency b1 at 20 ms: 0.7 -> gap 0; b8 at 9 ms: 0.7
    assert np.allclose(f["gap"], 0.0)
    assert np.allclose(f.loc[f["cost"] == "GFLOPs", "cost value"], [1.0, 2.0])
    table["AP"] = [0.6, 0.75, 0.6, 0.8]
    assert np.allclose(frontier_by_cost(table, 8).query("model == 'Dy /100'")["gap"], 0.05)


def test_ablation_jobs_train_every_row_once_and_row_g_after_the_recipes_it_chooses_from(tmp_path, monkeypatch):
    """`step1_ablation --work`: the rows as cached jobs several processes share; row g doubles the best joint
    recipe once every joint row (second seeds included) is trained, and a finished queue runs nothing."""
    from types import SimpleNamespace

    from dynamicdet.engine.jobs import work
    from dynamicdet.experiments import step1_ablation as ab

    def key(cfg):
        t, m = cfg.train, cfg.model
        return (m.dual, t.clip, t.detach_links, t.seed, t.epochs, cfg.eval.static_epochs)

    done, order = set(), []

    def train(cfg, resume, progress):  # as train_step1: a finished run is reused, not trained again
        t = cfg.train
        if key(cfg) not in done:
            order.append(("joint" if cfg.model.dual else "static", t.clip, t.detach_links, t.seed, t.epochs))
        done.add(key(cfg))

    def reference(cfg, scales, progress):
        if ("ultralytics", *key(cfg)) not in done:
            order.append(("ultralytics", cfg.eval.static_epochs))
        done.add(("ultralytics", *key(cfg)))
        return pd.DataFrame({"AP": [0.5], "train_wall_s": [1.0]})

    ap = {"none": 0.5, "per_detector": 0.4, "joint": 0.3}  # row e (no clip) is the best
    monkeypatch.setattr(ab, "train_step1", train)
    monkeypatch.setattr(ab, "ultralytics_reference", reference)
    monkeypatch.setattr(ab, "STEP1", SimpleNamespace(done=lambda cfg: key(cfg) in done))
    monkeypatch.setattr(
        ab, "REFERENCE_ROW", SimpleNamespace(done=lambda cfg, model: ("ultralytics", *key(cfg)) in done)
    )
    monkeypatch.setattr(
        ab, "_trained_row", lambda row, recipe, cfg: {"row": row, "AP det1": ap[cfg.train.clip], "AP det2": 0.6}
    )
    base = load_config("smoke")
    epochs, seed = base.train.epochs, base.train.seed
    jobs = ab.ablation_jobs(base, ab.NOTEBOOK_ROWS, {"c": seed + 1, "e": seed + 1})
    assert len({j.name for j in jobs}) == len(jobs)
    g = next(j for j in jobs if j.name.endswith("-g"))
    assert not g.ready() and not g.done()  # waits for the joint rows (and says not done without reading them)
    work(jobs, tmp_path / "locks", poll_s=0, log=lambda m: None)
    trained = [o for o in order if o[0] == "joint"]
    assert len(trained) == 5 + 2 + 1 and len(set(trained)) == len(trained)  # c-f2, c and e again, g: once each
    assert trained[-1] == ("joint", "none", False, seed, 2 * epochs)  # g: the best recipe (e, no clip) at 2x epochs
    assert ("joint", "joint", False, seed + 1, epochs) in trained  # row c's second seed
    assert [(o[3], o[4]) for o in order if o[0] == "static"] == [(seed, epochs)]  # row b, once
    assert sorted(o for o in order if o[0] == "ultralytics") == [("ultralytics", epochs), ("ultralytics", 2 * epochs)]
    assert all(j.done() for j in jobs)
    assert work(jobs, tmp_path / "locks", poll_s=0, log=lambda m: None) == []
    # the notebook's table then finds every run trained: it trains nothing more, and doubles the same recipe
    trained_before = list(order)
    table = ab.ablation_table(base, ab.NOTEBOOK_ROWS, second_seed={"c": seed + 1, "e": seed + 1}, progress=False)
    assert order == trained_before and len(table) == len(jobs)  # one table row per job


def test_row_a_is_the_seed_campaigns_ultralytics_reference_where_the_epochs_already_agree():
    """Row a trains ultralytics' yolov8n for the joint rows' epochs; where eval.static_epochs already gives that
    many (standard: 0, i.e. train.epochs), its config, hence its cache, is the campaign's reference run's."""
    from dynamicdet.engine.runs import REFERENCE_ROW
    from dynamicdet.experiments import step1_ablation as ab
    from dynamicdet.experiments.seeds.campaign import seed_config

    standard = ab.variant("standard", {})
    assert REFERENCE_ROW.path(ab._reference_config(standard), model="yolov8n") == REFERENCE_ROW.path(
        seed_config("standard", standard.train.seed), model="yolov8n"
    )
    smoke = load_config("smoke")  # static models train 1 epoch there: row a needs its own run
    assert smoke.eval.static_epochs != smoke.train.epochs
    assert ab._reference_config(smoke).eval.static_epochs == smoke.train.epochs


def test_notebook_09s_parameters_are_the_ablation_jobs_runs():
    # `step1_ablation --work` trains what notebook 09's reference run tabulates: the same rows, seeds, confirmation
    import nbformat

    from dynamicdet import paths
    from dynamicdet.experiments import step1_ablation as ab

    nb = nbformat.read(paths.NOTEBOOKS_DIR / "09_step1_ablation.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, {}, values)
    assert tuple(values["rows"].split(",")) == ab.NOTEBOOK_ROWS
    assert {r: values["second_seed"] for r in values["second_seed_rows"].split(",")} == ab.SECOND_SEED
    assert (values["confirm_config"], tuple(values["confirm_rows"].split(","))) == ab.CONFIRM
    assert values["config"] == "ablation"
