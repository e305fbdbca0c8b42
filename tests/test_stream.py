"""Route-aware stream batching gives route()'s detections image by image; the latency controller's rule."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from ultralytics.utils.nms import non_max_suppression

from dynamicdet.deploy.stream import LatencyController, StreamScheduler, _Chunk, _Queue
from dynamicdet.modeling import routing
from dynamicdet.modeling.trunks import HeadSizes
from dynamicdet.modeling.two_stage import DynamicTwoStage
from dynamicdet.modeling.yolo import DynamicDetector, StaticDetector

SIZE = 64
SMALL = HeadSizes(fpn_channels=16, head_channels=32, rpn_batch=32, roi_batch=16, detections=20)


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "yolo":
        return DynamicDetector("yolov8", "n", nc=2).eval()
    return DynamicTwoStage("faster_rcnn", "resnet18", nc=3, sizes=SMALL).eval()


def _boxes(kind: str, pred) -> torch.Tensor:
    """Comparable final boxes of one image's prediction: (n, 6) after NMS (YOLO) or torchvision's."""
    if kind == "yolo":
        return non_max_suppression(pred[None], conf_thres=0.001, iou_thres=0.7, max_det=300)[0]
    return torch.cat([pred["boxes"], pred["scores"][:, None], pred["labels"][:, None].float()], 1)


@pytest.mark.slow
@pytest.mark.parametrize("batch_easy", [True, False])
@pytest.mark.parametrize("kind", ["yolo", "two_stage"])
def test_stream_gives_the_detections_of_route_image_by_image_in_input_order(kind, batch_easy):
    model = _model(kind)
    torch.manual_seed(1)
    xs = torch.rand(10, 3, SIZE, SIZE)
    with torch.no_grad():
        z = model.score_logit(xs)
    tau = routing.threshold_for_fraction(z.numpy(), 0.5)  # between two scores, never on one
    sched = StreamScheduler(model, tau, batch=4, batch_easy=batch_easy)
    out = list(sched.run((f"img{i}", x) for i, x in enumerate(xs)))
    assert [r.id for r in out] == [f"img{i}" for i in range(10)]
    for i, r in enumerate(out):
        with torch.no_grad():
            alone = model.route(xs[i : i + 1], tau)
        # scores within float noise (~1e-6) of the threshold may take either route: asserted with a margin only
        if abs(float(z[i]) - tau) > 1e-4:
            assert r.hard == bool(alone.hard[0]) == bool(z[i] >= tau)
            got, want = _boxes(kind, r.preds), _boxes(kind, alone.preds[0])
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
        assert r.latency_ms > 0


def test_queued_images_wait_for_a_full_batch_unless_the_deadline_passes(monkeypatch):
    model = _model("yolo")
    torch.manual_seed(2)
    xs = torch.rand(12, 3, SIZE, SIZE)
    with torch.no_grad():
        z = model.score_logit(xs)
    tau = routing.threshold_for_fraction(z.numpy(), 0.5)  # 6 hard images spread over 3 batches of 4
    hard = (z >= tau).view(3, 4)
    n_hard = int(hard.sum())

    def batches(max_wait_s, batch_easy=True):
        sched = StreamScheduler(model, tau, batch=4, max_wait_s=max_wait_s, batch_easy=batch_easy)
        sizes = {"easy": [], "hard": []}

        def counted(route, stage):  # a route's stage, recording how many images each call predicted
            def wrapped(x, taps):
                preds = stage(x, taps)
                sizes[route].append(len(preds))
                return preds

            return wrapped

        # YOLO's H1 is given no images (x None), only B1's taps: the batch size is the predictions'.
        # The class's own stages are wrapped (not the previous call's wrappers, which count into their own sizes)
        monkeypatch.setattr(model, "easy_stage", counted("easy", type(model).easy_stage.__get__(model)))
        monkeypatch.setattr(model, "hard_stage", counted("hard", type(model).hard_stage.__get__(model)))
        results = list(sched.run(enumerate(xs)))
        assert [r.id for r in results] == list(range(12)) and sum(r.hard for r in results) == n_hard
        return sizes

    full = batches(None)
    for route, n in (("hard", n_hard), ("easy", 12 - n_hard)):  # full batches, the remainder at the end
        assert full[route][:-1] == [4] * (len(full[route]) - 1) and sum(full[route]) == n
    eager = batches(0.0)  # a deadline of 0: every batch's queued images go at once
    assert sum(eager["hard"]) == n_hard and len(eager["hard"]) >= len(full["hard"])
    assert eager["easy"] == [int(n) for n in (~hard).sum(1) if n]
    # batch_easy=False: H1 runs at once on each batch's easy sub-batch
    assert batches(None, batch_easy=False)["easy"] == [int(n) for n in (~hard).sum(1) if n]


def test_queued_images_are_gathered_in_order_and_a_queue_keeps_no_mostly_unused_batch_alive():
    torch.manual_seed(3)
    a, b = torch.rand(8, 3, 4, 4), torch.rand(8, 3, 4, 4)
    fa, fb = [torch.rand(8, 5), None], [torch.rand(8, 5), None]

    def chunk(name, x, feats, rows):  # ids name0, name1, ...; logits = the row numbers
        r = list(range(len(feats[0]))) if rows is None else rows.tolist()
        return _Chunk([f"{name}{j}" for j in r], x, feats, rows, [float(j) for j in r], [0.0] * len(r))

    q = _Queue()
    q.push(chunk("a", a, fa, torch.tensor([1, 3, 4, 6])))  # half of its batch: kept as a reference
    q.push(chunk("b", b, fb, torch.tensor([5])))  # one image of 8: its own copy
    q.push(chunk("c", a, fa, None))
    assert q.chunks[0].x is a and q.chunks[1].x.shape[0] == 1 and q.n == 13
    taken = q.pop(6)  # the first chunk, the second, and one image of the third
    assert [i for c in taken for i in c.ids] == ["a1", "a3", "a4", "a6", "b5", "c0"]
    assert [v for c in taken for v in c.logits] == [1.0, 3.0, 4.0, 6.0, 5.0, 0.0]
    x, feats = _Chunk.gather(taken)
    torch.testing.assert_close(x, torch.cat([a[[1, 3, 4, 6]], b[[5]], a[:1]]))
    torch.testing.assert_close(feats[0], torch.cat([fa[0][[1, 3, 4, 6]], fb[0][[5]], fa[0][:1]]))
    assert feats[1] is None and q.n == 7
    # the rest of the third chunk (7 of 8 rows) stays a reference until a pop leaves 3 of 8: compacted
    assert q.chunks[0].x is a
    first4 = q.pop(4)
    assert [i for c in first4 for i in c.ids] == ["c1", "c2", "c3", "c4"] and first4[0].x is a
    rest = q.chunks[0]
    assert rest.ids == ["c5", "c6", "c7"] and rest.x is not a and rest.x.shape[0] == 3 and rest.rows is None
    torch.testing.assert_close(_Chunk.gather(q.pop(8))[1][0], fa[0][5:])
    # a route that reads no images (YOLO's H1): chunks without them gather and compact the features only
    q.push(chunk("d", None, fb, torch.tensor([2])))
    assert q.chunks[0].x is None and q.chunks[0].feats[0].shape[0] == 1
    x, feats = _Chunk.gather(q.pop(8), images=False)
    assert x is None
    torch.testing.assert_close(feats[0], fb[0][[2]])


def test_controller_sets_the_hard_fraction_from_the_costs_it_measures():
    z = np.linspace(-3, 3, 101)
    c = LatencyController(target_ms=15.0, val_logits=z, lat_easy=10.0, lat_hard=20.0, window=8, memory=0.5)
    # open loop: k = (15 - 10) / (20 - 10)
    assert c.k == pytest.approx(0.5) and c.threshold == routing.threshold_for_fraction(z, 0.5)
    # one window: B1 + router 4 ms/img, H1 2 ms/img, B2 + H2 16 ms/img
    c.observe("first", 4, 16.0)
    c.observe("easy", 2, 4.0)
    c.observe("hard", 2, 32.0)
    assert c.history == []  # 4 of the window's 8 images
    c.observe("first", 4, 16.0)
    # k <- (target - c_first - c_easy) / (c_hard - c_easy) = (15 - 4 - 2) / (16 - 2)
    assert c.k == pytest.approx(9 / 14) and c.threshold == routing.threshold_for_fraction(z, 9 / 14)
    h = c.history[-1]
    assert (h["c_first"], h["c_easy"], h["c_hard"]) == pytest.approx((4.0, 2.0, 16.0))
    assert h["ms_per_image"] == pytest.approx(68.0 / 8) and h["images"] == 8
    # next window: B1 slows to 6 ms/img, no queued batch ran; the past window weighs half (memory),
    # and the routes not taken keep their last costs: c_first = (0.5 * 32 + 48) / (0.5 * 8 + 8)
    c.observe("first", 8, 48.0)
    c_first = (0.5 * 32 + 48) / (0.5 * 8 + 8)
    assert c.k == pytest.approx((15 - c_first - 2) / 14)
    assert c.history[-1]["c_hard"] == pytest.approx(16.0) and c.history[-1]["c_easy"] == pytest.approx(2.0)
    for _ in range(5):
        c.observe("first", 8, 8 * 20.0)  # B1 alone above the target: no hard image fits, k clamped at 0
    assert c.k == 0.0 and c.threshold == np.inf
    # until every kind of batch has been timed, and in the open loop always, k stays where it started
    for closed in (True, False):
        o = LatencyController(target_ms=15.0, val_logits=z, lat_easy=10.0, lat_hard=20.0, window=8, closed=closed)
        o.observe("first", 8, 8 * 100.0)
        o.observe("easy", 8, 8.0)
        o.observe("first", 8, 8 * 100.0)
        assert o.k == pytest.approx(0.5) and len(o.history) == 2
    for bad, match in (
        ({"lat_hard": 10.0}, "must exceed"),
        ({"memory": 1.0}, "memory"),
        ({"window": 0}, "window"),
    ):
        with pytest.raises(ValueError, match=match):
            LatencyController(**{"target_ms": 15.0, "val_logits": z, "lat_easy": 10.0, "lat_hard": 20.0, **bad})
    with pytest.raises(ValueError, match="charge must be one of"):
        c.observe("h2", 8, 1.0)


@pytest.mark.parametrize("batch_easy", [True, False])
def test_the_scheduler_charges_every_image_once_to_each_of_its_batches(batch_easy):
    model = _model("yolo")
    torch.manual_seed(3)
    xs = torch.rand(10, 3, SIZE, SIZE)
    with torch.no_grad():
        z = model.score_logit(xs).numpy()
    # a window longer than the stream: the controller's sums are the raw charges
    c = LatencyController(target_ms=1.5, val_logits=z, lat_easy=1.0, lat_hard=2.0, window=1000)  # k = 0.5
    t0 = time.perf_counter()
    out = list(StreamScheduler(model, c, batch=4, batch_easy=batch_easy).run(enumerate(xs)))
    wall = (time.perf_counter() - t0) * 1e3
    n_hard = sum(r.hard for r in out)
    assert c._n == {"first": 10, "easy": 10 - n_hard, "hard": n_hard}
    assert 0 < n_hard < 10  # k = 0.5 from the calibration: both routes ran
    assert all(c._ms[kind] > 0 for kind in ("first", "easy", "hard"))
    assert sum(c._ms.values()) <= wall  # the charges partition the run's wall time


def test_scheduler_rejects_static_models_and_bad_batches():
    with pytest.raises(TypeError, match="dynamic model"):
        StreamScheduler(StaticDetector("yolov8", "n", nc=2), 0.0)
    with pytest.raises(ValueError, match="batch"):
        StreamScheduler(_model("yolo"), 0.0, batch=0)


def test_the_competing_process_spins_until_stopped_and_rejects_a_bad_duty():
    from dynamicdet.experiments.controller import start_competitor

    p = start_competitor(0.5, seconds=30.0)  # returns once the bare interpreter runs its loop
    try:
        assert p.poll() is None
    finally:
        p.kill()
    assert p.wait() != 0  # killed, not finished
    with pytest.raises(ValueError, match="duty"):
        start_competitor(0.0)
