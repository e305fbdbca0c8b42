"""Dy-Faster R-CNN and Dy-Mask R-CNN: forward modes, batched routing, per-image losses, masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dynamicdet.config import load_config
from dynamicdet.data.loaders import targets_from_batch
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.engine.build import build_model, load_model
from dynamicdet.engine.runs import VIEW_CACHE, router_dir
from dynamicdet.engine.step2 import load_cache, train_step2
from dynamicdet.evaluation import speed
from dynamicdet.evaluation.coco_eval import coco_evaluate, segms_to_coco
from dynamicdet.evaluation.predict import predict
from dynamicdet.experiments import static_config
from dynamicdet.experiments.generality import tuning_path
from dynamicdet.modeling import routing
from dynamicdet.modeling.router import AdaptiveRouter
from dynamicdet.modeling.trunks import HeadSizes, Trunk
from dynamicdet.modeling.two_stage import DynamicTwoStage, TwoStageDetector

SIZE = 64
SMALL = HeadSizes(fpn_channels=16, head_channels=32, rpn_batch=32, roi_batch=16, detections=20)


def _targets(kind: str, n_per_image=(2, 0, 1)) -> list[dict]:
    """Boxes (and rectangle masks) for three images, the second without objects."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n in n_per_image:
        xy = torch.rand(n, 2, generator=g) * SIZE * 0.6
        wh = torch.rand(n, 2, generator=g) * SIZE * 0.3 + 6
        boxes = torch.cat([xy, xy + wh], 1)
        t = {"boxes": boxes, "labels": torch.randint(1, 4, (n,), generator=g)}
        if kind == "mask_rcnn":
            m = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                m[j, y0:y1, x0:x1] = 1
            t["masks"] = m
        out.append(t)
    return out


@pytest.fixture(scope="module", params=["faster_rcnn", "mask_rcnn"])
def dyn(request):
    torch.manual_seed(0)
    return DynamicTwoStage(request.param, "resnet18", nc=3, sizes=SMALL).eval()


@pytest.mark.slow
def test_every_forward_mode(dyn):
    x = torch.rand(3, 3, SIZE, SIZE)
    dyn.train()
    losses = dyn(x, _targets(dyn.kind))
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    if dyn.kind == "mask_rcnn":
        expected.add("loss_mask")
    assert set(losses) == {f"L{i}_{k}" for i in (1, 2) for k in expected}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    sum(losses.values()).backward()
    assert dyn.det2.trunk.entry[0][0].weight.grad is not None and dyn.links.proj[0].weight.grad is not None
    dyn.zero_grad(set_to_none=True)
    dyn.eval()
    with torch.no_grad():
        phi, z = dyn.score(x), dyn.score_logit(x)
        assert phi.shape == (3,) and torch.allclose(phi, torch.sigmoid(z))
        assert dyn.router_input(x).shape == (3, sum(dyn.det1.trunk.tap_channels))
        for dets in (dyn.first(x), dyn.second(x), dyn.route(x, 0.0).preds):
            assert len(dets) == 3
            for d in dets:
                assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) <= 20
                assert (d["labels"] >= 1).all() and (d["labels"] <= 3).all()
                if dyn.kind == "mask_rcnn":
                    assert d["masks"].shape == (len(d["boxes"]), 1, SIZE, SIZE)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["all easy", "mixed", "all hard"])
def test_batched_route_equals_per_image_routing(dyn, split):
    torch.manual_seed(1)
    x = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        z = dyn.score_logit(x)
        # a threshold between scores (midway between the 2nd and 3rd largest): never on a sample value
        tau = {"all easy": float("inf"), "mixed": routing.threshold_for_fraction(z.numpy(), 0.5)}.get(split)
        tau = float("-inf") if tau is None else tau
        out = dyn.route(x, tau)
        assert torch.equal(out.hard, z >= tau)
        if split == "mixed":
            assert int(out.hard.sum()) == 2
        for i in range(4):
            alone = dyn.route(x[i : i + 1], tau)
            # an image alone scores within float noise (~1e-6) of its batched score; the route of a score
            # that close to the threshold is unspecified, so it is asserted only with a clear margin
            if abs(float(z[i]) - tau) > 1e-4:
                assert bool(alone.hard[0]) == bool(out.hard[i])
                assert _same(out.preds[i], alone.preds[0])
            ref = (dyn.second if out.hard[i] else dyn.first)(x[i : i + 1])[0]
            assert _same(out.preds[i], ref)


