"""One route: every dynamic model, torch or onnxruntime, YOLO or two-stage, routed by the same code.

``routing.route`` is the only route split; the stream scheduler, the ONNX runner and the
predictor run the three stages of ``routing.RoutedDetector``. Here: the split itself on a toy
model, then a smoke-sized Dy-Faster R-CNN (random weights, 64 px) through the ONNX export, the
stream scheduler and the predictor, next to the YOLO model where a runtime is new to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import ultralytics

from dynamicdet import DynamicDetPredictor
from dynamicdet.deploy.export import OnnxDynamicDetector, export_onnx
from dynamicdet.deploy.stream import StreamScheduler
from dynamicdet.modeling import routing
from dynamicdet.modeling.routing import RoutedDetector
from dynamicdet.modeling.trunks import HeadSizes
from dynamicdet.modeling.two_stage import DynamicTwoStage, TwoStageDetector
from dynamicdet.modeling.yolo import DynamicDetector, StaticDetector

SIZE = 64
SMALL = HeadSizes(fpn_channels=16, head_channels=32, rpn_batch=32, roi_batch=16, detections=20)
ATOL = 1e-3  # boxes in input pixels, scores, logits: onnxruntime vs torch, batched vs alone
MARGIN = 1e-4  # a logit closer than this to the threshold may take either route (float noise ~1e-6)
PHOTOS = [Path(ultralytics.__file__).parent / "assets" / n for n in ("bus.jpg", "zidane.jpg")]


# ---------------------------------------------------------------- the split, on a toy model
class _Toy:
    """A RoutedDetector whose stages record their calls: preds = 10 * image index (+ 1000 when hard)."""

    easy_reads_images = False

    def __init__(self, as_list: bool):
        self.as_list, self.calls = as_list, []

    def first_stage(self, x):
        self.calls.append(("first", len(x)))
        return x[:, 0, 0, 0], [x[:, :1] * 10]  # logit = the first pixel; one tap

    def _preds(self, taps, offset):
        p = taps[0][:, 0, 0, 0] + offset
        return [{"v": v} for v in p] if self.as_list else p[:, None]

    def easy_stage(self, x, taps):
        self.calls.append(("easy", None if x is None else len(x), len(taps[0])))
        return self._preds(taps, 0.0)

    def hard_stage(self, x, taps):
        self.calls.append(("hard", len(x), len(taps[0])))
        return self._preds(taps, 1000.0)


@pytest.mark.parametrize("as_list", [False, True])
def test_route_splits_merges_in_input_order_and_skips_the_route_no_image_takes(as_list):
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()  # logits 0..4
    toy = _Toy(as_list)
    assert isinstance(toy, RoutedDetector)
    out = routing.route(toy, x, 2.5)  # z >= 2.5: images 3 and 4 hard
    values = [float(p["v"]) for p in out.preds] if as_list else out.preds[:, 0].tolist()
    assert values == [0.0, 10.0, 20.0, 1030.0, 1040.0]
    assert out.hard.tolist() == [False, False, False, True, True]
    torch.testing.assert_close(out.phi, torch.sigmoid(out.logit))
    assert toy.calls == [("first", 5), ("easy", None, 3), ("hard", 2, 2)]  # H1 reads no images here
    toy.calls.clear()
    routing.route(toy, x, -np.inf)  # all hard: H1 never runs, nothing is copied
    routing.route(toy, x, np.inf)
    assert toy.calls == [("first", 5), ("hard", 5, 5), ("first", 5), ("easy", 5, 5)]
    toy.easy_reads_images = True
    toy.calls.clear()
    routing.route(toy, x, 0.5)
    assert toy.calls[1] == ("easy", 1, 1)


def test_static_models_are_no_routed_detectors():
    assert not isinstance(StaticDetector("yolov8", "n", nc=2), RoutedDetector)
    assert not isinstance(TwoStageDetector("faster_rcnn", "resnet18", nc=2, sizes=SMALL), RoutedDetector)


# ---------------------------------------------------------------- comparing detections honestly
def _rows(pred) -> torch.Tensor:
    """One image's final detections as (n, 6) [x1, y1, x2, y2, score, label] (a torchvision dict or rows)."""
    if isinstance(pred, dict):
        return torch.cat([pred["boxes"], pred["scores"][:, None], pred["labels"][:, None].float()], 1)
    return pred


