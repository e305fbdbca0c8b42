"""Use a trained dynamic detector on your own pictures.

::

    from dynamicdet import DynamicDetPredictor

    det = DynamicDetPredictor.load("standard")            # a config name, or a step2.pt path
    results = det.predict("bus.jpg", hard_fraction=0.5)   # or target_ms=..., or threshold=...
    results[0].route, results[0].phi                      # "easy" | "hard", difficulty score
    results[0].plot(); results[0].save("out.jpg"); results[0].to_json()

Sources, letterboxing and results are ultralytics' own (``load_inference_source``,
``LetterBox``, ``Results``), so a result behaves as an ultralytics user expects; each also
carries the route it took, phi, the router logit and the time per stage. The model may be a
YOLO or a two-stage dynamic detector, or either's ONNX export on onnxruntime: all are routed by
``route()`` or the stream scheduler through the same three stages
(:class:`~dynamicdet.modeling.routing.RoutedDetector`). Two-stage results carry boxes (masks are
not drawn). Annotated pictures and COCO records: :mod:`dynamicdet.deploy.outputs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm
from ultralytics.data import load_inference_source
from ultralytics.data.augment import LetterBox
from ultralytics.data.loaders import LoadImagesAndVideos
from ultralytics.engine.results import Results
from ultralytics.utils.ops import scale_boxes

from dynamicdet.config import ConfigError, config_from_dict, load_config
from dynamicdet.data.coco import DatasetError, prepare_dataset
from dynamicdet.deploy.export import OnnxDynamicDetector, is_export
from dynamicdet.deploy.outputs import detection_rows, is_video
from dynamicdet.deploy.stream import LatencyController, StreamScheduler
from dynamicdet.engine.build import build_model, is_dynamic, resolve_device
from dynamicdet.engine.checkpoint import CheckpointError, load_into, read_checkpoint
from dynamicdet.engine.runs import STEP2
from dynamicdet.evaluation.speed import route_latencies
from dynamicdet.modeling import routing


@dataclass
class PredictSummary:
    """What a :meth:`DynamicDetPredictor.predict` call did."""

    images: int = 0
    hard: int = 0
    threshold: float = 0.0  # on the router logit (closed loop: the last one used)
    target_ms: float | None = None  # per image, when asked for a target latency
    ms_per_image: float = 0.0  # achieved: preprocess + route + NMS, averaged over the images
    failures: list[str] = field(default_factory=list)  # "<file>: <problem>" for every input skipped
    controller: list[dict] = field(default_factory=list)  # closed loop: per window, measured ms/img, k, threshold
    scheduler: str = "route"  # "stream" (route-aware batching) or "route" (each batch through route())

    @property
    def easy(self) -> int:
        return self.images - self.hard


class DynamicDetPredictor:
    """A trained dynamic detector ready for pictures (see the module docstring).

    Args:
        model: a trained dynamic model (:func:`~dynamicdet.engine.build.build_model` + step 2 weights),
            or its ONNX export on onnxruntime (:class:`~dynamicdet.deploy.export.OnnxDynamicDetector`).
        names: class names, by class index.
        img_size: network input side (letterboxed).
        val_logits: the router's logits on the val split (from step 2), for thresholds by
            hard fraction or target latency; None: only explicit thresholds work.
        device: where to run.
    """

    def __init__(self, model, names: list[str], img_size: int, val_logits: np.ndarray | None, device="auto"):
        if isinstance(model, OnnxDynamicDetector):  # onnxruntime on the CPU; inputs stay torch tensors
            self.device, self.model = torch.device("cpu"), model
        elif not is_dynamic(model):
            raise ValueError("predict needs a dynamic model (two routes and a router); this one is static")
        else:
            self.device = resolve_device(device) if isinstance(device, str) else device
            self.model = model.to(self.device).eval()
        self.names = dict(enumerate(names))
        self.img_size = img_size
        self.val_logits = val_logits
        self.letterbox = LetterBox((img_size, img_size), auto=False, stride=32)
        self.summary = PredictSummary()

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, config_or_weights: str | Path, device: str = "auto") -> DynamicDetPredictor:
        """From a config (a shipped name or a ``.yaml`` path: its trained step-2 model), a ``step2.pt`` path or
        an ONNX export folder.

        Raises:
            ConfigError / CheckpointError: unknown config, config not trained yet, unreadable
                or foreign checkpoint (the message names the file).
        """
        p = Path(config_or_weights)
        if is_export(p):
            ort_model = OnnxDynamicDetector(p)
            return cls(ort_model, ort_model.names, ort_model.img_size, ort_model.val_logits)
        if p.suffix == ".pt" or (p.is_file() and p.suffix not in (".yaml", ".yml")):
            return cls.from_weights(p, device)
        cfg = load_config(str(config_or_weights))
        weights = STEP2.path(cfg) / "step2.pt"
        if not weights.exists():
            raise CheckpointError(
                f"{weights}: config {cfg.name!r} has no trained model yet; run `dynamicdet train --config "
                f"{cfg.name} --step 2` (or `make reproduce CONFIG={cfg.name}`) first"
            )
        return cls.from_weights(weights, device)

    @classmethod
    def from_weights(cls, path: str | Path, device: str = "auto") -> DynamicDetPredictor:
        """From a step-2 checkpoint; its val scores (``val_scores.csv`` beside it) give the thresholds."""
        path = Path(path)
        ckpt = read_checkpoint(path)
        if "config" not in ckpt:
            raise CheckpointError(f"{path}: checkpoint carries no config (not written by step 2)")
        try:
            cfg = config_from_dict(ckpt["config"], source=str(path))
        except ConfigError as e:
            raise CheckpointError(f"{path}: its config does not load: {e}") from None
        nc = ckpt["model_config"]["nc"]
        model = build_model(cfg, nc=nc)
        if not is_dynamic(model):
            raise CheckpointError(f"{path}: a static model's checkpoint; predict needs a step-2 (dynamic) one")
        load_into(model, path)
        names = ckpt.get("names") or _dataset_names(cfg, nc)
        scores = path.parent / "val_scores.csv"
        val_logits = pd.read_csv(scores)["logit"].to_numpy() if scores.exists() else None
        return cls(model, names, cfg.data.img_size, val_logits, device)

    # ---------------------------------------------------------------- thresholds
    def threshold_for(
        self,
        target_ms: float | None = None,
        hard_fraction: float | None = None,
        threshold: float | None = None,
        batch: int = 1,
    ) -> tuple[float, float | None]:
        """The logit threshold for exactly one of the three ways to ask (none: hard fraction 0.5).

        ``target_ms`` times the easy and hard routes on this machine now (random inputs at
        ``batch``), then k = (target - lat_easy) / (lat_hard - lat_easy), clipped to [0, 1]
        with a warning when the target is out of reach; ``hard_fraction`` k picks the
        threshold with a fraction k of the val images above it.

        Returns:
            ``(tau, target_ms)``.
        """
        given = [v is not None for v in (target_ms, hard_fraction, threshold)]
        if sum(given) > 1:
            raise ValueError("give at most one of target_ms, hard_fraction, threshold")
        if threshold is not None:
            return float(threshold), None
        if self.val_logits is None:
            raise ValueError("no val scores beside the checkpoint: give an explicit threshold (on the router logit)")
        if target_ms is not None:
            if isinstance(self.model, OnnxDynamicDetector):
                lat = self.model.route_latencies(batch, warmup=2, repeats=10)
            else:
                lat = route_latencies(self.model, self.img_size, batch, self.device, warmup=2, repeats=10)
            if lat["noisy"]:
                raise ValueError(
                    "the machine is too busy to calibrate a target latency now (the hard route timed no slower "
                    "than the easy one); try again, or ask for a hard fraction instead"
                )
            # per image: lat_easy, lat_hard at this batch size
            easy, hard = lat["easy"] / batch, lat["hard"] / batch
            self._lat_per_image = (easy, hard)
            return routing.threshold_for_latency(self.val_logits, target_ms, easy, hard, clip=True), target_ms
        k = 0.5 if hard_fraction is None else hard_fraction
        return routing.threshold_for_fraction(self.val_logits, k), None

    # ---------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(
        self,
        source,
        target_ms: float | None = None,
        hard_fraction: float | None = None,
        threshold: float | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        batch: int = 1,
        max_wait_s: float | None = None,
        progress: bool = True,
    ) -> list[Results]:
        """Detect on every picture of ``source`` (a file, folder, glob, video, or a list of them).

        Results come pictures first (in the given order), then each video's frames.

        With ``batch`` > 1 or a ``target_ms``, the pictures flow through the
        route-aware :class:`~dynamicdet.deploy.stream.StreamScheduler` (full B1 + router batches, then
        each image queued until a full batch of its route or ``max_wait_s``); with ``target_ms`` its
        threshold comes from a :class:`~dynamicdet.deploy.stream.LatencyController` that starts at the
        open-loop threshold and corrects the hard fraction from the measured times (its history
        is in ``self.summary.controller``). Otherwise each batch goes through ``route()``.

        Each returned ``Results`` has boxes in the original image's pixels and extra
        attributes ``route`` ("easy" | "hard"), ``phi``, ``logit``; its ``speed`` holds the
        milliseconds per image of each stage (preprocess, route, postprocess; in the stream,
        route = the image's time from entering the scheduler to its detections). Missing or
        unreadable pictures are skipped and listed in ``self.summary.failures``.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        tau, target = self.threshold_for(target_ms, hard_fraction, threshold, batch)
        sources, failures = _existing(source)
        self.summary = PredictSummary(threshold=tau, target_ms=target, failures=failures)
        if not sources:
            return []
        batches = tqdm(_batches(sources, batch), desc="predict", disable=not progress, leave=False)
        nms = {"conf": conf, "iou": iou, "max_det": max_det}
        t_start = time.perf_counter()
        streamed = batch > 1 or target is not None
        self.summary.scheduler = "stream" if streamed else "route"
        if streamed:
            out = self._predict_stream(batches, tau, target, batch, max_wait_s, nms)
        else:
            out = self._predict_batches(batches, tau, nms)
        self.summary.images = len(out)
        self.summary.hard = sum(r.route == "hard" for r in out)
        self.summary.ms_per_image = (time.perf_counter() - t_start) * 1e3 / max(len(out), 1)
        return out

    def _predict_batches(self, batches, tau: float, nms: dict) -> list[Results]:
        """Every batch through ``route(x, tau)``, then NMS (YOLO) or the confidence cut (two-stage)."""
        out: list[Results] = []
        for paths, im0s, _ in batches:
            t0 = time.perf_counter()
            x = self._preprocess(im0s)
            t1 = time.perf_counter()
            r = self.model.route(x, tau)
            t2 = time.perf_counter()
            dets = detection_rows(r.preds, **nms)
            t3 = time.perf_counter()
            n = len(im0s)
            speed = {
                "preprocess": (t1 - t0) * 1e3 / n,
                "route": (t2 - t1) * 1e3 / n,
                "postprocess": (t3 - t2) * 1e3 / n,
            }
            for i, (path, im0, d) in enumerate(zip(paths, im0s, dets, strict=True)):
                out.append(self._result(path, im0, x.shape[2:], d, speed, bool(r.hard[i]), float(r.logit[i])))
        return out

    def _predict_stream(self, batches, tau, target, batch, max_wait_s, nms) -> list[Results]:
        """The pictures through the stream scheduler (closed loop on ``target`` ms/img when given)."""
        meta: list[tuple] = []  # per picture: path, original image, network input size, preprocess ms

        def pictures():
            for paths, im0s, _ in batches:
                t0 = time.perf_counter()
                x = self._preprocess(im0s)
                pre_ms = (time.perf_counter() - t0) * 1e3 / len(im0s)
                for path, im0, xi in zip(paths, im0s, x, strict=True):
                    meta.append((path, im0, x.shape[2:], pre_ms))
                    yield len(meta) - 1, xi

        controller = None
        if target is not None:
            easy, hard = self._lat_per_image
            controller = LatencyController(target, self.val_logits, easy, hard, window=max(4 * batch, 16))
        out: list[Results] = []
        for r in StreamScheduler(self.model, controller or tau, batch=batch, max_wait_s=max_wait_s).run(pictures()):
            path, im0, shape, pre_ms = meta[r.id]
            t0 = time.perf_counter()
            one = r.preds[None] if isinstance(r.preds, torch.Tensor) else [r.preds]  # a batch of this image
            d = detection_rows(one, **nms)[0]
            speed = {"preprocess": pre_ms, "route": r.latency_ms, "postprocess": (time.perf_counter() - t0) * 1e3}
            out.append(self._result(path, im0, shape, d, speed, r.hard, r.logit))
        if controller is not None:
            self.summary.controller = controller.history
            self.summary.threshold = controller.threshold
        return out

    def _result(self, path, im0, shape, d: torch.Tensor, speed: dict, hard: bool, logit: float) -> Results:
        """An ultralytics ``Results`` with boxes in ``im0``'s pixels, plus ``route``, ``phi``, ``logit``."""
        d = d.clone()
        d[:, :4] = scale_boxes(shape, d[:, :4], im0.shape[:2])
        res = Results(im0, path=path, names=self.names, boxes=d.cpu(), speed=dict(speed))
        res.route = "hard" if hard else "easy"
        res.logit = logit
        res.phi = float(torch.sigmoid(torch.tensor(logit)))
        return res

    def _preprocess(self, im0s: list[np.ndarray]) -> torch.Tensor:
        """BGR HWC uint8 pictures -> letterboxed RGB (B, 3, S, S) in [0, 1] (as ultralytics' predictor)."""
        ims = np.stack([self.letterbox(image=im) for im in im0s])
        ims = ims[..., ::-1].transpose(0, 3, 1, 2)  # BGR -> RGB, BHWC -> BCHW
        x = torch.from_numpy(np.ascontiguousarray(ims)).to(self.device).float() / 255
        return x


def _batches(sources: list, batch: int):
    """ultralytics' loaders over the inputs: the pictures together (in the given order), then each video.

    ultralytics reads a list source as in-memory pictures, so videos in a list get a loader each.
    Yields ``(paths, images, info)`` batches of at most ``batch`` images (BGR arrays).
    """
    video = [isinstance(s, (str, Path)) and is_video(str(s)) for s in sources]
    pictures = [s for s, v in zip(sources, video, strict=True) if not v]
    loaders = [load_inference_source(pictures if len(pictures) > 1 else pictures[0], batch=batch)] if pictures else []
    loaders += [load_inference_source(s, batch=batch) for s, v in zip(sources, video, strict=True) if v]
    for loader in loaders:
        yield from loader


def _existing(source) -> tuple[list, list[str]]:
    """The readable inputs of a source (a file, folder, glob, video, or a list of them) and the failures.

    ultralytics' loader expands folders and globs; every image file is then opened once
    here (OpenCV, or PIL for what OpenCV cannot read), so a missing or corrupt picture
    becomes a ``"<file>: <problem>"`` failure while the others are still processed.
    """
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    ok, failures = [], []
    for s in items:
        if not isinstance(s, (str, Path)) or str(s).startswith(("http:", "https:", "rtsp:")):
            ok.append(s)  # arrays, tensors, streams: ultralytics reads them as they are
            continue
        if "*" not in str(s) and not Path(s).exists():
            failures.append(f"{s}: not found")
            continue
        try:
            files = LoadImagesAndVideos(str(s)).files
        except FileNotFoundError as e:
            failures.append(f"{s}: {e}")
            continue
        for f in files:
            if is_video(f) or _readable(f):
                ok.append(f)
            else:
                failures.append(f"{f}: unreadable image (not decoded)")
    return ok, failures


def _readable(path: str) -> bool:
    if cv2.imread(path) is not None:
        return True
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, ValueError, ImportError):  # ImportError: ultralytics' HEIF fallback without its plugin
        return False


def _dataset_names(cfg, nc: int) -> list[str]:
    """Class names from the config's dataset when it is on disk; ``class<i>`` otherwise."""
    try:
        return list(prepare_dataset(cfg).names)
    except (DatasetError, OSError):  # dataset not here (a checkpoint moved to another machine): names are cosmetic
        return [f"class{i}" for i in range(nc)]
