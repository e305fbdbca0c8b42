"""Command line: ``dynamicdet {data,train,speed,predict,export,reproduce}``.

Also runs as ``python -m dynamicdet.cli``; under ``torchrun`` the ``train`` command
starts one DDP process per rank (nccl on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import cv2
import torch
import torch.distributed as dist

from dynamicdet import paths
from dynamicdet.config import ConfigError, load_config
from dynamicdet.data.coco import DatasetError, prepare_dataset
from dynamicdet.data.synthetic import generate_from_config, summarize
from dynamicdet.deploy.export import OnnxDynamicDetector, export_onnx
from dynamicdet.deploy.outputs import annotate, output_names, results_to_coco
from dynamicdet.deploy.predictor import DynamicDetPredictor
from dynamicdet.engine.build import build_model, load_model, resolve_device
from dynamicdet.engine.checkpoint import CheckpointError
from dynamicdet.engine.runs import STEP2
from dynamicdet.engine.step1 import train_step1
from dynamicdet.engine.step2 import train_step2
from dynamicdet.evaluation.speed import environment, route_latencies
from dynamicdet.files import write_json
from dynamicdet.pipeline import reproduce

# errors in what the user gave us (config, dataset, checkpoint, source): one line, exit code 2, no traceback
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)


def _cmd_data(args) -> int:
    cfg = load_config(args.config)
    if cfg.data.source == "synthetic":
        generate_from_config(cfg)
    info = prepare_dataset(cfg)
    if cfg.data.source == "synthetic":
        print(summarize(info.root).to_string())
    for split, rep in info.reports.items():
        print(f"{split}: {rep}")
    return 0


def _cmd_train(args) -> int:
    cfg = load_config(args.config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    try:
        if args.step == 1:
            path = train_step1(cfg, resume=args.resume)
        else:
            if world > 1:
                raise SystemExit("step 2 trains a tiny router on a cache: run it in one process")
            path = train_step2(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(path)
    return 0


def measure_config(cfg, batch: int | None = None) -> dict:
    """``dynamicdet speed``: route latencies at batch 1 and ``batch`` for a config's model.

    Uses the trained step-2 model when it exists (latency does not depend on the weights,
    so an untrained model of the same shape is used otherwise).
    """
    device = resolve_device(cfg.device)
    if (STEP2.path(cfg) / "step2.pt").exists():  # the trained model, with its dataset's classes
        model = load_model(cfg, step=2)
    else:  # untrained, of the same shape (the class count changes only the heads' last convolutions)
        model = build_model(cfg, nc=len(cfg.data.classes) if cfg.data.source == "synthetic" else 80)
    batch = batch or cfg.eval.batch
    e = cfg.eval
    out = {"config": cfg.name, "env": environment()}
    for b in sorted({1, batch}):
        out[f"batch{b}"] = route_latencies(model, cfg.data.img_size, b, device, e.latency_warmup, e.latency_repeats)
    return out


def _cmd_speed(args) -> int:
    cfg = load_config(args.config)
    res = measure_config(cfg, batch=args.batch)
    print(json.dumps(res, indent=2))
    return 0


def _cmd_predict(args) -> int:
    if args.config and args.weights:
        print("error: give --config or --weights, not both", file=sys.stderr)
        return 2
    det = DynamicDetPredictor.load(args.weights or args.config or "quick")
    try:
        results = det.predict(
            args.source,
            target_ms=args.target_ms,
            hard_fraction=args.hard_fraction,
            threshold=args.threshold,
            conf=args.conf,
            batch=args.batch,
            max_wait_s=args.max_wait,
        )
    except ValueError as e:  # a bad hard fraction or batch, an uncalibratable target latency
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = det.summary
    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    for r, name in zip(results, output_names(results), strict=True):
        cv2.imwrite(str(save / name), annotate(r))
    write_json(results_to_coco(results), save / "predictions.json", indent=1)
    summary = {
        "images": s.images,
        "easy": s.easy,
        "hard": s.hard,
        "logit_threshold": s.threshold,
        "target_ms_per_image": s.target_ms,
        "achieved_ms_per_image": round(s.ms_per_image, 2),
        "batch": args.batch,
        "scheduler": s.scheduler,
        "controller": s.controller,  # closed loop (--target-ms): per window, measured ms/img, k, threshold
        "failures": s.failures,
    }
    write_json(summary, save / "summary.json", indent=2)
    target = f" (target {s.target_ms:.1f} ms)" if s.target_ms is not None else ""
    print(f"{s.images} images: {s.easy} easy route, {s.hard} hard route; {s.ms_per_image:.1f} ms/img{target}")
    print(f"annotated images, predictions.json and summary.json in {save}")
    for f in s.failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if s.failures else 0


def _cmd_export(args) -> int:
    if args.config and args.weights:
        print("error: give --config or --weights, not both", file=sys.stderr)
        return 2
    det = DynamicDetPredictor.load(args.weights or args.config or "quick")
    if isinstance(det.model, OnnxDynamicDetector):
        print("error: that is already an ONNX export; give a config or a step2.pt", file=sys.stderr)
        return 2
    src = Path(args.weights) if args.weights else None
    out = Path(args.out) if args.out else (src.parent if src else _step2_folder(args.config or "quick")) / "onnx"
    model = det.model.cpu()
    export_onnx(model, out, det.img_size, list(det.names.values()), det.val_logits, opset=args.opset)
    # the same random batch through torch and onnxruntime, both routes: the export's own check
    x = torch.rand(4, model.ch, det.img_size, det.img_size)
    ort_model = OnnxDynamicDetector(out)
    with torch.no_grad():
        diff = max(
            _max_diff(model.route(x, t).preds, ort_model.route(x, t).preds) for t in (float("inf"), float("-inf"))
        )
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")
    print(f"onnxruntime vs torch on a random batch of 4, both routes: max |diff| {diff:.2e}")
    print(f"use it: dynamicdet predict SOURCE --weights {out}")
    return 0


def _max_diff(a, b) -> float:
    """Largest absolute difference of two routes' predictions: YOLO's raw (B, 4 + nc, A) tensors, or two-stage
    per-image detection dicts (boxes and scores, rows sorted by score; inf when an image's counts differ)."""
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max())
    worst = 0.0
    for da, db in zip(a, b, strict=True):
        if len(da["scores"]) != len(db["scores"]):
            return float("inf")
        ia, ib = da["scores"].argsort(descending=True), db["scores"].argsort(descending=True)
        for key in ("boxes", "scores"):
            if len(ia):
                worst = max(worst, float((da[key][ia] - db[key][ib]).abs().max()))
    return worst