def _same_detections(got, want, atol: float = ATOL) -> None:
    """The same detections within ``atol``, matched row to row regardless of their order.

    torchvision sorts an image's detections by score; two rows whose scores agree to within float
    noise (onnxruntime's kernels and torch's, or a batch and an image alone, differ in the last
    bits) may come in either order, so rows are paired by label, score and box, each row once,
    instead of by position. Counts must agree: the random-weight models here keep fewer than
    their cap of detections, so no tie sits at a cut.
    """
    got, want = _rows(got), _rows(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    free = list(range(len(want)))
    for row in got:
        close = [j for j in free if row[5] == want[j, 5] and torch.allclose(row[:5], want[j, :5], atol=atol, rtol=0)]
        assert close, f"no match for {row.tolist()}"
        free.remove(close[0])


# ---------------------------------------------------------------- ONNX export of both kinds
def _dynamic(kind: str):
    torch.manual_seed(0)
    if kind == "yolo":
        return DynamicDetector("yolov8", "n", nc=3).eval()
    return DynamicTwoStage(kind, "resnet18", nc=3, sizes=SMALL).eval()


@pytest.fixture(scope="module", params=["faster_rcnn", "yolo"])
def exported(request, tmp_path_factory):
    model = _dynamic(request.param)
    folder = export_onnx(model, tmp_path_factory.mktemp(f"onnx_{request.param}"), SIZE, ["a", "b", "c"])
    return request.param, model, OnnxDynamicDetector(folder), folder


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _same_preds(kind: str, got, want) -> None:
    if kind == "yolo":  # raw predictions, one tensor per batch or per image
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=ATOL, rtol=0), float((got - want).abs().max())
    else:
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _same_detections(g, w)