def test_route_skips_the_route_no_image_takes(dyn, monkeypatch):
    x = torch.rand(2, 3, SIZE, SIZE)

    def boom(*a, **k):
        raise AssertionError("trunk 2 ran although every image is easy")

    monkeypatch.setattr(dyn, "pyramid2", boom)
    with torch.no_grad():
        assert not dyn.route(x, float("inf")).hard.any()


def test_per_image_losses_finite_nonnegative_with_empty_images(dyn):
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled, l1, l2 = dyn.router_inputs(x, _targets(dyn.kind))
    assert pooled.shape == (3, sum(dyn.det1.trunk.tap_channels))
    for losses in (l1, l2):
        assert losses.shape == (3,) and torch.isfinite(losses).all() and (losses >= 0).all()
    assert not dyn.det1.rpn.training and not dyn.det1.roi_heads.training  # loss mode is restored


def test_per_image_losses_average_to_torchvision_batch_loss():
    """Every image fills its sample quotas (enough anchors and proposals): mean of per-image = batch loss."""
    torch.manual_seed(0)
    det = TwoStageDetector("faster_rcnn", "resnet18", nc=3, sizes=SMALL).eval()
    x = torch.rand(3, 3, SIZE, SIZE)
    targets = _targets("faster_rcnn", (2, 3, 1))
    with torch.no_grad():
        feats = det.backbone(det.normalize(x))
        torch.manual_seed(123)
        per_image = det.per_image_losses(x, feats, targets)
        det.rpn.train()
        det.roi_heads.train()
        torch.manual_seed(123)  # the same random samples, drawn in the same order
        _, batch = det.heads(x, feats, targets)
    assert per_image.mean().item() == pytest.approx(float(sum(batch.values())), rel=1e-5)


def test_links_feed_trunk2_and_zero_links_give_the_plain_trunk():
    torch.manual_seed(0)
    dyn = DynamicTwoStage("faster_rcnn", "resnet18", nc=3, sizes=SMALL).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        t1 = dyn.taps1(x)
        linked = dyn.det2.trunk(dyn.det2.normalize(x), inject=dyn.links(t1))
        plain = dyn.det2.trunk(dyn.det2.normalize(x))
        assert not torch.allclose(linked[-1], plain[-1])
        for conv in dyn.links.proj:
            conv.weight.zero_()
            conv.bias.zero_()
        zeroed = dyn.det2.trunk(dyn.det2.normalize(x), inject=dyn.links(t1))
    assert all(torch.allclose(a, b) for a, b in zip(zeroed, plain, strict=True))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "swin_t"])
def test_trunks_give_four_levels_at_strides_4_to_32(name):
    trunk = Trunk(name).eval()
    with torch.no_grad():
        feats = trunk(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert [f.shape[1] for f in feats] == trunk.tap_channels
    assert AdaptiveRouter.pool(feats).shape == (1, sum(trunk.tap_channels))


def test_unknown_backbone_is_an_error():
    with pytest.raises(ValueError, match="unknown two-stage backbone 'resnet7'"):
        Trunk("resnet7")


def test_targets_from_an_ultralytics_batch():
    batch = {
        "img": torch.zeros(2, 3, 40, 80),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.0, 0.1]]),  # 2nd: zero width
        "cls": torch.tensor([[2.0], [0.0]]),
        "batch_idx": torch.tensor([1.0, 1.0]),
        "masks": torch.ones(2, 40, 80),
    }
    t = targets_from_batch(batch, with_masks=True)
    assert len(t[0]["boxes"]) == 0 and t[0]["masks"].shape == (0, 40, 80)
    assert torch.allclose(t[1]["boxes"][0], torch.tensor([20.0, 10.0, 60.0, 30.0]))
    assert t[1]["boxes"][1, 2] - t[1]["boxes"][1, 0] == pytest.approx(1.0)  # widened to 1 px
    assert t[1]["labels"].tolist() == [3, 1] and t[1]["masks"].dtype == torch.uint8