def _step2_folder(config: str) -> Path:
    return STEP2.path(load_config(config))


def _cmd_reproduce(args) -> int:
    only = [n.strip() for n in args.notebooks.split(",") if n.strip()] or None
    reproduce(
        args.config,
        run_notebooks=not args.no_notebooks,
        notebooks=only,
        stages=not args.no_stages,
        two_stage=not args.no_two_stage,
    )
    return 0


def _version() -> str:
    """The installed distribution's version (package metadata), else the package's ``__version__``."""
    try:
        return version("dynamicdet")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        # the package's own __version__: no import (the package runs before any of its modules)
        return sys.modules["dynamicdet"].__version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dynamicdet", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="generate (synthetic) / convert (coco) the dataset and print statistics")
    d.add_argument("--config", default="quick")
    d.set_defaults(fn=_cmd_data)
    t = sub.add_parser("train", help="step 1 (joint detectors) or step 2 (router)")
    t.add_argument("--config", default="quick")
    t.add_argument("--step", type=int, choices=(1, 2), required=True)
    t.add_argument("--resume", action="store_true", help="continue an interrupted step-1 run")
    t.set_defaults(fn=_cmd_train)
    s = sub.add_parser("speed", help="latency of the easy route, the hard route and the router")
    s.add_argument("--config", default="quick")
    s.add_argument("--batch", type=int, default=None, help="batched figure's batch size (default: eval.batch)")
    s.set_defaults(fn=_cmd_speed)
    pr = sub.add_parser("predict", help="run a trained dynamic detector on your pictures (annotated, json)")
    pr.add_argument("source", nargs="+", help="image or video files, folders, globs")
    pr.add_argument("--config", default=None, help="a trained config (default quick)")
    pr.add_argument("--weights", default=None, help="a step2.pt checkpoint or an ONNX export folder")
    how = pr.add_mutually_exclusive_group()
    how.add_argument("--target-ms", type=float, default=None, help="target latency per image (ms) on this machine")
    how.add_argument("--hard-fraction", type=float, default=None, help="fraction k of images on the hard route")
    how.add_argument("--threshold", type=float, default=None, help="threshold on the router logit")
    pr.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    pr.add_argument("--batch", type=int, default=1, help="> 1: route-aware stream batching (full batches per route)")
    pr.add_argument(
        "--max-wait", type=float, default=None, help="stream: seconds an image may wait for its batch to fill"
    )
    pr.add_argument("--save", default="predictions", help="output folder")
    pr.set_defaults(fn=_cmd_predict)
    e = sub.add_parser("export", help="ONNX graphs of a trained dynamic detector (run by onnxruntime)")
    e.add_argument("--format", choices=("onnx",), default="onnx")
    e.add_argument("--config", default=None, help="a trained config (default quick)")
    e.add_argument("--weights", default=None, help="a step2.pt checkpoint instead of a config")
    e.add_argument("--out", default=None, help="output folder (default: onnx/ beside the step-2 checkpoint)")
    e.add_argument("--opset", type=int, default=17)
    e.set_defaults(fn=_cmd_export)
    r = sub.add_parser("reproduce", help="the whole pipeline, then every notebook into results/<config>/")
    r.add_argument("--config", default="quick")
    r.add_argument("--no-notebooks", action="store_true")
    r.add_argument("--no-stages", action="store_true", help="skip the pipeline stages (the notebooks compute theirs)")
    r.add_argument(
        "--no-two-stage",
        action="store_true",
        help="skip the two-stage models (Faster/Mask R-CNN) and notebook 08_two_stage",
    )
    r.add_argument(
        "--notebooks", default="", help="run only these notebooks (comma-separated stems, e.g. 08_two_stage)"
    )
    r.set_defaults(fn=_cmd_reproduce)
    args = p.parse_args(argv)
    try:
        if args.cmd == "reproduce" and not args.no_notebooks:
            paths.require_notebooks()  # the notebooks live in the repository, not in an installed package
        return args.fn(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