def test_the_export_records_its_graphs_inputs_and_outputs(exported):
    kind, model, runner, folder = exported
    assert isinstance(model, RoutedDetector) and isinstance(runner, RoutedDetector)
    meta = json.loads((folder / "dynamicdet.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == ["dynamicdet.json", "hard.onnx", "head1.onnx", "stage1.onnx"]
    if kind == "yolo":
        assert (meta["family"], meta["per_image"], meta["outputs"]) == ("yolov8", False, ["preds"])
        assert meta["taps"] == ["f1_0", "f1_1", "f1_2"]
    else:
        assert (meta["kind"], meta["backbone"], meta["per_image"]) == ("faster_rcnn", "resnet18", True)
        assert meta["outputs"] == ["boxes", "labels", "scores"] and len(meta["taps"]) == 4  # torchvision's order
    assert runner.per_image == (kind != "yolo") and runner.names == ["a", "b", "c"]


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_routes_match_torch_for_both_kinds(exported, batch):
    """All easy, all hard and a split batch: the same routes, logits and detections as torch."""
    kind, model, runner, _ = exported
    x = _images(batch, seed=batch)
    with torch.no_grad():
        z = model.score_logit(x)
    taus = [float("inf"), float("-inf")]
    if batch > 1:
        taus.append(routing.threshold_for_fraction(z.numpy(), 0.4))  # midway between two scores: a real split
    for tau in taus:
        with torch.no_grad():
            want = model.route(x, tau)
        got = runner.route(x.numpy(), tau)  # numpy in, torch out
        assert torch.equal(got.hard, want.hard), tau
        assert torch.allclose(got.logit, want.logit, atol=ATOL, rtol=0)
        _same_preds(kind, got.preds, want.preds)
        if kind == "yolo":
            continue
        for i, p in enumerate(got.preds):  # a whole route on the runner agrees image by image
            ref = (runner.second if got.hard[i] else runner.first)(x[i : i + 1])[0]
            _same_detections(p, ref)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_the_stream_scheduler_gives_route_s_detections_for_either_runtime(exported, runtime):
    """Queued sub-batches through the model's stages: each image as ``route()`` gives it."""
    kind, model, runner, _ = exported
    m = model if runtime == "torch" else runner
    xs = _images(7, seed=11)
    with torch.no_grad():
        z = model.score_logit(xs)
        tau = routing.threshold_for_fraction(z.numpy(), 0.5)  # between two scores, never on one
        want = m.route(xs, tau)
        out = list(StreamScheduler(m, tau, batch=3).run((f"img{i}", x) for i, x in enumerate(xs)))
    assert [r.id for r in out] == [f"img{i}" for i in range(7)]
    assert 0 < int(want.hard.sum()) < 7
    for i, r in enumerate(out):
        if abs(float(z[i]) - tau) > MARGIN:
            assert r.hard == bool(want.hard[i])
            _same_preds(kind, r.preds[None] if kind == "yolo" else [r.preds], want.preds[i : i + 1])
        assert abs(r.logit - float(want.logit[i])) < ATOL


def test_the_predictor_routes_either_kind_and_its_export_alike(exported):
    """``predict`` on photos: route() at batch 1, the stream at batch 2, and the ONNX export agree.

    Boxes are compared for the two-stage model. A random-weight YOLO scores every box about 1e-4,
    so NMS among such near-ties keeps other boxes for noise-level differences: only its routes are
    compared here (the trained smoke model's boxes: ``test_export.py``, ``test_inference.py``).
    """
    kind, model, runner, _ = exported
    names = ["a", "b", "c"]
    det = DynamicDetPredictor(model, names, SIZE, None)
    x = det._preprocess([cv2.imread(str(p)) for p in PHOTOS])  # letterboxed as predict() does
    with torch.no_grad():
        z = model.score_logit(x)
    tau = float(z.mean())  # midway between the two photos: one of each route
    files = [str(p) for p in PHOTOS]
    runs = {
        "route": det.predict(files, threshold=tau, conf=0.0, progress=False),
        "stream": det.predict(files, threshold=tau, conf=0.0, batch=2, progress=False),
        "onnx": DynamicDetPredictor(runner, names, SIZE, None).predict(
            files, threshold=tau, conf=0.0, batch=2, progress=False
        ),
    }
    assert det.summary.scheduler == "stream"
    ref = runs["route"]
    assert sorted(r.route for r in ref) == ["easy", "hard"]
    for name, res in runs.items():
        assert [Path(r.path).name for r in res] == ["bus.jpg", "zidane.jpg"], name
        for a, b in zip(res, ref, strict=True):
            assert a.route == b.route, name
            if kind != "yolo":
                assert len(b.boxes) > 0
                # boxes in the photos' pixels (about 12x the network's 64 px): the tolerance scales with them
                _same_detections(a.boxes.data, b.boxes.data, atol=2e-2)


@pytest.mark.slow
def test_mask_rcnn_exports_with_its_masks(tmp_path):
    model = _dynamic("mask_rcnn")
    runner = OnnxDynamicDetector(export_onnx(model, tmp_path, SIZE, ["a", "b", "c"]))
    assert runner.outputs == ["boxes", "labels", "scores", "masks"]
    x = _images(3, seed=5)
    with torch.no_grad():
        tau = routing.threshold_for_fraction(model.score_logit(x).numpy(), 0.5)
        want = model.route(x, tau)
    got = runner.route(x, tau)
    assert torch.equal(got.hard, want.hard)
    for g, w in zip(got.preds, want.preds, strict=True):
        _same_detections(g, w)
        assert g["masks"].shape == w["masks"].shape == (len(w["boxes"]), 1, SIZE, SIZE)
        # masks pasted by torchvision's ONNX loop: the same pixels on (after sorting, as the rows may swap)
        on_g, on_w = [(m > 0.5).sum((1, 2, 3)).sort()[0] for m in (g["masks"], w["masks"])]
        assert torch.allclose(on_g.float(), on_w.float(), atol=2)