def test_predicted_masks_are_unletterboxed_and_scored_by_pycocotools(tmp_path):
    """Ground-truth masks drawn in the letterboxed frame come back at the original size.

    Image 80x60 letterboxed to 64x64: gain 0.8, 8 px of padding above and below. Rectangles
    on multiples of 5 px map to whole letterboxed pixels; resizing back blurs one pixel row,
    so IoU stays above 0.9: AP50 = 1 exactly, AP (IoU 0.5:0.95) close to 1.
    """
    from test_evaluate import _rect_mask, mask_annotations, write_gt

    h, w = 60, 80
    rects = [(5, 5, 30, 25), (40, 20, 70, 55)]
    masks = [_rect_mask(h, w, *r) for r in rects]
    gt = write_gt(tmp_path, {1: (w, h)}, mask_annotations(masks), name="masks.json")
    lb_masks = torch.zeros(2, 1, 64, 64)
    lb_boxes = []
    for j, (x0, y0, x1, y1) in enumerate(rects):
        a, b, c, d = (round(v * 0.8) for v in (x0, y0, x1, y1))
        lb_masks[j, 0, b + 8 : d + 8, a:c] = 1
        lb_boxes.append([a, b + 8, c, d + 8])
    det = {
        "boxes": torch.tensor(lb_boxes, dtype=torch.float32),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 1]),
        "masks": lb_masks,
    }
    batch = {
        "img": torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
        "im_file": ["a.jpg"],
        "ori_shape": [(h, w)],
        "ratio_pad": [((0.8, 0.8), (0.0, 8.0))],
    }
    rles: dict = {}
    dets, _ = predict(lambda x: [det], [batch], {"a.jpg": 1}, masks_out=rles, progress=False)
    assert np.allclose(dets[1][:, :4], [[5, 5, 30, 25], [40, 20, 70, 55]], atol=1e-4)
    m = coco_evaluate(gt, segms_to_coco(dets, rles, class_to_cat=[1]), iou_type="segm")
    assert m["AP50"] == pytest.approx(1.0) and m["AP"] > 0.9


@pytest.mark.slow
def test_two_stage_configs_run_through_the_same_training_entry_points():
    """model.kind switches step 1, the step-2 cache and router training to the two-stage model."""
    cfg = load_config("smoke_faster_rcnn")
    generate_from_config(cfg, progress=False)
    train_step2(cfg, progress=False)
    scores = pd.read_csv(router_dir(cfg) / "val_scores.csv")
    assert len(scores) == cfg.data.n_val and scores[["L1", "L2"]].ge(0).all().all()
    cache = load_cache(VIEW_CACHE.path(cfg))
    model = load_model(cfg)
    assert isinstance(model, DynamicTwoStage)
    assert cache["pooled"].shape == (cfg.router.views * cfg.data.n_train, sum(model.det1.trunk.tap_channels))
    static = build_model(static_config(cfg, backbone="resnet34"), nc=model.nc)
    assert isinstance(static, TwoStageDetector) and static.trunk.name == "resnet34"
    with pytest.raises(ValueError, match="dual = false"):
        train_step2(static_config(cfg, backbone="resnet18"), progress=False)


@pytest.mark.slow
def test_latency_harness_times_the_two_stage_routes(monkeypatch):
    # the timings themselves are noise on a shared machine: only the harness's plumbing is checked
    monkeypatch.setattr(speed, "time_interleaved", _ordered_fake_times)
    torch.manual_seed(0)
    r = speed.route_latencies(DynamicTwoStage("faster_rcnn", "resnet18", nc=3, sizes=SMALL), SIZE, warmup=1, repeats=3)
    assert set(r) == {"batch", "img_size", "easy", "hard", "score", "router", "noisy"} and r["batch"] == 1
    assert (r["easy"], r["hard"], r["router"], r["noisy"]) == (2.0, 3.0, 0.1, False)


def _ordered_fake_times(fns, device, warmup, repeats):
    """time_interleaved that calls every function once (the plumbing runs) and reports fixed times.

    Its keys are ``(segment, name)`` (``speed.segment_times``).
    """
    fixed = {"easy": 2.0, "hard": 3.0, "score": 1.0, "router": 0.1}
    with torch.inference_mode():  # as the real harness
        for fn in fns.values():
            fn()
    return {key: speed._stats([fixed[key[1]]] * repeats) for key in fns}


