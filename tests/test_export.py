"""ONNX export: the three static pieces on onnxruntime route exactly as the torch model does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import ultralytics

from dynamicdet import DynamicDetPredictor
from dynamicdet.deploy.export import META, OnnxDynamicDetector, export_onnx
from dynamicdet.engine.checkpoint import CheckpointError
from dynamicdet.engine.runs import STEP2
from dynamicdet.engine.validate import val_loader
from dynamicdet.experiments import trained
from dynamicdet.modeling import routing
from dynamicdet.modeling.yolo import DynamicDetector, StaticDetector

ASSETS = Path(ultralytics.__file__).parent / "assets"  # bus.jpg, zidane.jpg, shipped with ultralytics
PHOTOS = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
ATOL = 1e-3  # raw predictions: box centres/sizes in input pixels and class probabilities


def _routes(model, runner, x: torch.Tensor) -> None:
    """Every route (all easy, all hard, a split batch) gives the same raw predictions and routes."""
    with torch.no_grad():
        z = model.score_logit(x)
    taus = [float("inf"), float("-inf")]
    if len(x) > 1:
        taus.append(routing.threshold_for_fraction(z.numpy(), 0.5))  # midway between two scores: a real split
    for tau in taus:
        with torch.no_grad():
            want = model.route(x, tau)
        got = runner.route(x, tau)
        assert torch.equal(got.hard, want.hard), tau
        assert got.preds.shape == want.preds.shape
        assert torch.allclose(got.preds, want.preds, atol=ATOL, rtol=0), float((got.preds - want.preds).abs().max())
        assert torch.allclose(got.logit, want.logit, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    torch.manual_seed(0)
    model = DynamicDetector("yolov8", "n", nc=6).eval()
    folder = export_onnx(model, tmp_path_factory.mktemp("onnx"), 64, [f"c{i}" for i in range(6)], np.arange(10.0))
    return model, OnnxDynamicDetector(folder), folder


def test_export_writes_three_graphs_and_the_metadata(untrained):
    _, runner, folder = untrained
    assert sorted(p.name for p in folder.iterdir()) == ["dynamicdet.json", "hard.onnx", "head1.onnx", "stage1.onnx"]
    assert runner.img_size == 64 and runner.names == [f"c{i}" for i in range(6)]
    assert np.array_equal(runner.val_logits, np.arange(10.0))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_routes_match_torch_at_any_batch_size(untrained, batch):
    model, runner, _ = untrained
    x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    _routes(model, runner, x)  # exported at batch 2: the batch axis is dynamic


def test_onnx_routes_match_torch_on_the_bundled_photos(untrained):
    model, runner, _ = untrained
    det = DynamicDetPredictor(model, [f"c{i}" for i in range(6)], 64, None)
    x = det._preprocess([cv2.imread(str(p)) for p in PHOTOS])  # letterboxed as predict() does
    _routes(model, runner, x)


def test_export_refuses_a_static_model(tmp_path):
    with pytest.raises(ValueError, match="dynamic detectors"):
        export_onnx(StaticDetector("yolov8", "n", nc=2), tmp_path, 64, ["a", "b"])


def test_a_broken_export_folder_is_named_in_the_error(untrained, tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path.name}: not an ONNX export"):
        OnnxDynamicDetector(tmp_path)
    _, _, folder = untrained
    (tmp_path / META).write_text((folder / META).read_text())
    with pytest.raises(CheckpointError, match=r"missing: stage1\.onnx, head1\.onnx, hard\.onnx"):
        OnnxDynamicDetector(tmp_path)
    (tmp_path / META).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"dynamicdet\.json: not valid JSON"):
        OnnxDynamicDetector(tmp_path)


@pytest.mark.slow
def test_cli_export_of_the_trained_model_matches_torch_on_photos_and_val_images(smoke_cfg, tmp_path):
    tr = trained(smoke_cfg, progress=False)
    weights = STEP2.path(smoke_cfg) / "step2.pt"
    out = tmp_path / "onnx"
    cmd = [sys.executable, "-m", "dynamicdet.cli"]
    r = subprocess.run(
        [*cmd, "export", "--weights", str(weights), "--out", str(out)],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max |diff|" in r.stdout
    det_onnx = DynamicDetPredictor.load(out)
    det_torch = DynamicDetPredictor.load(weights)
    assert isinstance(det_onnx.model, OnnxDynamicDetector)
    assert np.allclose(det_onnx.val_logits, det_torch.val_logits)
    model = det_torch.model
    # ultralytics' photos (letterboxed) and a batch of val images, every route
    _routes(model, det_onnx.model, det_torch._preprocess([cv2.imread(str(p)) for p in PHOTOS]))
    x = next(iter(val_loader(smoke_cfg, tr.info, batch=6)))["img"].float() / 255
    _routes(model, det_onnx.model, x)
    # predict through the export: same routes and boxes as through torch
    kw = {"hard_fraction": 0.5, "conf": 0.05, "progress": False}
    a, b = det_onnx.predict([str(p) for p in PHOTOS], **kw), det_torch.predict([str(p) for p in PHOTOS], **kw)
    for ra, rb in zip(a, b, strict=True):
        assert ra.route == rb.route
        assert ra.boxes.xyxy.shape == rb.boxes.xyxy.shape
        assert torch.allclose(ra.boxes.xyxy, rb.boxes.xyxy, atol=1e-2)
    # and from the command line
    save = tmp_path / "pred"
    r = subprocess.run(
        [*cmd, "predict", str(PHOTOS[0]), "--weights", str(out), "--save", str(save)],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((save / "summary.json").read_text())["images"] == 1 and (save / "bus.jpg").exists()
