"""Holding a target latency while the machine slows down: closed vs open loop (notebook 05, bench item 10).

A stream of val images goes through the route-aware :class:`~dynamicdet.deploy.stream.StreamScheduler`
in three phases, quiet / loaded / quiet; during the loaded phase a competing CPU-bound
process (started and stopped here, bounded in time) takes part of the machine. The same
stream runs twice:

- **open loop**: the threshold calibrated once, before the stream (what ``route(x, tau)``
  with a fixed tau gives);
- **closed loop**: a :class:`~dynamicdet.deploy.stream.LatencyController` starting from that same
  threshold and correcting the hard fraction k from the measured batch times.

Per phase: achieved ms/img (wall time of the phase / images) against the target, the fraction of hard images,
and the routed AP of the images the phase processed (each pass over val scored by
:func:`~dynamicdet.experiments.trained.routed_evaluator`), so the AP the controller gives up to
hold the target is measured, not guessed.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamicdet.deploy.stream import LatencyController, StreamScheduler
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.speed import time_streams
from dynamicdet.experiments.trained import Trained, routed_evaluator
from dynamicdet.metrics import mix
from dynamicdet.modeling import routing

PHASES = ("quiet", "loaded", "quiet again")
ENDS = (("easy", float("inf")), ("hard", float("-inf")))
PHASE_COLUMNS = [
    "loop",
    "phase",
    "images",
    "ms/img",
    "target ms/img",
    "achieved / target",
    "fraction hard",
    "AP",
    "lat_easy now",
    "lat_hard now",
]
HISTORY_COLUMNS = ["loop", "phase", "images", "ms_per_image", "c_first", "c_easy", "c_hard", "k", "threshold"]


# The competing process: a bare interpreter (``python -S``, no imports) that spins ``duty`` of
# every 10 ms until it is stopped or ``seconds`` pass. A spawned multiprocessing child would first
# re-import this package (torch, ultralytics: seconds of CPU), and that start-up, not the spinning,
# was most of the load it measured before (quick, batch 8: duty 0.1 then slowed the stream 1.6x,
# where this one slows it 1.13x; duty 1, one core taken, 3.6x either way).
_SPIN = """
import sys, time
duty, seconds = float(sys.argv[1]), float(sys.argv[2])
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.01 * duty:
        pass
    time.sleep(0.01 * (1 - duty))
