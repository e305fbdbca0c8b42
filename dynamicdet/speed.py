"""Latency harness: easy route, hard route, router, and plain ultralytics models.

Every figure is measured on a fused model under ``torch.inference_mode`` after a
warm-up, as the median (and 10th/90th percentiles) over repeats, with the compared
variants timed in alternation so that machine noise hits them alike; on a GPU the model
runs in fp16 with CUDA synchronisation around each timed call. Results carry the
device, threads, image size and package versions they were measured with.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from ultralytics.nn.tasks import DetectionModel

from .model import DynamicDetector


def environment() -> dict:
    """Device, threads and package versions to store next to any timing."""
    import pycocotools
    import torchvision
    import ultralytics

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ultralytics": ultralytics.__version__,
        "pycocotools": getattr(pycocotools, "__version__", "2.0.11"),
        "python": platform.python_version(),
        "fp16": cuda,
    }


def _sync(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(times: list[float]) -> dict:
    t = np.asarray(times)
    return {
        "median_ms": float(np.median(t)),
        "p10_ms": float(np.percentile(t, 10)),
        "p90_ms": float(np.percentile(t, 90)),
        "min_ms": float(t.min()),
        "repeats": len(times),
    }


@torch.inference_mode()
def time_interleaved(fns: dict[str, Callable[[], object]], device, warmup: int = 5, repeats: int = 20) -> dict:
    """Time several zero-argument callables in alternation (round robin).

    Each repeat calls every function once, in turn, so a burst of machine noise hits all of
    them alike and their *ratios* stay meaningful on a shared machine.

    Returns:
        ``{name: {"median_ms", "p10_ms", "p90_ms", "min_ms", "repeats"}}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: _stats(v) for k, v in times.items()}


def time_fn(fn: Callable[[], object], device, warmup: int = 5, repeats: int = 20) -> dict:
    """Time ``fn()``: median / p10 / p90 / min in milliseconds over ``repeats`` calls after ``warmup``."""
    return time_interleaved({"fn": fn}, device, warmup, repeats)["fn"]


class TimingError(RuntimeError):
    """Latencies contradict the work done (e.g. the hard route timed faster than the easy one)."""


def prepare_for_timing(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A fused, eval-mode copy of ``model`` on ``device`` (fp16 on CUDA)."""
    m = copy.deepcopy(model).to(device).eval()
    # ultralytics models fold BN into convs; our wrappers fuse their parts (two-stage: nothing to fold)
    m = m.fuse(verbose=False) if isinstance(m, DetectionModel) else m.fuse()
    return m.half() if device.type == "cuda" else m


def route_latencies(
    model: DynamicDetector,
    img_size: int,
    batch: int = 1,
    device: torch.device | str = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    retries: int = 2,
) -> dict:
    """Latency (ms per batch) of the easy route, the hard route, B1 + router, and the router head.

    easy = B1 + router + H1 (``route`` with every image easy);
    hard = B1 + router + links + B2 + H2 (``route`` with every image hard).
    The four are timed in alternation (:func:`time_interleaved`).

    Raises:
        TimingError: the hard route still times no slower than the easy one after
            ``retries`` re-measurements with doubled repeats.
    """
    device = torch.device(device)
    m = prepare_for_timing(model, device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.rand(batch, model.ch, img_size, img_size, device=device, dtype=dtype)
    with torch.inference_mode():
        pooled = m.router_input(x)
    fns = {
        "easy": lambda: m.route(x, float("inf")),
        "hard": lambda: m.route(x, float("-inf")),
        "score": lambda: m.score(x),
        "router": lambda: m.router.head(pooled),
    }
    # The hard route does strictly more work than the easy one; if noise says otherwise,
    # measure again with more repeats rather than hand a threshold rule an inverted range.
    for attempt in range(retries + 1):
        res = time_interleaved(fns, device, warmup, repeats * 2**attempt)
        if res["hard"]["median_ms"] > res["easy"]["median_ms"]:
            break
    else:
        raise TimingError(
            f"hard route measured no slower than the easy route "
            f"({res['hard']['median_ms']:.3f} vs {res['easy']['median_ms']:.3f} ms at batch {batch}, "
            f"{img_size} px) after {retries + 1} attempts: the machine is too noisy for these latencies; "
            "raise eval.latency_repeats or measure on a quieter machine"
        )
    return {"batch": batch, "img_size": img_size, **{k: v["median_ms"] for k, v in res.items()}, "detail": res}


def plain_latency(det: torch.nn.Module, img_size: int, batch: int = 1, device="cpu", warmup=5, repeats=20) -> float:
    """Median latency (ms per batch) of a plain ultralytics detector, fused."""
    device = torch.device(device)
    m = prepare_for_timing(det, device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.rand(batch, 3, img_size, img_size, device=device, dtype=dtype)
    return time_fn(lambda: m(x), device, warmup, repeats)["median_ms"]


def measure_config(cfg, batch: int | None = None) -> dict:
    """``dynamicdet speed``: route latencies at batch 1 and ``batch`` for a config's model.

    Uses the trained step-2 model when it exists (latency does not depend on the weights,
    so an untrained model of the same shape is used otherwise).
    """
    from .checkpoint import load_into
    from .train import build_model, resolve_device, router_dir

    device = resolve_device(cfg.device)
    model = build_model(cfg, nc=len(cfg.data.classes) if cfg.data.source == "synthetic" else 80)
    ckpt = router_dir(cfg) / "step2.pt"
    if ckpt.exists():
        load_into(model, ckpt)
    batch = batch or cfg.eval.batch
    e = cfg.eval
    out = {"config": cfg.name, "env": environment()}
    for b in sorted({1, batch}):
        r = route_latencies(model, cfg.data.img_size, b, device, e.latency_warmup, e.latency_repeats)
        r.pop("detail")
        out[f"batch{b}"] = r
    return out