def test_group_norm_recipe_normalises_trunk_fpn_and_mask_head_without_batch_statistics():
    """model.norm: gn puts GroupNorm in the trunk, the FPN and the mask head, and no BatchNorm anywhere."""
    sizes = HeadSizes(fpn_channels=32, head_channels=32, rpn_batch=32, roi_batch=16, detections=20, norm="gn")
    model = DynamicTwoStage("mask_rcnn", "resnet18", nc=3, sizes=sizes)
    for det in (model.det1, model.det2):
        for part in (det.trunk, det.backbone.fpn, det.roi_heads.mask_head):
            kinds = {type(m) for m in part.modules()}
            assert torch.nn.GroupNorm in kinds and not kinds & {torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm}
    # GroupNorm is per image: an image's detections do not depend on the rest of the batch, even in train mode
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    taps = model.det1.trunk.train()(x)
    alone = model.det1.trunk(x[:1])
    torch.testing.assert_close(taps[-1][:1], alone[-1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown two-stage norm 'ln'"):
        Trunk("resnet18", norm="ln")


def test_tuning_rows_change_one_thing_each():
    """Rows b..e of the two-stage tuning each differ from the row above them in one recipe field."""
    from studies.two_stage_tuning import ROWS, row_config

    def recipe(row):
        c = row_config("standard", "faster_rcnn", row)
        return {"epochs": c.train.epochs, "norm": c.model.norm, "lr0": c.train.lr0}

    changed = {"b": {"epochs"}, "c": {"norm"}, "d": {"lr0"}, "e": {"lr0"}, "f": {"lr0"}}
    parent = {"b": "a", "c": "b", "d": "c", "e": "c", "f": "e"}
    assert set(changed) | {"a"} == set(ROWS)
    for row, fields in changed.items():
        a, b = recipe(parent[row]), recipe(row)
        assert {k for k in a if a[k] != b[k]} == fields, row
    assert all(not row_config("standard", "faster_rcnn", r).model.dual for r in ROWS)  # static R18 rows
    with pytest.raises(ValueError, match="unknown two-stage tuning row 'z'"):
        row_config("standard", "faster_rcnn", "z")


@pytest.mark.slow
def test_a_tuning_row_trains_and_tabulates_on_smoke(monkeypatch):
    """A tuning row goes through the step-1 loop (validated every epoch) into results/<base>/two_stage_tuning_*."""
    import studies.two_stage_tuning as tuning

    monkeypatch.setitem(
        tuning.ROWS, "a", ("2 epochs, GroupNorm", {"train": {"epochs": 2, "close_mosaic": 1}, "model": {"norm": "gn"}})
    )
    generate_from_config(load_config("smoke_faster_rcnn"), progress=False)
    table = tuning.tuning_table("smoke", "faster_rcnn", rows=("a",), progress=False)
    assert len(table) == 1 and table["AP"].between(0, 1).all() and table["epochs"].item() == 2
    assert tuning_path("smoke", "faster_rcnn").exists()
    assert not table["adopted"].item()  # the smoke config trains BatchNorm


@pytest.mark.slow
def test_val_every_zero_trains_without_validation():
    cfg = load_config("smoke_faster_rcnn", overrides={"model": {"dual": False}, "train": {"epochs": 1, "val_every": 0}})
    generate_from_config(cfg, progress=False)
    from dynamicdet.engine.runs import STEP1
    from dynamicdet.engine.step1 import train_step1

    train_step1(cfg, progress=False)
    metrics = pd.read_csv(STEP1.path(cfg) / "step1_metrics.csv")
    assert len(metrics) == 1 and not [c for c in metrics.columns if c.startswith("det1_")]


def test_generality_summary_reads_gain_capture_and_margins():
    from dynamicdet.experiments.generality import generality_summary

    rows = [
        {"model": "static resnet18", "backbone": "resnet18", "k": np.nan, "AP": 0.40, "latency_ms_b1": 50.0},
        {"model": "static resnet34", "backbone": "resnet34", "k": np.nan, "AP": 0.44, "latency_ms_b1": 70.0},
    ] + [
        {"model": f"Dy /{round(100 * k)}", "backbone": "2x resnet18", "k": k, "AP": ap, "latency_ms_b1": 50 + 20 * k}
        for k, ap in ((0.0, 0.40), (0.5, 0.44), (0.9, 0.455), (1.0, 0.46))
    ]
    s = generality_summary(pd.DataFrame(rows), "AP")
    # c(0.5) = (0.44 - 0.40) / (0.46 - 0.40)
    assert s["gain /100 - /0"] == pytest.approx(0.06) and s["c(0.5)"] == pytest.approx(2 / 3)
    assert s["Dy /90 - resnet34"] == pytest.approx(0.015) and s["Dy /90 - resnet34 (ms)"] == pytest.approx(-2.0)
    rows[-1]["AP"] = 0.39  # detector 2 loses: no capture ratio
    assert np.isnan(generality_summary(pd.DataFrame(rows), "AP")["c(0.5)"])


def test_provenance_records_who_made_each_two_stage_table(tmp_path, monkeypatch):
    """A table keeps its own SHA, one made before the record existed says so, the base run's record stays."""
    import json

    from dynamicdet.engine.runs import TWO_STAGE_TABLE
    from dynamicdet.experiments.generality import record_provenance, table_record_path, two_stage_config

    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path / "results"))
    made = table_record_path(TWO_STAGE_TABLE.path(two_stage_config("smoke", "faster_rcnn")))
    made.parent.mkdir(parents=True)
    made.write_text(json.dumps({"git_sha": "0123abc", "eval_wall_s": 12.5}))
    table = pd.DataFrame(
        [{"model": "static resnet18", "k": np.nan, "train_min": 2.0}, {"model": "Dy /0", "k": 0.0, "train_min": 5.0}]
    )
    prov = tmp_path / "results" / "smoke" / "provenance.json"
    prov.parent.mkdir(parents=True)
    prov.write_text(json.dumps({"git_sha": "yolo-run-sha", "two_stage": {"old": 1}}))
    record_provenance("smoke", {"faster_rcnn": table, "mask_rcnn": table})
    out = json.loads(prov.read_text())
    assert out["git_sha"] == "yolo-run-sha" and out["two_stage"]["old"] == 1  # only two_stage's kinds change
    rec = out["two_stage"]
    assert rec["faster_rcnn"]["table"] == {"git_sha": "0123abc", "eval_wall_s": 12.5}
    assert rec["mask_rcnn"]["table"] == {"git_sha": None, "note": "made before its record was kept"}
    assert rec["faster_rcnn"]["train_min"] == {"dynamic": 5.0, "static resnet18": 2.0}


