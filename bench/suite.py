"""Benchmark suite: the performance goals, measured side by side in one process.

``make bench CONFIG=quick`` (or ``python bench/suite.py --config quick``) measures,
on this machine and in one run, and merges into ``results/bench.json`` / ``results/bench.md``:

1. routing overhead: router (pool + MLP) latency / easy-route latency (goal <= 2%);
2. batched routing vs ideal: ``route()`` at hard fraction k vs (1-k) lat_easy + k lat_hard,
   batch 1 (goal within 5% at 0 < k < 1; at k = 0 and 1 the two are the same call, a report of the
   timing noise) and batch 8 (report: one batch split in two sub-batches costs more
   than the mix; the goal at batch > 1 is item 8's scheduler); and a batch of 8 through
   ``route()`` vs the authors' one-image-at-a-time loop (expect a clear speed-up);
3. wrapper overhead: our easy route vs the plain ultralytics model (goal <= 1.05);
4. step-2 cost: cached vs direct router training for the same views and epochs (goal >= 10x),
   and the authors' recipe (batch 1, both detectors every step);
5. step-1 throughput: img/s of joint training vs ultralytics' trainer on one plain detector;
6. threshold controller, open loop: achieved / target latency for k in {0.1, 0.5, 0.9} (report: a
   calibration cannot foresee the machine's speed in the next pass; goal: 6b, achieved / the latency
   model on the same few images moments apart, within 5%, and item 10's closed loop);
7. data generation speed (images/s at 256 px, the median of 3 runs);
8. route-aware stream scheduling (full hard batches, `dynamicdet.stream`) vs the ideal mix at batch 8 and 32
   (goal within 5%), the same call timed twice as the noise floor of these ratios (8a), and per-image
   p50/p95 latency with and without a max-wait deadline;
9. ONNX export on onnxruntime vs the torch model: ms/img of the easy route, the hard route and
   the routed stream at k = 0.5, batch 1 and 8 (report);
10. latency controller under a disturbance (`experiments.controller`): a val stream through the
   scheduler, quiet / loaded (a competing CPU-bound process) / quiet; closed-loop achieved /
   target per phase (goal within 5%), the open-loop figure and the AP of both beside it.

Latencies are medians over repeats after a warm-up, alternating the compared variants (in
counterbalanced order) so that machine noise hits both; a ratio is the median over rounds of
that round's ratio (``speed.paired_ratio``). A benchmark reports; it exits 0 whether goals pass or not.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from bench_datagen import measure_datagen

from dynamicdet import paths, routing
from dynamicdet.build import build_model
from dynamicdet.checkpoint import load_into
from dynamicdet.config import Config, load_config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.loaders import to_device
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.experiments import target_latency, train_ultralytics, trained
from dynamicdet.experiments.controller import disturbed_stream
from dynamicdet.export import OnnxDynamicDetector, export_onnx
from dynamicdet.results import git_sha
from dynamicdet.speed import environment, paired_ratio, prepare_for_timing, time_interleaved, time_streams
from dynamicdet.step1 import train_step1
from dynamicdet.step2 import build_router_cache, fit_router, fit_router_direct, view_dataset, view_loader
from dynamicdet.stream import StreamScheduler


def _times(fns: dict, warmup: int, repeats: int) -> dict[str, np.ndarray]:
    """Per-round ms (R,) of several zero-argument callables, timed in alternation (round robin)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {k: np.array(v["times_ms"]) for k, v in time_interleaved(fns, device, warmup, repeats).items()}


def _spread(r: dict) -> str:
    """How a paired ratio was taken (for a row's detail)."""
    return f"median of {r['rounds']} per-round ratios ({r['lo']:.3f}-{r['hi']:.3f})"


