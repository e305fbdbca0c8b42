"""ONNX export of a trained dynamic detector, and a runner that routes on onnxruntime.

A data-dependent route does not trace into one static graph, so the model is exported as the
three stages that :func:`~dynamicdet.modeling.routing.route` runs (the stages of
:class:`~dynamicdet.modeling.routing.RoutedDetector`), for both model kinds:

=============  ====================================================  ==================================
file           computes                                              inputs -> outputs
=============  ====================================================  ==================================
stage1.onnx    backbone 1 + router (every image)                     images -> logit, f1_0 .. f1_{L-1}
head1.onnx     head 1 (easy images)                                  f1_0 .. f1_{L-1} -> preds
hard.onnx      composite links + backbone 2 + head 2 (hard images)   images, f1_0 .. f1_{L-1} -> preds
=============  ====================================================  ==================================

``images`` is (B, 3, S, S) in [0, 1] (letterboxed RGB, S = ``img_size``); ``f1_l`` are
backbone 1's features F1, (B, C_l, H_l, W_l); ``logit`` is (B,).

- **YOLO** (:class:`~dynamicdet.modeling.yolo.DynamicDetector`): F1 = P3, P4, P5; head 1 = neck +
  head of detector 1; ``preds`` is (B, 4 + nc, A), the raw detections NMS reads. Every graph has a
  dynamic batch axis.
- **Two-stage** (:class:`~dynamicdet.modeling.two_stage.DynamicTwoStage`, Faster and Mask R-CNN):
  F1 = trunk 1's four stage outputs; head 1 = FPN 1 + RPN 1 + RoI heads 1; hard = links + trunk 2 +
  FPN 2 + RPN 2 + RoI heads 2. torchvision's heads keep a variable number of detections per image,
  which a batch axis cannot hold, so ``head1.onnx`` and ``hard.onnx`` are exported **at batch 1**
  and the runner calls them once per image of a sub-batch (``stage1.onnx`` keeps its dynamic batch
  axis). Their outputs are torchvision's detection dict of the image: ``boxes`` (n, 4) xyxy pixels,
  ``scores`` (n,), ``labels`` (n,) 1-based, and for Mask R-CNN ``masks`` (n, 1, S, S) (pasted by
  torchvision's ONNX loop). The image size S is fixed in these graphs; head 1 reads only the taps.

:class:`OnnxDynamicDetector` offers the same three stages (torch tensors in and out, numpy views
of onnxruntime's arrays), so its ``route()`` is :func:`~dynamicdet.modeling.routing.route` itself
(same threshold rule, ``logit >= threshold`` -> hard, same sub-batches, a ``RouteOutput``) and the
stream scheduler runs it as it runs the torch models;
:class:`~dynamicdet.deploy.predictor.DynamicDetPredictor` runs it unchanged (``dynamicdet predict
--weights <export folder>``). ``dynamicdet.json`` beside the graphs holds the image size, class
names, the graphs' input and output names and the router's val logits (thresholds by hard
fraction). torch's TorchScript exporter writes each graph (through ultralytics' ``torch2onnx``).
"""

from __future__ import annotations

import copy
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
from dynamicdet.modeling import routing
from dynamicdet.modeling.routing import Preds, RoutedDetector

META = "dynamicdet.json"
PIECES = ("stage1", "head1", "hard")
YOLO_TAPS = ("p3", "p4", "p5")  # the tap names of exports written before two-stage models could be exported


