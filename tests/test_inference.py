"""`dynamicdet predict` and DynamicDetPredictor: your own pictures through a trained smoke model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import ultralytics
import yaml

from dynamicdet import DynamicDetPredictor
from dynamicdet.deploy import predictor
from dynamicdet.engine.checkpoint import CheckpointError
from dynamicdet.engine.runs import STEP2
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.predict import predict
from dynamicdet.experiments import trained
from dynamicdet.modeling import routing

pytestmark = pytest.mark.slow  # every test here uses the trained smoke model
ASSETS = Path(ultralytics.__file__).parent / "assets"  # bus.jpg, zidane.jpg, shipped with ultralytics


@pytest.fixture(scope="module")
def det(smoke_cfg):
    trained(smoke_cfg, progress=False)
    return DynamicDetPredictor.load("smoke")


def test_predict_on_bundled_photos_returns_ultralytics_results_with_routes(det, tmp_path):
    photos = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
    res = det.predict([str(p) for p in photos], hard_fraction=0.5, conf=0.0, progress=False)
    assert [Path(r.path).name for r in res] == ["bus.jpg", "zidane.jpg"]
    for r in res:
        h, w = r.orig_shape
        assert r.route in ("easy", "hard") and 0.0 <= r.phi <= 1.0
        assert set(r.speed) == {"preprocess", "route", "postprocess"}
        xyxy = r.boxes.xyxy.numpy()
        # boxes are in the original picture's pixels (ultralytics' scale_boxes clips to the image)
        assert (xyxy[:, [0, 2]] <= w + 1e-3).all() and (xyxy[:, [1, 3]] <= h + 1e-3).all()
        assert r.plot().shape == (h, w, 3)
        recs = json.loads(r.to_json())
        assert len(recs) == len(r.boxes) > 0 and all("box" in d and "confidence" in d for d in recs)
    assert det.summary.images == 2 and det.summary.easy + det.summary.hard == 2 and not det.summary.failures


def test_the_three_ways_to_pick_the_threshold(det, monkeypatch):
    # the routes' latencies are timed on the machine; fixed here (10 and 20 ms per image) to test the rule
    fixed = {"easy": 10.0, "hard": 20.0, "score": 5.0, "router": 0.1, "noisy": False}
    monkeypatch.setattr(predictor, "route_latencies", lambda *a, **k: {k2: v for k2, v in fixed.items()})
    z = det.val_logits
    # lat_t = 15 ms -> k = (15 - 10) / (20 - 10) = 0.5
    assert det.threshold_for(target_ms=15.0) == (routing.threshold_for_fraction(z, 0.5), 15.0)
    assert det.threshold_for(hard_fraction=0.5)[0] == routing.threshold_for_fraction(z, 0.5)
    assert det.threshold_for()[0] == routing.threshold_for_fraction(z, 0.5)  # default: half the val images
    assert det.threshold_for(threshold=1.5) == (1.5, None)
    with pytest.warns(UserWarning, match="outside the reachable range"):
        tau, target = det.threshold_for(target_ms=1e9)  # out of reach: clipped to all hard
    assert target == 1e9 and tau == -np.inf
    monkeypatch.setattr(predictor, "route_latencies", lambda *a, **k: {**fixed, "hard": 9.0, "noisy": True})
    with pytest.raises(ValueError, match="too busy to calibrate"):
        det.threshold_for(target_ms=15.0)
    with pytest.raises(ValueError, match="at most one"):
        det.threshold_for(hard_fraction=0.5, threshold=0.0)
    res = det.predict(str(ASSETS / "bus.jpg"), threshold=float("inf"), progress=False)
    assert res[0].route == "easy"
    res = det.predict(str(ASSETS / "bus.jpg"), hard_fraction=1.0, progress=False)
    assert res[0].route == "hard"


def test_predict_equals_the_evaluation_path_on_val_images(det, smoke_cfg):
    """Same detections as the routed val evaluation (letterbox, route(), NMS, boxes to original pixels)."""
    tr = trained(smoke_cfg, progress=False)
    tau = routing.threshold_for_fraction(det.val_logits, 0.5)
    loader = val_loader(smoke_cfg, tr.info, batch=1)
    ref, hard = predict(lambda x: tr.model.route(x, tau), loader, tr.info.file_to_image_id["val"], conf=0.001)
    files = sorted(loader.dataset.im_files)
    res = det.predict(files, threshold=tau, conf=0.001, batch=3, progress=False)
    for r in res:
        image_id = tr.info.file_to_image_id["val"][Path(r.path).name]
        z = float(r.logit)
        if abs(z - tau) > 1e-4:  # a score within float noise of the threshold may take either route
            assert (r.route == "hard") == hard[image_id]
            got = np.concatenate([r.boxes.xyxy.numpy(), r.boxes.conf.numpy()[:, None]], 1)
            want = ref[image_id][:, :5]
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-2)


def test_a_target_latency_runs_the_stream_with_the_closed_loop_controller(det, smoke_cfg, monkeypatch):
    # calibration fixed (10 and 20 ms per image) so the open-loop start is k = 0.5; the loop then moves k
    fixed = {"easy": 20.0, "hard": 40.0, "score": 5.0, "router": 0.1, "noisy": False}  # per batch of 2
    monkeypatch.setattr(predictor, "route_latencies", lambda *a, **k: dict(fixed))
    files = sorted(val_loader(smoke_cfg, trained(smoke_cfg, progress=False).info, batch=1).dataset.im_files)
    files = files * max(1, -(-24 // len(files)))  # at least 24 pictures: one controller window of 16 or more
    res = det.predict(files, target_ms=15.0, batch=2, progress=False)
    assert len(res) == len(files) and [r.path for r in res] == files  # input order kept by the scheduler
    hist = det.summary.controller
    assert len(hist) >= 1 and all(0.0 <= h["k"] <= 1.0 and h["ms_per_image"] > 0 for h in hist)
    assert det.summary.threshold == hist[-1]["threshold"]
    assert all(r.speed["route"] > 0 for r in res)


def test_missing_and_corrupt_pictures_are_listed_and_the_others_processed(det, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg")
    res = det.predict([str(ASSETS / "bus.jpg"), str(tmp_path / "nope.jpg"), str(bad)], progress=False)
    assert [Path(r.path).name for r in res] == ["bus.jpg"]
    failures = det.summary.failures
    assert any("nope.jpg: not found" in f for f in failures) and any("corrupt.jpg: unreadable" in f for f in failures)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.pt: checkpoint file not found"):
        DynamicDetPredictor.load(tmp_path / "nothing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint"):
        DynamicDetPredictor.load(junk)


def test_cli_predict_writes_annotations_json_and_summary(det, smoke_cfg, tmp_path):
    out = tmp_path / "pred"
    weights = STEP2.path(smoke_cfg) / "step2.pt"
    video = tmp_path / "clip.avi"  # two frames: saved as clip_000001.jpg, clip_000002.jpg
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for _ in range(2):
        writer.write(cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (320, 240)))
    writer.release()
    cmd = [sys.executable, "-m", "dynamicdet.cli", "predict", str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]
    r = subprocess.run(
        [*cmd, str(video), str(tmp_path / "missing.jpg"), "--weights", str(weights), "--hard-fraction", "0.5"]
        + ["--save", str(out)],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1, r.stderr[-2000:]  # one input missing: the others processed, non-zero exit
    assert "missing.jpg: not found" in r.stderr and "Traceback" not in r.stderr
    saved = {"bus.jpg", "zidane.jpg", "clip_000001.jpg", "clip_000002.jpg"}
    assert all((out / name).exists() for name in saved)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["easy"] + summary["hard"] == 4 and len(summary["failures"]) == 1
    assert summary["scheduler"] == "route"  # batch 1, no target latency
    preds = json.loads((out / "predictions.json").read_text())
    assert all({"image_id", "file_name", "bbox", "score", "route", "phi"} <= set(p) for p in preds)
    # a bad weights file: one line naming it, exit code 2, no traceback
    r = subprocess.run(
        [*cmd, "--weights", str(tmp_path / "none.pt")], env={**os.environ}, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and "none.pt: checkpoint file not found" in r.stderr and "Traceback" not in r.stderr


def test_load_reads_a_config_given_by_path_not_as_weights(smoke_cfg, tmp_path):
    """A config file of your own is a config (its run folder), never mistaken for a checkpoint."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({**smoke_cfg.to_dict(), "name": "mine"}))
    with pytest.raises(CheckpointError, match="config 'mine' has no trained model yet"):
        DynamicDetPredictor.load(mine)