"""


def start_competitor(duty: float, seconds: float = 600.0) -> subprocess.Popen:
    """Start the competing CPU-bound process (bounded by ``seconds``); returns once it spins."""
    if not 0.0 < duty <= 1.0:
        raise ValueError(f"duty must be in (0, 1], got {duty}")
    p = subprocess.Popen(
        [sys.executable, "-S", "-c", _SPIN, str(duty), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    if p.stdout.readline().strip() != "ready":
        p.kill()
        raise RuntimeError(f"the competing process did not start (exit code {p.wait()})")
    return p


def val_images(t: Trained) -> tuple[list[int], list[torch.Tensor]]:
    """Every val image as a (3, S, S) tensor in [0, 1] on ``t.device`` (letterboxed like evaluation), with its id."""
    ds = val_loader(t.cfg, t.info, 1).dataset
    ids, images = [], []
    dtype = torch.float16 if t.device.type == "cuda" else torch.float32
    for i in range(len(ds)):
        item = ds[i]
        ids.append(t.info.file_to_image_id["val"][item["im_file"].rsplit("/", 1)[-1]])
        images.append(item["img"].to(t.device, dtype) / 255)
    return ids, images


# The target of the disturbed stream: lat_easy + TARGET_K (lat_hard - lat_easy) from a calibration just before
# it, above the middle because the machine only slows down in the stream (bench/bench_controller.py measures
# why 0.5 left the closed loop no room under load). Notebook 05 and both controller benchmarks use it.
TARGET_K = 0.7


def disturbed_stream(
    t: Trained,
    batch: int = 8,
    passes: int = 3,
    target_k: float = TARGET_K,
    duty: float = 1.0,
    memory: float = 0.5,
    window: int | None = None,
    loops: dict[str, Callable[..., LatencyController]] | None = None,
    retries: int = 2,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Open vs closed loop through a quiet / loaded / quiet stream (see the module docstring).

    Args:
        t: the trained config.
        batch: scheduler batch (B1 + router and B2 + H2).
        passes: passes over the val images per phase.
        target_k: the target is lat_easy + target_k (lat_hard - lat_easy) from a calibration
            just before the stream (:data:`TARGET_K` leaves the controller room to lower k under load).
        duty: fraction of each 10 ms the competing process spins (1: one core fully taken).
        memory: the controller's weight of past windows; window: images per correction (default 4 x batch).
        loops: name -> controller factory, called as ``f(target, val_logits, lat_easy, lat_hard,
            window=..., memory=...)`` (default: ``open loop`` and ``closed loop``, in that order);
            each runs the three phases in turn, in the given order.
        retries: calibrations measured again when the hard route times no slower than the easy
            one; if it stays so, a warning, empty ``phases`` / ``history`` and ``noisy`` in
            ``calibration`` (timing noise never fails the caller).

    Returns:
        ``phases``: one row per (loop, phase): ``ms/img``, ``achieved / target``, ``fraction hard``,
        ``AP`` (mean over the phase's passes), ``images``, ``lat_easy now`` / ``lat_hard now`` (the
        routes' ms/img from the per-kind costs the controller measured on the stream, mean over
        the phase's windows; NaN when the phase had no full window); ``history``: per controller window
        (every loop; the open loop is a controller that never moves): ``loop``, ``phase``,
        ``images`` (cumulative), ``ms_per_image``, ``c_first`` / ``c_easy`` / ``c_hard`` (per-image ms
        of each kind of batch), ``k``, ``threshold``; ``calibration``:
        lat_easy, lat_hard, target (ms/img), open-loop threshold, ``noisy``.
    """
    if not 0.0 <= target_k <= 1.0:
        raise ValueError(f"target_k must be in [0, 1], got {target_k}")
    window = window or 4 * batch
    ids, images = val_images(t)
    order = np.random.default_rng(0).permutation(len(ids))
    ids, images = [ids[i] for i in order], [images[i] for i in order]
    z_val = t.val_scores["logit"].to_numpy()
    evaluator = routed_evaluator(t)
    m = t.timing_model
    # calibration: ms/img of the stream with every image easy / hard, through the scheduler itself;
    # an inverted one (machine noise above the routes' difference) is measured again, then given up
    fns = {
        name: (lambda xs, tau=tau: list(StreamScheduler(m, tau, batch=batch).run(enumerate(xs)))) for name, tau in ENDS
    }
    for _ in range(retries + 1):
        cal = time_streams(fns, [images], t.device, warmup=1, repeats=3)
        if cal["hard"] > cal["easy"]:
            break
    else:
        warnings.warn(
            f"disturbed stream: the hard route timed no slower than the easy one ({cal['hard']:.2f} vs "
            f"{cal['easy']:.2f} ms/img, {retries + 1} tries); the machine is too noisy to set a target, nothing run",
            stacklevel=2,
        )
        return {
            "phases": pd.DataFrame(columns=PHASE_COLUMNS),
            "history": pd.DataFrame(columns=HISTORY_COLUMNS),
            "calibration": pd.DataFrame(
                [{"lat_easy ms/img": cal["easy"], "lat_hard ms/img": cal["hard"], "noisy": True}]
            ),
        }
    # lat_t = (1 - k) lat_easy + k lat_hard
    target = mix(easy=cal["easy"], hard=cal["hard"], k=target_k)
    tau_open = routing.threshold_for_latency(z_val, target, cal["easy"], cal["hard"])
    phase_rows, history = [], []
    loops = loops or {
        "open loop": partial(LatencyController, closed=False),
        "closed loop": LatencyController,
    }
    for loop, make in loops.items():
        # every loop starts at the calibrated (open-loop) threshold; the open loop keeps it
        ctrl = make(target, z_val, cal["easy"], cal["hard"], window=window, memory=memory)
        done_images = 0
        for phase in PHASES:
            competitor = start_competitor(duty) if phase == "loaded" else None
            n_hist = len(ctrl.history)
            try:
                sched = StreamScheduler(m, ctrl, batch=batch)
                t0 = time.perf_counter()
                results = []
                for _ in tqdm(range(passes), desc=f"{loop}, {phase}", disable=not progress, leave=False):
                    results.append(list(sched.run(enumerate(images))))
                wall = time.perf_counter() - t0
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
            n = passes * len(images)
            aps = [evaluator.evaluate({ids[r.id]: r.hard for r in res})["AP"] for res in results]
            hard = np.mean([[r.hard for r in res] for res in results])
            # the routes' ms/img as the stream measured them in this phase (mean over its windows):
            # lat_easy = c_first + c_easy, lat_hard = c_first + c_hard; a target outside is out of reach
            costs = pd.DataFrame(ctrl.history[n_hist:]).reindex(columns=["c_first", "c_easy", "c_hard"])
            phase_rows.append(
                {
                    "loop": loop,
                    "phase": phase,
                    "images": n,
                    "ms/img": wall * 1e3 / n,
                    "target ms/img": target,
                    "achieved / target": wall * 1e3 / n / target,
                    "fraction hard": float(hard),
                    "AP": float(np.mean(aps)),
                    "lat_easy now": float((costs["c_first"] + costs["c_easy"]).mean()),
                    "lat_hard now": float((costs["c_first"] + costs["c_hard"]).mean()),
                }
            )
            for h in ctrl.history[n_hist:]:
                done_images += h["images"]
                history.append({"loop": loop, "phase": phase, **h, "images": done_images})
    calibration = pd.DataFrame(
        [
            {
                "lat_easy ms/img": cal["easy"],
                "lat_hard ms/img": cal["hard"],
                "target ms/img": target,
                "tau_open": tau_open,
                "noisy": False,
            }
        ]
    )
    phases = pd.DataFrame(phase_rows, columns=PHASE_COLUMNS)
    return {"phases": phases, "history": pd.DataFrame(history, columns=HISTORY_COLUMNS), "calibration": calibration}