def test_dy_rows_cost_the_mix_of_the_two_routes_at_their_measured_k(dyn):
    """The two-stage table's Dy /k cost: the timed routes' mix at k, the ends forced by +-inf thresholds."""
    import math

    from dynamicdet.experiments.generality import EASY, HARD, route_mix

    flops, lat = {EASY: 2.0, HARD: 5.0}, {EASY: 50.0, HARD: 80.0}
    assert route_mix(flops, lat, 0.0) == (2.0, 50.0) and route_mix(flops, lat, 1.0) == (5.0, 80.0)
    # cost(0.9) = 0.1 cost_easy + 0.9 cost_hard
    assert route_mix(flops, lat, 0.9) == pytest.approx((4.7, 77.0))
    with pytest.raises(ValueError, match="outside"):
        route_mix(flops, lat, 1.2)
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert not dyn.eval().route(x, math.inf).hard.any() and dyn.route(x, -math.inf).hard.all()


def test_training_one_two_stage_model_rejects_an_unknown_model(capsys):
    from dynamicdet.experiments.generality import main

    with pytest.raises(SystemExit):
        main(["--config", "smoke", "--kind", "faster_rcnn", "--model", "resnet50"])
    err = capsys.readouterr().err
    assert "configs/smoke_faster_rcnn.yaml: model 'resnet50' is not one of ['dynamic', 'resnet18', 'resnet34']" in err