def _outputs(preds: Preds) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A stage's predictions as graph outputs: the batched tensor, or the one image's dict values (batch 1)."""
    return preds if isinstance(preds, torch.Tensor) else tuple(preds[0].values())


class _Stage1(nn.Module):
    """images (B, 3, S, S) -> logit (B,), the taps F1."""

    def __init__(self, model: RoutedDetector):
        super().__init__()
        self.m = model

    def forward(self, x):
        z, taps = self.m.first_stage(x)
        return (z, *taps)


class _Head1(nn.Module):
    """taps F1 -> predictions of detector 1 (a blank image of ``image_shape`` gives the heads its size)."""

    def __init__(self, model: RoutedDetector, image_shape: tuple[int, ...]):
        super().__init__()
        self.m, self.image_shape = model, image_shape

    def forward(self, *taps):
        x = taps[0].new_zeros(self.image_shape) if self.m.easy_reads_images else None
        return _outputs(self.m.easy_stage(x, list(taps)))


class _Hard(nn.Module):
    """images, taps F1 -> predictions of detector 2."""

    def __init__(self, model: RoutedDetector):
        super().__init__()
        self.m = model

    def forward(self, x, *taps):
        return _outputs(self.m.hard_stage(x, list(taps)))


def export_onnx(
    model: RoutedDetector,
    folder: str | Path,
    img_size: int,
    names: list[str],
    val_logits: np.ndarray | None = None,
    opset: int = 17,
) -> Path:
    """Write ``stage1.onnx``, ``head1.onnx``, ``hard.onnx`` and ``dynamicdet.json`` into ``folder``.

    Args:
        model: a trained dynamic detector, YOLO or two-stage (exported from a fused eval-mode
            copy on the CPU; the model itself is not changed).
        folder: output folder (created).
        img_size: the network's input side S.
        names: class names by index.
        val_logits: (N,) the router's logits on the val split, for thresholds by hard fraction.
        opset: ONNX opset (torchvision's detection heads need 11 or more).

    Returns:
        The folder.
    """
    if not isinstance(model, RoutedDetector):
        raise ValueError(f"ONNX export covers dynamic detectors (YOLO or two-stage); got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).cpu().eval().fuse()
    x = torch.rand(2, model.ch, img_size, img_size)
    with torch.no_grad():
        _, taps = m.first_stage(x)
        sample = m.easy_stage(x[:1], [t[:1] for t in taps])
    per_image = not isinstance(sample, torch.Tensor)  # torchvision: a dict per image, graphs at batch 1
    outs = list(sample[0]) if per_image else ["preds"]
    tap_names = [f"f1_{level}" for level in range(len(taps))]
    batch = {0: "batch"}
    stage1_axes = {"images": batch, "logit": batch, **dict.fromkeys(tap_names, batch)}
    if per_image:  # batch 1, a variable number of detections
        x, taps = x[:1], [t[:1] for t in taps]
        head_axes = dict.fromkeys(outs, {0: "detections"})
    else:
        head_axes = {"images": batch, **dict.fromkeys([*tap_names, *outs], batch)}
    specs = {
        "stage1": (_Stage1(m), (x,), ["images"], ["logit", *tap_names], stage1_axes),
        "head1": (_Head1(m, tuple(x.shape)), tuple(taps), tap_names, outs, head_axes),
        "hard": (_Hard(m), (x, *taps), ["images", *tap_names], outs, head_axes),
    }
    for name, (module, inputs, ins, outputs, dynamic) in specs.items():
        tmp = folder / f".{name}.onnx.tmp"
        dynamic = {k: v for k, v in dynamic.items() if k in ins or k in outputs}
        # the TorchScript exporter's notices (a legacy exporter, values traced as constants, how an op is
        # exported) and torchvision's under tracing; the graphs are checked against torch by the tests
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            torch2onnx(module.eval(), inputs, tmp, opset=opset, input_names=ins, output_names=outputs, dynamic=dynamic)
        tmp.replace(folder / f"{name}.onnx")
    meta = {
        "format": "onnx",
        "opset": opset,
        "img_size": img_size,
        **model.config(),
        "nc": model.nc,
        "ch": model.ch,
        "names": list(names),
        "val_logits": None if val_logits is None else [float(v) for v in val_logits],
        "pieces": {p: f"{p}.onnx" for p in PIECES},
        "taps": tap_names,
        "outputs": outs,
        "per_image": per_image,
    }
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / META)
    return folder


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_onnx`."""
    return (Path(path) / META).is_file()


def _array(x) -> np.ndarray:
    """A float32 C-contiguous array of ``x`` (numpy or torch; no copy when it already is one)."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


class OnnxDynamicDetector:
    """The exported pieces on onnxruntime: a :class:`~dynamicdet.modeling.routing.RoutedDetector`.

    Args:
        folder: a folder written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (default: torch's thread count, as the torch path).

    Attributes:
        img_size, names, nc, ch, val_logits: from ``dynamicdet.json``.
        per_image: the head graphs run image by image (two-stage exports).
    """

    easy_reads_images = False  # head1.onnx reads only the taps (see RoutedDetector)

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
        opts.log_severity_level = 3  # errors only: Mask R-CNN's mask-pasting loop warns of its own output shapes
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
        self.tap_names = meta.get("taps", list(YOLO_TAPS))
        self.outputs = meta.get("outputs", ["preds"])
        self.per_image = meta.get("per_image", False)

    # ---------------------------------------------------------------- the three stages of a route
    def first_stage(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """stage1.onnx: (B, 3, S, S) -> (logit z (B,), taps F1)."""
        z, *taps = self.sessions["stage1"].run(None, {"images": _array(x)})
        return torch.from_numpy(z), [torch.from_numpy(t) for t in taps]

    def easy_stage(self, x: torch.Tensor | None, taps: list[torch.Tensor]) -> Preds:
        """head1.onnx on the taps of B images (the images are not read) -> their predictions."""
        return self._heads("head1", {}, taps)

    def hard_stage(self, x: torch.Tensor, taps: list[torch.Tensor]) -> Preds:
        """hard.onnx on B images and their taps -> their predictions."""
        return self._heads("hard", {"images": x}, taps)

    def _heads(self, piece: str, inputs: dict, taps: list[torch.Tensor]) -> Preds:
        """A head graph on a batch: in one call (a batch axis), or once per image (two-stage: a dict each)."""
        feeds = {**inputs, **dict(zip(self.tap_names, taps, strict=True))}
        session = self.sessions[piece]
        if not self.per_image:
            return torch.from_numpy(session.run(None, {k: _array(v) for k, v in feeds.items()})[0])
        out = []
        for i in range(len(taps[0])):
            arrays = session.run(None, {k: _array(v[i : i + 1]) for k, v in feeds.items()})
            out.append({k: torch.from_numpy(a) for k, a in zip(self.outputs, arrays, strict=True)})
        return out

    # ---------------------------------------------------------------- routes
    def first(self, x) -> Preds:
        """Easy route for all images: (B, 3, S, S) (numpy or torch) -> predictions."""
        x = torch.from_numpy(_array(x))
        return self.easy_stage(x, self.first_stage(x)[1])

    def second(self, x) -> Preds:
        """Hard route for all images (as the torch models' ``second``: no head 1)."""
        x = torch.from_numpy(_array(x))
        return self.hard_stage(x, self.first_stage(x)[1])

    def route(self, x, threshold: float) -> routing.RouteOutput:
        """Batched dynamic inference, :func:`dynamicdet.modeling.routing.route` on the exported stages.

        Args:
            x: (B, 3, S, S) images in [0, 1] (numpy or torch).
            threshold: on the router logit; ``z >= threshold`` takes the hard route.

        Returns:
            A ``RouteOutput`` of torch tensors (YOLO preds (B, 4 + nc, A); two-stage a dict per image).
        """
        return routing.route(self, torch.from_numpy(_array(x)), threshold)

    def route_latencies(self, batch: int = 1, warmup: int = 2, repeats: int = 10) -> dict:
        """ms per batch of the easy and the hard route on one random batch (as ``speed.route_latencies``)."""
        x = np.random.default_rng(0).random((batch, self.ch, self.img_size, self.img_size), dtype=np.float32)
        fns = {"easy": lambda x: self.route(x, float("inf")), "hard": lambda x: self.route(x, float("-inf"))}
        res = {k: v * batch for k, v in time_streams(fns, [x], "cpu", warmup, repeats).items()}
        return {"batch": batch, "img_size": self.img_size, **res, "noisy": not res["hard"] > res["easy"]}
