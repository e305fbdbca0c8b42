"""ONNX export of a trained dynamic detector, and a runner that routes on onnxruntime.

A data-dependent route does not trace into one static graph, so the model is exported as
the three static pieces that :meth:`~dynamicdet.modeling.yolo.DynamicDetector.route` calls, each
with a dynamic batch axis:

=============  ===================================================  ==================================
file           computes                                             inputs -> outputs
=============  ===================================================  ==================================
stage1.onnx    backbone 1 + router (every image)                    images -> logit, p3, p4, p5
head1.onnx     neck + head of detector 1 (easy images)              p3, p4, p5 -> preds
hard.onnx      composite links + backbone 2 + neck + head 2 (hard)  images, p3, p4, p5 -> preds
=============  ===================================================  ==================================

``images`` is (B, 3, S, S) in [0, 1] (letterboxed RGB, S = ``img_size``); ``p3..p5`` are
backbone 1's features F1; ``preds`` is (B, 4 + nc, A), the raw detections NMS reads.
:class:`OnnxDynamicDetector` splits a batch with the same threshold rule (``logit >=
threshold`` -> hard) and the same sub-batches as ``route()``, and returns a ``RouteOutput``,
so :class:`~dynamicdet.deploy.predictor.DynamicDetPredictor` runs it unchanged
(``dynamicdet predict --weights <export folder>``). ``dynamicdet.json`` beside the graphs holds
the image size, class names and the router's val logits (thresholds by hard fraction).
ultralytics' own ``torch2onnx`` (TorchScript exporter) writes each graph.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from ultralytics.utils.export.engine import torch2onnx

from dynamicdet.engine.checkpoint import CheckpointError
from dynamicdet.evaluation.speed import time_streams
from dynamicdet.modeling.yolo import AdaptiveRouter, DynamicDetector, RouteOutput

META = "dynamicdet.json"
PIECES = ("stage1", "head1", "hard")
TAPS = ("p3", "p4", "p5")


class _Stage1(nn.Module):
    """images (B, 3, S, S) -> logit (B,), p3, p4, p5 (backbone 1's taps)."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.m = model

    def forward(self, x):
        f1 = self.m.taps(self.m.backbone1(x))
        return (self.m.router.logit(AdaptiveRouter.pool(f1)), *f1)


class _Head1(nn.Module):
    """p3, p4, p5 -> preds (B, 4 + nc, A): detector 1's neck + head read only the taps."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.m = model

    def forward(self, p3, p4, p5):
        y1: list = [None] * self.m.spec.n_backbone
        for i, f in zip(self.m.spec.taps, (p3, p4, p5), strict=True):
            y1[i] = f
        return self.m._inference(self.m.head1(y1))


class _Hard(nn.Module):
    """images, p3, p4, p5 -> preds (B, 4 + nc, A) of detector 2."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.m = model

    def forward(self, x, p3, p4, p5):
        return self.m._inference(self.m.head2(self.m.backbone2(x, [p3, p4, p5])))


def export_onnx(
    model: DynamicDetector,
    folder: str | Path,
    img_size: int,
    names: list[str],
    val_logits: np.ndarray | None = None,
    opset: int = 17,
) -> Path:
    """Write ``stage1.onnx``, ``head1.onnx``, ``hard.onnx`` and ``dynamicdet.json`` into ``folder``.

    Args:
        model: a trained dynamic YOLO detector (exported from a fused eval-mode copy; the
            model itself is not changed).
        folder: output folder (created).
        img_size: the network's input side S.
        names: class names by index.
        val_logits: (N,) the router's logits on the val split, for thresholds by hard fraction.
        opset: ONNX opset.

    Returns:
        The folder.
    """
    if not isinstance(model, DynamicDetector):
        raise ValueError(f"ONNX export covers dynamic YOLO detectors; got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = DynamicDetector(model.family, model.scale, nc=model.nc, ch=model.ch)
    m.load_state_dict(model.state_dict())
    m = m.eval().fuse()
    x = torch.rand(2, model.ch, img_size, img_size)
    with torch.no_grad():
        _, *f1 = _Stage1(m)(x)
    batch = {0: "batch"}
    taps = dict.fromkeys(TAPS, batch)
    specs = {
        "stage1": (_Stage1(m), (x,), ["images"], ["logit", *TAPS], {"images": batch, "logit": batch, **taps}),
        "head1": (_Head1(m), tuple(f1), list(TAPS), ["preds"], {**taps, "preds": batch}),
        "hard": (_Hard(m), (x, *f1), ["images", *TAPS], ["preds"], {"images": batch, **taps, "preds": batch}),
    }
    for name, (module, inputs, ins, outs, dynamic) in specs.items():
        tmp = folder / f".{name}.onnx.tmp"
        with warnings.catch_warnings():  # torch's notice that the TorchScript exporter (ultralytics' choice) is legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            torch2onnx(module, inputs, tmp, opset=opset, input_names=ins, output_names=outs, dynamic=dynamic)
        tmp.replace(folder / f"{name}.onnx")
    meta = {
        "format": "onnx",
        "opset": opset,
        "img_size": img_size,
        "family": model.family,
        "scale": model.scale,
        "nc": model.nc,
        "ch": model.ch,
        "names": list(names),
        "val_logits": None if val_logits is None else [float(v) for v in val_logits],
        "pieces": {p: f"{p}.onnx" for p in PIECES},
    }
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / META)
    return folder


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_onnx`."""
    return (Path(path) / META).is_file()


class OnnxDynamicDetector:
    """The exported pieces on onnxruntime, routed in Python exactly as ``DynamicDetector.route``.

    Args:
        folder: a folder written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (default: torch's thread count, as the torch path).

    Attributes:
        img_size, names, nc, ch, val_logits: from ``dynamicdet.json``.
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        folder = Path(folder)
        meta_file = folder / META
        if not meta_file.is_file():
            raise CheckpointError(f"{folder}: not an ONNX export of dynamicdet (no {META}; run `dynamicdet export`)")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{meta_file}: not valid JSON ({e})") from None
        missing = [p for p in PIECES if not (folder / meta["pieces"][p]).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: exported graph(s) missing: {', '.join(p + '.onnx' for p in missing)}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        # three sessions take turns on one stream: threads that spin after a call would hold the cores the
        # next session needs (the routed stream timed 10% over the mix of its routes with spinning on)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {
            p: ort.InferenceSession(str(folder / meta["pieces"][p]), opts, providers=["CPUExecutionProvider"])
            for p in PIECES
        }
        self.folder = folder
        self.img_size, self.nc, self.ch = meta["img_size"], meta["nc"], meta["ch"]
        self.names = meta["names"]
        self.val_logits = None if meta["val_logits"] is None else np.asarray(meta["val_logits"], dtype=np.float64)

    # ---------------------------------------------------------------- the three pieces
    def stage1(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, 3, S, S) float32 -> logit (B,), F1 = [p3, p4, p5]."""
        z, *f1 = self.sessions["stage1"].run(None, {"images": x})
        return z, f1

    def head1(self, f1: list[np.ndarray]) -> np.ndarray:
        """F1 -> (B, 4 + nc, A) detections of detector 1."""
        return self.sessions["head1"].run(None, dict(zip(TAPS, f1, strict=True)))[0]

    def hard(self, x: np.ndarray, f1: list[np.ndarray]) -> np.ndarray:
        """images, F1 -> (B, 4 + nc, A) detections of detector 2."""
        return self.sessions["hard"].run(None, {"images": x, **dict(zip(TAPS, f1, strict=True))})[0]

    # ---------------------------------------------------------------- routes
    @staticmethod
    def _numpy(x) -> np.ndarray:
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def first(self, x) -> np.ndarray:
        """Easy route for all images: (B, 3, S, S) -> (B, 4 + nc, A)."""
        return self.head1(self.stage1(self._numpy(x))[1])

    def second(self, x) -> np.ndarray:
        """Hard route for all images (as ``DynamicDetector.second``: no head 1)."""
        x = self._numpy(x)
        return self.hard(x, self.stage1(x)[1])

    def route(self, x, threshold: float) -> RouteOutput:
        """Batched dynamic inference, the same rule and sub-batches as ``DynamicDetector.route``.

        Args:
            x: (B, 3, S, S) images in [0, 1] (numpy or torch).
            threshold: on the router logit; ``z >= threshold`` takes the hard route.

        Returns:
            A ``RouteOutput`` of torch tensors (preds (B, 4 + nc, A), hard, phi, logit).
        """
        x = self._numpy(x)
        z, f1 = self.stage1(x)
        hard = z >= threshold
        if not hard.any():
            preds = self.head1(f1)
        elif hard.all():
            preds = self.hard(x, f1)
        else:
            h, e = np.flatnonzero(hard), np.flatnonzero(~hard)
            p1 = self.head1([np.ascontiguousarray(f[e]) for f in f1])
            p2 = self.hard(np.ascontiguousarray(x[h]), [np.ascontiguousarray(f[h]) for f in f1])
            preds = np.empty((len(x), *p1.shape[1:]), dtype=p1.dtype)
            preds[e], preds[h] = p1, p2
        z_t = torch.from_numpy(z)
        phi = torch.sigmoid(z_t)
        return RouteOutput(preds=torch.from_numpy(preds), hard=torch.from_numpy(hard), phi=phi, logit=z_t)

    def route_latencies(self, batch: int = 1, warmup: int = 2, repeats: int = 10) -> dict:
        """ms per batch of the easy and the hard route on one random batch (as ``speed.route_latencies``)."""
        x = np.random.default_rng(0).random((batch, self.ch, self.img_size, self.img_size), dtype=np.float32)
        fns = {"easy": lambda x: self.route(x, float("inf")), "hard": lambda x: self.route(x, float("-inf"))}
        res = {k: v * batch for k, v in time_streams(fns, [x], "cpu", warmup, repeats).items()}
        return {"batch": batch, "img_size": self.img_size, **res, "noisy": not res["hard"] > res["easy"]}