@contextmanager
def _temporary_home():
    old = os.environ.get("DYNAMICDET_HOME")
    with tempfile.TemporaryDirectory(prefix="bench_home_") as tmp:
        os.environ["DYNAMICDET_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("DYNAMICDET_HOME")
            else:
                os.environ["DYNAMICDET_HOME"] = old


def _goal(value: float, goal: float, higher_is_better: bool) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return "PASS" if ok else "MISS"


def bench_routes(cfg: Config, model, warmup: int, repeats: int) -> list[dict]:
    """Items 1-3: router overhead, route() vs ideal (batch 1 and 8) and vs a batch-1 loop, wrapper overhead.

    Items 1 and 3 time single calls of 0.2-60 ms, so they take many rounds (10x ``repeats`` at
    batch 1, 3x at batch 8: 20 rounds left the per-round ratios of item 3 at 0.81-1.40 and
    their median 1.065 in one run). Item 2 times, per batch size, one round robin of 7 entries
    (``repeats`` x 2 rounds): the easy and hard routes, route() at every k, and the two
    routes again (k = 0 and 1: route() and the pure route are then the same call, the noise
    floor of the ratios).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = prepare_for_timing(model, device)
    plain = prepare_for_timing(model.det1, device)
    size = cfg.data.img_size
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rows = []
    for b in (1, 8):
        x = torch.rand(b, 3, size, size, device=device, dtype=dtype)
        with torch.inference_mode():
            f1 = m.taps(m.backbone1(x))
        t = _times(
            {
                "easy": lambda x=x: m.route(x, float("inf")),
                "hard": lambda x=x: m.route(x, float("-inf")),
                "plain": lambda x=x: plain(x),
                "router": lambda f1=f1: m.router(f1),
            },
            warmup,
            repeats * (10 if b == 1 else 3),
        )
        med = {k: float(np.median(v)) for k, v in t.items()}
        r1, r3 = paired_ratio(t["router"], t["easy"]), paired_ratio(t["easy"], t["plain"])
        rows.append(
            {
                "item": f"1. router / easy route, batch {b}",
                "value": r1["ratio"],
                "goal": "<= 0.02",
                "mark": _goal(r1["ratio"], 0.02, False),
                "detail": f"router {med['router']:.3f} ms, easy {med['easy']:.2f} ms (medians); {_spread(r1)}",
            }
        )
        rows.append(
            {
                "item": f"3. easy route / plain ultralytics {cfg.model.family}{cfg.model.scale}, batch {b}",
                "value": r3["ratio"],
                "goal": "<= 1.05",
                "mark": _goal(r3["ratio"], 1.05, False),
                "detail": f"easy {med['easy']:.2f} ms, plain {med['plain']:.2f} ms (medians); {_spread(r3)}",
            }
        )
        # route() at hard fraction k: batch 1 = a stream of 10 images, each on its own route (the hard
        # ones at random places); batch 8 = one batch split between the routes
        ks = (0.1, 0.5, 0.9)
        n_img = 10 if b == 1 else 8
        xs = torch.rand(n_img, 3, size, size, device=device, dtype=dtype)
        n_hard = {k: round(k * n_img) for k in ks}
        fns = {}
        if b == 1:
            # a threshold of +-inf per image reproduces the split exactly (route() code path unchanged)
            def stream(taus, xs=xs):
                for i in range(len(taus)):
                    m.route(xs[i : i + 1], taus[i])

            spots = np.random.default_rng(0).permutation(n_img)
            for name, tau in (("easy", float("inf")), ("hard", float("-inf"))):
                fns[name] = lambda tau=tau, n=n_img: stream([tau] * n)
            for k in ks:
                taus = [float("inf")] * n_img
                for i in spots[: n_hard[k]]:
                    taus[i] = float("-inf")
                fns[f"route {k}"] = lambda taus=taus: stream(taus)
        else:
            # the batch ordered by router logit, so a threshold takes exactly the first n_hard images
            with torch.inference_mode():
                z = m.score_logit(xs)
            order = torch.argsort(z, descending=True)
            xb, zb = xs[order], z[order]
            for name, tau in (("easy", float("inf")), ("hard", float("-inf"))):
                fns[name] = lambda tau=tau, xb=xb: m.route(xb, tau)
            for k in ks:
                fns[f"route {k}"] = lambda tau=float(zb[n_hard[k] - 1]) - 1e-6, xb=xb: m.route(xb, tau)
        # k = 0 and k = 1: route() is the pure route's call; timed again under another name
        fns["route 0.0"], fns["route 1.0"] = fns["easy"], fns["hard"]
        t_k = _times(fns, max(1, warmup // 2) if b == 1 else warmup, 2 * repeats)
        for k in (0.0, *ks, 1.0):
            k_real = k if k in (0.0, 1.0) else n_hard[k] / n_img
            # ideal_i = (1 - k) t_easy,i + k t_hard,i in round i; ratio = median_i (t_route,i / ideal_i)
            ideal = (1 - k_real) * t_k["easy"] + k_real * t_k["hard"]
            r2 = paired_ratio(t_k[f"route {k}"], ideal)
            # k = 0 and k = 1: the ratio measures only the timing noise (reported). 0 < k < 1: one batch split
            # into an easy and a hard sub-batch costs more than the mix (a small hard sub-batch costs nearly a
            # full batch): at batch > 1 the goal is item 8's, the stream scheduler's full hard batches
            ends = k in (0.0, 1.0)
            goal = b == 1 and not ends
            rows.append(
                {
                    "item": f"2. route() / ideal mix, batch {b}, k={k_real:.3f}",
                    "value": r2["ratio"],
                    "goal": "0.95-1.05"
                    if goal
                    else ("report (the same call twice: timing noise)" if ends else "report (goal: item 8)"),
                    "mark": ("PASS" if 0.95 <= r2["ratio"] <= 1.05 else "MISS") if goal else "-",
                    "detail": f"route {np.median(t_k[f'route {k}']):.2f} ms, ideal {np.median(ideal):.2f} ms "
                    f"(medians, {n_img} images); " + _spread(r2),
                }
            )
        if b == 8:
            with torch.inference_mode():
                tau = float(torch.quantile(m.score_logit(x), 0.5))

            def loop(x=x, tau=tau):
                for i in range(len(x)):
                    m.route(x[i : i + 1], tau)

            t2 = _times({"batched": lambda x=x, tau=tau: m.route(x, tau), "loop": loop}, warmup, repeats)
            r = paired_ratio(t2["loop"], t2["batched"])
            rows.append(
                {
                    "item": "2. batch of 8 at k~0.5: one-at-a-time loop / batched route()",
                    "value": r["ratio"],
                    "goal": "> 1 (speed-up)",
                    "mark": _goal(r["ratio"], 1.0, True),
                    "detail": f"loop {np.median(t2['loop']):.1f} ms, batched {np.median(t2['batched']):.1f} ms "
                    f"(medians); {_spread(r)}",
                }
            )
    return rows


def bench_step2(cfg: Config) -> list[dict]:
    """Item 4: router training with the cache vs the direct path vs the authors' recipe."""
    device = torch.device("cpu")
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    load_into(model, train_step1(cfg, progress=False))
    epochs = cfg.router.epochs
    t0 = time.perf_counter()
    cache = build_router_cache(model, cfg, info, device, progress=False)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_router(cache, cfg)
    t_fit = time.perf_counter() - t0
    one = copy.deepcopy(cfg)
    one.router.epochs = 1
    t0 = time.perf_counter()
    fit_router_direct(model, one, info, device, progress=False)
    t_direct1 = time.perf_counter() - t0  # median pass + one epoch
    t_direct = t_direct1 + (epochs - 1) * t_cache  # each further epoch = one more pass over the views
    # the authors' loop shape: batch 1, both detectors every step, router backward, V views x N images
    router = copy.deepcopy(model.router).train().requires_grad_(True)
    opt = torch.optim.AdamW(router.parameters(), lr=1e-5)
    ds = view_dataset(cfg, info)
    n_time, seen = 16, 0
    t0 = time.perf_counter()
    for batch in view_loader(cfg, ds, 0, batch=1):
        pooled, l1, l2 = model.router_batch(to_device(batch, device))
        phi = router.head(pooled)
        loss = ((1 - phi) * l1 + phi * l2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        seen += 1
        if seen >= n_time:
            break
    per_img = (time.perf_counter() - t0) / seen
    n_views = cfg.router.views * len(ds)
    t_authors = per_img * n_views
    t_cached = t_cache + t_fit
    return [
        {
            "item": f"4. step 2, direct / cached ({cfg.router.views} views x {len(ds)} images, {epochs} epochs)",
            "value": t_direct / t_cached,
            "goal": ">= 10",
            "mark": _goal(t_direct / t_cached, 10, True),
            "detail": f"cached {t_cached:.1f} s (cache {t_cache:.1f} s + fit {t_fit:.2f} s); direct {t_direct:.1f} s "
            f"(measured 1 epoch + median pass {t_direct1:.1f} s, + {epochs - 1} x one pass)",
        },
        {
            "item": "4. step 2, authors' recipe (batch 1, both detectors per step, 1 pass of the views) / cached",
            "value": t_authors / t_cached,
            "goal": "report",
            "mark": "-",
            "detail": f"authors {t_authors:.1f} s ({per_img * 1e3:.0f} ms/img timed on {seen} images x {n_views}); "
            f"cached {t_cached:.1f} s incl. {epochs} router epochs",
        },
    ]


def bench_step1(cfg: Config) -> list[dict]:
    """Item 5: one epoch of joint training vs ultralytics' trainer on one plain detector (no validation)."""
    one = copy.deepcopy(cfg)
    one.train.epochs = 1
    n = cfg.data.n_train if cfg.data.source == "synthetic" else None
    with _temporary_home():
        t0 = time.perf_counter()
        train_step1(one, progress=False, validate=False)
        ours = time.perf_counter() - t0
    with _temporary_home() as home:
        t0 = time.perf_counter()
        train_ultralytics(one, cfg.model.scale, 1, home, "u", close_mosaic=0)
        theirs = time.perf_counter() - t0
    ratio = theirs / ours
    return [
        {
            "item": "5. step-1 img/s: joint (2 detectors) / ultralytics trainer (1 detector)",
            "value": ratio,
            "goal": "report (~0.45 expected)",
            "mark": "-",
            "detail": f"ours {n / ours:.1f} img/s ({ours:.1f} s), ultralytics {n / theirs:.1f} img/s ({theirs:.1f} s), "
            f"{n} images, 1 epoch incl. setup",
        }
    ]


# item 6b interleaves the compared streams every SEGMENT images (batch 1): pairs of calls moments apart
SEGMENT = 6


def bench_controller(cfg: Config, rounds: int = 3) -> list[dict]:
    """Item 6: threshold from a target latency, then measured route() latency on val images.

    Figures are medians over ``rounds`` rounds of :func:`experiments.target_latency` (the
    shared machine changes speed by up to 1.7x from one minute to the next).
    """
    demo = target_latency(trained(cfg, progress=False), rounds=rounds, progress=False, segment=SEGMENT)
    rows = []
    for _, r in demo.iterrows():
        where = (
            f"batch 1, a stream of {int(r['images'])} val images spread over the router's scores "
            f"(hard fraction {r['timed fraction hard']:.2f})"
        )
        for item, col, how in (
            (
                "6. achieved / target latency",
                "achieved / target",
                f"target {r['target ms/img']:.2f} ms from a calibration pass, achieved {r['achieved ms/img']:.2f} ms "
                f"in the next (rounds {r['achieved / target_min']:.3f}-{r['achieved / target_max']:.3f}); "
                f"median of {rounds} rounds",
            ),
            (
                "6b. achieved / latency model (same pass)",
                "achieved / model",
                "lat_easy + k_s (lat_hard - lat_easy) from the easy/hard passes over the same segment s of "
                f"{SEGMENT} images, timed in alternation with route(); median of {int(r['achieved / model_n'])} "
                f"per-segment ratios (every segment of every timing round of {rounds} rounds)",
            ),
        ):
            # open loop: a threshold calibrated in one pass cannot hold its target if the machine's speed
            # changes before the next (a shared machine); the goal is item 10's closed loop, and 6b checks
            # the latency model itself within one pass
            goal = item.startswith("6b")
            rows.append(
                {
                    "item": f"{item}, k={r['target k']}",
                    "value": float(r[col]),
                    "goal": "0.95-1.05" if goal else "report (goal: 6b and item 10)",
                    "mark": ("PASS" if 0.95 <= r[col] <= 1.05 else "MISS") if goal else "-",
                    "detail": f"{how}; {where}",
                }
            )
    return rows


def bench_stream(cfg: Config, model, repeats: int, batches=(8, 32), ks=(0.125, 0.5, 0.875)) -> list[dict]:
    """Item 8: the route-aware stream scheduler (full H1 and B2 + H2 batches) vs the ideal mix, and its latency.

    A stream of max(8 x batch, 128) random images (4 x batch before: a 0.25 s pass at batch 8
    left the ratios +-0.1 noisy on this machine); the threshold is the logit quantile that sends a
    fraction k of them to the hard route. ``t_easy`` / ``t_hard``: the same stream with every
    image easy / hard; ideal = (1 - k) t_easy + k t_hard. Per batch size, in one counterbalanced
    round robin (:func:`~dynamicdet.speed.time_interleaved`): the two ends, every k's stream
    (the scheduler's default, easy images queued for full H1 batches), 8c (H1 at once on each
    batch's easy sub-batch) at k = 0.5, and the easy stream a second time (8a: the same call
    under two names, the noise floor of these ratios). Each ratio is the median over rounds of
    that round's stream time over that round's ideal mix (:func:`~dynamicdet.speed.paired_ratio`),
    so a drift of the machine's speed between rounds cancels.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = prepare_for_timing(model, device)
    size = cfg.data.img_size
    rows = []
    for b in batches:
        torch.manual_seed(0)
        xs = torch.rand(max(8 * b, 128), 3, size, size, device=device)
        n = len(xs)
        with torch.inference_mode():
            z = m.score_logit(xs).float().cpu().numpy()

        def stream(tau, max_wait_s=None, batch_easy=True, xs=xs, b=b):
            sched = StreamScheduler(m, tau, batch=b, max_wait_s=max_wait_s, batch_easy=batch_easy)
            return list(sched.run(enumerate(xs)))

        taus = {k: routing.threshold_for_fraction(z, k) for k in ks}
        k_other = min(ks, key=lambda k: abs(k - 0.5))
        fns = {"easy": lambda: stream(float("inf")), "hard": lambda: stream(float("-inf"))}
        for k, tau in taus.items():
            fns[f"stream {k}"] = lambda tau=tau: stream(tau)
        fns["other"] = lambda tau=taus[k_other]: stream(tau, batch_easy=False)
        fns["easy again"] = lambda: stream(float("inf"))
        t = {name: np.array(r["times_ms"]) for name, r in time_interleaved(fns, device, 1, repeats).items()}
        aa = paired_ratio(t["easy again"], t["easy"])
        rows.append(
            {
                "item": f"8a. easy stream / the same call again (timing noise), batch {b}",
                "value": aa["ratio"],
                "goal": "report",
                "mark": "-",
                "detail": f"{_spread(aa)}: how far the ratios below can stray from the truth on this machine",
            }
        )
        for k, tau in taus.items():
            k_real = float((z >= tau).mean())
            # ideal_i = (1 - k) t_easy,i + k t_hard,i in round i; ratio = median_i (t_stream,i / ideal_i)
            ideal = (1 - k_real) * t["easy"] + k_real * t["hard"]
            r = paired_ratio(t[f"stream {k}"], ideal)
            rows.append(
                {
                    "item": f"8. stream scheduler / ideal mix, batch {b}, k={k_real:.3f}",
                    "value": r["ratio"],
                    "goal": "<= 1.05",
                    "mark": _goal(r["ratio"], 1.05, False),
                    "detail": f"stream {np.median(t[f'stream {k}']) / n:.2f} ms/img, ideal {np.median(ideal) / n:.2f} "
                    f"ms/img (medians); {_spread(r)}",
                }
            )
            if k == k_other:
                o = paired_ratio(t["other"], ideal)
                rows.append(
                    {
                        "item": f"8c. stream, the other easy-route mode / ideal mix, batch {b}, k={k_real:.3f}",
                        "value": o["ratio"],
                        "goal": "report",
                        "mark": "-",
                        "detail": "batch_easy=False (H1 at once on each batch's easy images; the default queues "
                        f"them): {np.median(t['other']) / n:.2f} ms/img; {_spread(o)}; other mode faster than "
                        f"the default in {int((t['other'] < t[f'stream {k}']).sum())} of {repeats} rounds",
                    }
                )
        tau = routing.threshold_for_fraction(z, 0.5)
        for wait in (None, 0.0):
            lat = np.array([r.latency_ms for r in stream(tau, wait)])
            rows.append(
                {
                    "item": f"8b. stream p95 per-image latency (ms), batch {b}, k=0.5, max wait "
                    + ("none" if wait is None else f"{wait:g} s"),
                    "value": float(np.percentile(lat, 95)),
                    "goal": "report",
                    "mark": "-",
                    "detail": f"p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms",
                }
            )
    return rows


def bench_datagen(n: int = 1000, runs: int = 3) -> list[dict]:
    """Item 7: images/s of the synthetic generator (2 processes, 256 px), the median of ``runs`` runs.

    The VM's speed moves one run's figure by up to +-15% from one minute to the next (95-126
    img/s at 400 images in runs minutes apart, in this process or a fresh one alike). 1000
    images (the quick config's dataset is 600 + val; a user's, thousands) keep the fixed cost of
    a run (starting the processes, writing the json: about 0.14 s, fitted from runs of 100 and
    1200 images) under 2% of the figure (4% at 400).
    """
    speeds = [measure_datagen(n=n)["images_per_s"] for _ in range(runs)]
    value = float(np.median(speeds))
    return [
        {
            "item": "7. data generation, 256 px, 2 processes (images/s)",
            "value": value,
            "goal": ">= 100",
            "mark": _goal(value, 100, True),
            "detail": f"{n} images; median of {runs} runs ({', '.join(f'{v:.1f}' for v in speeds)})",
        }
    ]


def bench_export(cfg: Config, model, repeats: int, batches=(1, 8)) -> list[dict]:
    """Item 9: the ONNX export (three graphs, routed in Python) on onnxruntime vs the fused torch model, CPU.

    A stream of 16 random images per batch size; k = 0.5 thresholds at the median of the
    router's logits on that stream; torch and onnxruntime passes timed in alternation.
    """
    m = prepare_for_timing(model, torch.device("cpu")).float()
    size = cfg.data.img_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        ort_model = OnnxDynamicDetector(export_onnx(model, tmp, size, list(cfg.data.classes)))
        torch.manual_seed(0)
        xs = torch.rand(16, 3, size, size)
        with torch.inference_mode():
            tau = routing.threshold_for_fraction(m.score_logit(xs).numpy(), 0.5)
        for b in batches:
            batches_t = list(xs.split(b))
            for route, t in (("easy route", float("inf")), ("hard route", float("-inf")), ("routed, k=0.5", tau)):
                ms = time_streams(
                    {
                        "torch": lambda x, t=t: m.route(x, t),
                        "onnxruntime": lambda x, t=t: ort_model.route(x, t),
                    },
                    batches_t,
                    "cpu",
                    warmup=1,
                    repeats=repeats,
                )
                rows.append(
                    {
                        "item": f"9. onnxruntime / torch latency, {route}, batch {b}",
                        "value": ms["onnxruntime"] / ms["torch"],
                        "goal": "report",
                        "mark": "-",
                        "detail": f"onnxruntime {ms['onnxruntime']:.2f} ms/img, torch {ms['torch']:.2f} ms/img",
                    }
                )
    return rows


# The competing process of item 10 (``experiments.controller.start_competitor``) spins this fraction
# of every 10 ms. A closed loop can only hold a target the routes can still reach: under a
# slow-down s it needs s lat_easy <= target <= s lat_hard, so s must stay within
# [target / lat_hard, target / lat_easy] (reported per row). Measured on the 2-core VM at quick,
# batch 8, easy stream, medians of 3 (torch on both cores, so a competitor stalls parallel
# regions): duty 0.02 slowed it 1.05x, 0.1 1.13x, 1 (one core taken; notebook 05's default)
# 3.6x. Duty 0.1 is a slow-down the routes can absorb: at batch 8 the hard route costs 1.4-1.5x
# the easy one, so a target at k from the calibration is reachable for s within about
# [(1 + 0.45 k) / 1.45, 1 + 0.45 k]. The target sits above the middle (k = 0.7: about 0.92x-1.32x)
# because the machine only slows down here: at k = 0.5 (0.84x-1.24x) the closed loop missed the
# loaded phase in both configs at 924476d (1.085 and 1.051 of the target), where the routes'
# times it measured put the all-easy stream at 1.03 and 1.01 of the target (the loaded phase ran
# 1.25x the calibration's easy time at quick: the competitor's 1.16x on a machine already 1.08x
# slower than at calibration). Rescaled to a target at k = 0.7, the routes' times the closed loop
# measured in every phase of those runs and of the runs at 1815123 put the all-easy stream at
# 0.74-0.96 and the all-hard one at 1.13-1.95 of the target: inside, both ways.
DISTURBANCE_DUTY = 0.1
DISTURBANCE_TARGET_K = 0.7


def bench_disturbance(
    cfg: Config, passes: int = 3, duty: float = DISTURBANCE_DUTY, target_k: float = DISTURBANCE_TARGET_K
) -> list[dict]:
    """Item 10: closed- vs open-loop latency through a quiet / loaded / quiet stream of val images."""
    out = disturbed_stream(
        trained(cfg, progress=False), batch=8, passes=passes, target_k=target_k, duty=duty, progress=False
    )
    cal = out["calibration"].iloc[0]
    if cal["noisy"]:  # the hard route timed no slower than the easy one: nothing to hold, recorded as such
        return [
            {
                "item": "10. calibration hard / easy ms/img, batch 8 (inverted: the loops were not run)",
                "value": float(cal["lat_hard ms/img"] / cal["lat_easy ms/img"]),
                "goal": "report",
                "mark": "-",
                "detail": "machine noise above the routes' difference during the calibration",
            }
        ]
    ph = out["phases"].set_index(["loop", "phase"])
    quiet_open = ph.loc[("open loop", "quiet"), "ms/img"]
    # slow-downs s (against the calibration) under which some hard fraction meets the target:
    # s lat_easy <= target <= s lat_hard; the open loop's achieved / target estimates s (its hard
    # fraction on the stream is close to, not exactly, the calibrated one)
    target = cal["target ms/img"]
    reach = f"{target / cal['lat_hard ms/img']:.2f}-{target / cal['lat_easy ms/img']:.2f}"

    def out_of_reach(c) -> str:  # no hard fraction meets the target within 5%: the routes' own times say so
        if c["lat_easy now"] > 1.05 * target:
            return " (out of reach: the all-easy stream alone was slower than the target)"
        if c["lat_hard now"] < 0.95 * target:
            return " (out of reach: the all-hard stream was faster than the target)"
        return ""

    rows = []
    for phase in ph.loc["closed loop"].index:
        c, o = ph.loc[("closed loop", phase)], ph.loc[("open loop", phase)]
        rows.append(
            {
                "item": f"10. closed-loop achieved / target, batch 8, {phase} phase",
                "value": float(c["achieved / target"]),
                "goal": "0.95-1.05",
                "mark": "PASS" if 0.95 <= c["achieved / target"] <= 1.05 else "MISS",
                "detail": f"target {c['target ms/img']:.2f} ms/img; open loop {o['achieved / target']:.3f} "
                f"(machine {o['ms/img'] / quiet_open:.2f}x the quiet open-loop time; a closed loop can reach the "
                f"target while the open loop's ratio is within {reach}); routes as the closed loop measured them "
                f"in this phase: easy {c['lat_easy now'] / target:.2f}, hard {c['lat_hard now'] / target:.2f} x the "
                f"target{out_of_reach(c)}; hard fraction closed "
                f"{c['fraction hard']:.2f} vs open {o['fraction hard']:.2f}; AP closed {c['AP']:.3f} vs open "
                f"{o['AP']:.3f}; {int(c['images'])} images; competing process duty {duty}, target at k = {target_k}",
            }
        )
    return rows


PARTS = ("routes", "step2", "step1", "controller", "stream", "datagen", "export", "disturbance")
# the part that measures each numbered item of the report
_PART_OF_ITEM = {
    "1": "routes",
    "2": "routes",
    "3": "routes",
    "4": "step2",
    "5": "step1",
    "6": "controller",
    "7": "datagen",
    "8": "stream",
    "9": "export",
    "10": "disturbance",
}


def _part_of(row: dict) -> str:
    number = row["item"].split(".")[0].rstrip("abcdefghijklmnopqrstuvwxyz")
    return _PART_OF_ITEM[number]


def run(config: str = "quick", quick_timing: bool = False, parts: tuple[str, ...] = PARTS) -> dict:
    """Measure ``parts`` for ``config`` and merge them into ``results/bench.{json,md}``."""
    cfg = load_config(config)
    if cfg.data.source == "synthetic":  # a fresh clone has no dataset yet (reused when it is current)
        generate_from_config(cfg, progress=False)
    warmup, repeats = (2, 5) if quick_timing else (cfg.eval.latency_warmup, max(cfg.eval.latency_repeats, 20))
    t_start = time.time()
    model = build_model(cfg, nc=len(cfg.data.classes) if cfg.data.source == "synthetic" else 80).eval()
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown bench part(s) {sorted(unknown)}; choose from {PARTS}")
    steps = {
        "routes": lambda: bench_routes(cfg, model, warmup, repeats),
        "step2": lambda: bench_step2(cfg),
        "step1": lambda: bench_step1(cfg),
        "controller": lambda: bench_controller(cfg, rounds=1 if quick_timing else 2),
        # 7 entries per round (ends, 3 k, 8c, 8a); 15 rounds at 20 repeats: 7 rounds left single ratios
        # 0.05-0.1 off in runs where the A/A pair (8a) also strayed by 0.04
        "stream": lambda: bench_stream(cfg, model, max(3, 3 * repeats // 4), batches=(8,) if quick_timing else (8, 32)),
        "datagen": lambda: bench_datagen(n=100 if quick_timing else 1000, runs=1 if quick_timing else 3),
        "export": lambda: bench_export(cfg, model, max(3, repeats // 2)),
        "disturbance": lambda: bench_disturbance(cfg, passes=1 if quick_timing else 3),
    }
    rows, part_s = [], {}
    for part in PARTS:  # rows in PARTS order (a partial run's merge sorts by it)
        if part in parts:
            t0 = time.time()
            rows += steps[part]()
            part_s[part] = round(time.time() - t0, 1)
    record = {
        "config": config,
        "img_size": cfg.data.img_size,
        "model": f"{cfg.model.family}{cfg.model.scale}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_sha": git_sha(),
        "env": environment(),
        "wall_s": round(time.time() - t_start, 1),
        "parts": list(parts),
        "part_s": part_s,  # wall time of each part measured in this run
        "rows": rows,
    }
    root = paths.results_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / "bench.json"
    allrec = json.loads(path.read_text()) if path.exists() else {}
    old = allrec.get(config)
    if old is not None and set(parts) != set(PARTS):
        # a partial run replaces only its parts; the others stay, marked with the run that measured them
        kept = [
            {**r, "measured": r.get("measured", f"{old['date']}, git {old['git_sha']}")}
            for r in old["rows"]
            if _part_of(r) not in parts
        ]
        record["rows"] = sorted(rows + kept, key=lambda r: PARTS.index(_part_of(r)))
        merged = {p: old.get("part_s", {}).get(p) for p in PARTS if p not in parts} | part_s
        record["part_s"] = {p: merged[p] for p in PARTS if p in merged}
    allrec[config] = record
    path.write_text(json.dumps(allrec, indent=2))
    (root / "bench.md").write_text(render(allrec))
    return record


def render(allrec: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench CONFIG=<config>` (`python bench/suite.py`); "
        "each section is one run on one machine, except rows marked as measured in an earlier run "
        "(`--parts` re-measures some parts only).",
        "",
    ]
    for config, r in allrec.items():
        e = r["env"]
        lines += [
            f"## {config} ({r['model']}, {r['img_size']} px)",
            "",
            f"{r['date']}, git {r['git_sha']}, {e['device']}, {e['threads']} threads, torch {e['torch']}, "
            f"ultralytics {e['ultralytics']}; bench wall time {r['wall_s']} s"
            + (
                " (parts: " + ", ".join(f"{p} {t:.0f} s" for p, t in r["part_s"].items() if t is not None) + ")."
                if r.get("part_s")
                else "."
            ),
            "",
            "| measure | value | goal | | detail |",
            "|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            detail = row["detail"] + (f" (measured in an earlier run: {row['measured']})" if "measured" in row else "")
            lines.append(f"| {row['item']} | {row['value']:.3f} | {row['goal']} | {row['mark']} | {detail} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/suite.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--fast", action="store_true", help="few repeats (for the test suite)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = p.parse_args(argv)
    rec = run(args.config, quick_timing=args.fast, parts=tuple(args.parts.split(",")))
    print(render({args.config: rec}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
