"""The dynamic architecture: shapes, links, router, batched routing, per-image loss, costs."""

import pytest
import torch
from ultralytics.utils.nms import non_max_suppression

from dynamicdet.engine.checkpoint import CheckpointError, load_into, save_checkpoint
from dynamicdet.evaluation.cost import cost_table, gflops, route_gflops
from dynamicdet.modeling import routing
from dynamicdet.modeling.losses import DetectionLoss
from dynamicdet.modeling.router import AdaptiveRouter
from dynamicdet.modeling.yolo import FAMILIES, DynamicDetector, build_detector, run_layers

NC = 6


@pytest.fixture(scope="module", params=["yolov8", "yolo11"])
def model(request):
    torch.manual_seed(0)
    return DynamicDetector(request.param, "n", nc=NC).eval()


def _targets():
    return {
        "batch_idx": torch.tensor([0.0, 0.0, 2.0, 3.0]),
        "cls": torch.tensor([[1.0], [3.0], [0.0], [5.0]]),
        "bboxes": torch.tensor(
            [[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5], [0.2, 0.7, 0.1, 0.1]]
        ),
    }


def test_output_shapes_per_mode(model):
    x = torch.rand(2, 3, 64, 64)
    anchors = sum((64 // s) ** 2 for s in (8, 16, 32))
    with torch.no_grad():
        assert model.score(x).shape == (2,)
        assert model.first(x).shape == (2, 4 + NC, anchors)
        assert model.second(x).shape == (2, 4 + NC, anchors)
        r = model.route(x, 0.5)
        assert r.preds.shape == (2, 4 + NC, anchors) and r.hard.shape == (2,) and r.phi.shape == (2,)
    model.train()
    out = model(x)
    model.eval()
    assert out["phi"].shape == (2,)
    for k in ("out1", "out2"):
        assert out[k]["scores"].shape == (2, NC, anchors)
        assert out[k]["boxes"].shape == (2, 64, anchors)


@pytest.mark.slow
def test_scales_build():
    for scale in ("s", "m"):
        m = DynamicDetector("yolov8", scale, nc=NC)
        assert len(m.tap_channels) == 3 and m.tap_channels[0] < m.tap_channels[2]


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown model family 'yolov5'"):
        build_detector("yolov5", "n", NC)


def test_links_feed_b2(model):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        f1 = model.taps(model.backbone1(x))
        y2 = model.backbone2(x, f1)
        y2b = model.backbone2(x, [f * 1.5 + 0.1 for f in f1])
        tap = model.spec.taps[-1]
        assert not torch.allclose(y2[tap], y2b[tap])


def test_zero_links_equal_plain_backbone(model):
    x = torch.rand(2, 3, 64, 64)
    saved = {k: v.clone() for k, v in model.links.state_dict().items()}
    try:
        for p in model.links.parameters():
            p.data.zero_()
        with torch.no_grad():
            f1 = model.taps(model.backbone1(x))
            y2 = model.backbone2(x, f1)
            plain: list = []
            run_layers(model.det2, x, 0, model.spec.n_backbone, plain)
            # the plain ultralytics model's own forward, up to the last backbone layer
            emb = model.det2._predict_once(x, embed=[model.spec.n_backbone - 1])
        for i in model.spec.taps:
            torch.testing.assert_close(y2[i], plain[i])
        torch.testing.assert_close(AdaptiveRouter.pool([y2[model.spec.taps[-1]]]), torch.stack(emb))
    finally:
        model.links.load_state_dict(saved)


def test_links_connect_same_and_deeper_levels():
    m = DynamicDetector("yolov8", "n", nc=NC)
    # B1 level i projects to the widths of B2 levels 0..i
    assert [c.out_channels for c in m.links.proj] == [
        sum(m.link_channels[: i + 1]) for i in range(len(m.link_channels))
    ]
    assert all(c.bias is not None and c.kernel_size == (1, 1) for c in m.links.proj)
    assert FAMILIES["yolo11"].taps == (4, 6, 10)


def test_router_equals_hand_computation():
    torch.manual_seed(1)
    router = AdaptiveRouter(8, reduction=4)
    feats = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    pooled = torch.cat([feats[0].mean((2, 3)), feats[1].mean((2, 3))], 1)
    w1, b1, w2, b2 = router.fc1.weight, router.fc1.bias, router.fc2.weight, router.fc2.bias
    hidden = torch.clamp(pooled @ w1.T + b1, min=0)
    expected = 1 / (1 + torch.exp(-(hidden @ w2.T + b2)))
    torch.testing.assert_close(router(feats), expected.squeeze(1))


def _nms(preds):
    return non_max_suppression(preds, conf_thres=0.001, iou_thres=0.7, max_det=300)


@pytest.mark.parametrize("split", ["mixed", "all_easy", "all_hard"])
def test_route_equals_per_image_routing(model, split):
    torch.manual_seed(2)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        z = model.score_logit(x)
        torch.testing.assert_close(torch.sigmoid(z), model.score(x))
        tau = {"mixed": routing.threshold_for_fraction(z.numpy(), 0.5), "all_easy": float("inf")}.get(split)
        tau = float("-inf") if tau is None else tau  # "all_hard"
        r = model.route(x, tau)
        if split == "mixed":
            assert 0 < int(r.hard.sum()) < 4
        got = _nms(r.preds)
        for i in range(4):
            xi = x[i : i + 1]
            alone = model.second(xi) if bool(r.hard[i]) else model.first(xi)
            want = _nms(alone)[0]
            assert got[i].shape == want.shape
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-3)


def test_route_skips_unused_route(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "head1", lambda y, f=model.head1: calls.append("h1") or f(y))
    monkeypatch.setattr(model, "backbone2", lambda x, f1, f=model.backbone2: calls.append("b2") or f(x, f1))
    with torch.no_grad():
        model.route(torch.rand(2, 3, 64, 64), float("inf"))
        assert calls == ["h1"]
        calls.clear()
        model.route(torch.rand(2, 3, 64, 64), float("-inf"))
        assert calls == ["b2"]


def test_per_image_loss_in_batch_equals_alone(model):
    torch.manual_seed(3)
    crit = DetectionLoss(model.det1)
    x = torch.rand(4, 3, 64, 64)
    t = _targets()
    with torch.no_grad():
        batch_loss = crit.per_image(model.head1(model.backbone1(x))[1], t)
        for i in range(4):
            sel = t["batch_idx"] == i
            ti = {"batch_idx": torch.zeros(int(sel.sum())), "cls": t["cls"][sel], "bboxes": t["bboxes"][sel]}
            raw = model.head1(model.backbone1(x[i : i + 1]))[1]
            alone = crit.per_image(raw, ti)
            for k in ("box", "cls", "dfl", "total"):
                torch.testing.assert_close(batch_loss[k][i], alone[k][0], rtol=1e-5, atol=1e-5)
            # at batch size 1 it is ultralytics' own loss
            ref, _ = crit(raw, ti)
            torch.testing.assert_close(alone["total"][0], ref.sum(), rtol=1e-5, atol=1e-5)
    # image 1 has no objects: finite, box and dfl exactly zero
    assert torch.isfinite(batch_loss["total"]).all()
    assert batch_loss["box"][1] == 0 and batch_loss["dfl"][1] == 0 and batch_loss["cls"][1] > 0


@pytest.mark.slow
def test_step1_gradients_reach_detectors_not_router():
    torch.manual_seed(4)
    m = DynamicDetector("yolov8", "n", nc=NC).train()
    c1, c2 = DetectionLoss(m.det1), DetectionLoss(m.det2)
    out = m(torch.rand(4, 3, 64, 64))
    loss = c1(out["out1"], _targets())[0].sum() + c2(out["out2"], _targets())[0].sum()
    loss.backward()
    assert all(p.grad is None for p in m.router.parameters())
    for part in (m.det1.model[0], m.det1.model[-1], m.det2.model[0], m.det2.model[-1], m.links):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_easy_route_flops_match_ultralytics(model):
    from ultralytics.utils.torch_utils import get_flops

    table = cost_table(model, 160)
    ours = table.loc["easy route (B1+router+H1)", "GFLOPs"] - table.loc["router", "GFLOPs"]
    import copy

    theirs = get_flops(copy.deepcopy(model.det1).fuse(verbose=False), 160)
    assert abs(ours - theirs) / theirs < 0.02
    assert table.loc["hard route (B1+router+links+B2+H2)", "GFLOPs"] > table.loc["easy route (B1+router+H1)", "GFLOPs"]
    assert table.loc["router", "params_M"] * 1e6 == sum(p.numel() for p in model.router.parameters())


def test_fuse_keeps_outputs(model):
    import copy

    x = torch.rand(2, 3, 64, 64)
    fused = copy.deepcopy(model).fuse()
    with torch.no_grad():
        torch.testing.assert_close(fused.second(x), model.second(x), rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(fused.score(x), model.score(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_checkpoint_round_trip_and_errors(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model)
    other = DynamicDetector(model.family, "n", nc=NC)
    load_into(other, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(CheckpointError, match=r"nc: checkpoint has 6, model has 3"):
        load_into(DynamicDetector(model.family, "n", nc=3), path)
    with pytest.raises(CheckpointError, match=r"scale: checkpoint has 'n', model has 's'"):
        load_into(DynamicDetector(model.family, "s", nc=NC), path)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt: not a readable checkpoint"):
        load_into(other, trunc)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not a DynamicDet checkpoint"):
        load_into(other, foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_into(other, tmp_path / "missing.pt")


def test_the_static_scale_ns_costs_what_the_dynamic_model_costs():
    """yolov8ns (ultralytics' scales mechanism, width 0.3125) lies within 10% of Dy /100's GFLOPs, between n and s."""
    size = 192  # the standard config's images
    x = torch.zeros(1, 3, size, size)
    cost = {}
    for scale in ("n", "ns", "s"):
        det = build_detector("yolov8", scale, nc=6).eval()
        cost[scale] = gflops(lambda det=det: det(x))
    _, hard = route_gflops(DynamicDetector("yolov8", "n", nc=6).eval(), size)
    assert cost["n"] < hard < cost["s"]
    assert abs(cost["ns"] / hard - 1) <= 0.10


def test_the_static_model_starts_from_ultralytics_own_initial_weights():
    """For one torch seed, our static yolov8n and ultralytics' DetectionModel (what its trainer builds) hold the
    same initial weights, BN settings and head biases: the two trainers differ in nothing at step 0."""
    from ultralytics.nn.tasks import DetectionModel

    from dynamicdet.modeling.yolo import StaticDetector

    torch.manual_seed(0)
    ours = StaticDetector("yolov8", "n", nc=6).det1.state_dict()
    torch.manual_seed(0)
    theirs = DetectionModel("yolov8n.yaml", nc=6, verbose=False).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