def test_an_error_while_training_one_two_stage_model_is_not_a_usage_error(monkeypatch):
    """Only bad arguments become argparse errors; a ValueError from training keeps its traceback."""
    from dynamicdet.experiments import generality

    def fail(*a, **k):
        raise ValueError("data/smoke/annotations/train.json: broken")

    monkeypatch.setattr(generality, "trained", fail)
    with pytest.raises(ValueError, match="train.json: broken"):
        generality.main(["--config", "smoke", "--kind", "faster_rcnn", "--model", "dynamic"])


@pytest.mark.slow
def test_a_two_stage_model_trained_in_its_own_process_is_the_one_the_table_reuses():
    """`generality --model resnet34` trains the run folder two_stage_table reads (one process per model)."""
    from dynamicdet.engine.runs import STEP1
    from dynamicdet.experiments.generality import main, two_stage_config

    cfg = two_stage_config("smoke", "faster_rcnn")
    generate_from_config(cfg, progress=False)
    assert main(["--config", "smoke", "--kind", "faster_rcnn", "--model", "resnet34"]) == 0
    scfg = static_config(cfg, backbone="resnet34")
    metrics = pd.read_csv(STEP1.path(scfg) / "step1_metrics.csv")
    assert len(metrics) == scfg.train.epochs  # every epoch done: the table's train_step1(resume=True) trains nothing
    assert load_model(scfg, step=1).trunk.name == "resnet34"


@pytest.mark.slow
def test_the_campaigns_two_stage_job_trains_every_model_and_times_nothing(tmp_path, monkeypatch):
    """The seed campaign trains notebook 08's models beside other training; the table (timed) comes later
    and trains nothing more."""
    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path))  # runs of its own: other tests make this table
    from dynamicdet.engine.runs import STEP1, TWO_STAGE_TABLE
    from dynamicdet.experiments.generality import two_stage_config, two_stage_table
    from dynamicdet.experiments.seeds.campaign import campaign

    (job,) = [j for j in campaign("smoke", [0]) if j.name == "two-stage-mask_rcnn"]
    cfg = two_stage_config("smoke", "mask_rcnn")
    assert not job.done()
    job.run()
    assert job.done() and not TWO_STAGE_TABLE.done(cfg)  # trained, not timed
    runs = [STEP1.path(cfg), *(STEP1.path(static_config(cfg, backbone=b)) for b in cfg.eval.static_backbones)]
    stamps = [(r / "step1.pt").stat().st_mtime for r in runs]
    table = two_stage_table("smoke", "mask_rcnn", progress=False)
    assert [(r / "step1.pt").stat().st_mtime for r in runs] == stamps  # the table reused every model
    assert TWO_STAGE_TABLE.done(cfg) and table["latency_ms_b1"].notna().all()


def test_two_stage_latency_is_timed_again_until_its_checks_pass(monkeypatch):
    """A timing with the easy route far under its own static trunk is retried; a consistent one is kept."""
    from dynamicdet.config import load_config
    from dynamicdet.experiments import generality

    easy_times = []  # the easy route's figure at each timing

    def fake(fns, imgs, device, warmup, repeats, segment):
        assert segment == 1  # interleaved image by image
        fixed = {"static resnet18": 173.0, "static resnet34": 200.0, generality.HARD: 260.0}
        fixed[generality.EASY] = easy_times.pop(0)
        return {k: np.full(repeats, fixed[k]) for k in fns}

    monkeypatch.setattr(generality, "stream_times", fake)
    cfg = load_config("quick_faster_rcnn")
    fns = dict.fromkeys(["static resnet18", "static resnet34", generality.EASY, generality.HARD])
    easy_times[:] = [150.0, 172.0, 999.0]  # the quick run's 150 ms beside a static 173 ms, then a fair figure
    lat, checks = generality._checked_latency(fns, [], "cpu", cfg, tries=3)
    assert lat[generality.EASY] == 172.0 and checks["passed"].all() and easy_times == [999.0]
    easy_times[:] = [150.0, 140.0]  # never consistent: the table is still written, with a warning
    with pytest.warns(UserWarning, match="latency checks failed after 2"):
        lat, checks = generality._checked_latency(fns, [], "cpu", cfg, tries=2)
    assert not checks["passed"].all() and not easy_times
    assert set(checks.loc[~checks["passed"], "check"]) == {"same network"}
