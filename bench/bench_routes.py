"""Bench items 1-3: the routes' latency (``make bench``, part ``routes``).

1. routing overhead: router (pool + MLP) latency / easy-route latency, batch 1 and 8;
2. ``route()`` at hard fraction k vs the ideal mix (1-k) lat_easy + k lat_hard, batch 1 and 8,
   and a batch of 8 through ``route()`` vs the authors' one-image-at-a-time loop;
3. wrapper overhead: our easy route vs the plain ultralytics model.
"""

from __future__ import annotations

import numpy as np
import torch
from bench_record import mark, spread

from dynamicdet.config import Config
from dynamicdet.evaluation.speed import paired_ratio, prepare_for_timing, time_interleaved


def _times(fns: dict, warmup: int, repeats: int) -> dict[str, np.ndarray]:
    """Per-round ms (R,) of several zero-argument callables, timed in alternation (round robin)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {k: np.array(v["times_ms"]) for k, v in time_interleaved(fns, device, warmup, repeats).items()}


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
                "mark": mark(r1["ratio"], 0.02, False),
                "detail": f"router {med['router']:.3f} ms, easy {med['easy']:.2f} ms (medians); {spread(r1)}",
            }
        )
        rows.append(
            {
                "item": f"3. easy route / plain ultralytics {cfg.model.family}{cfg.model.scale}, batch {b}",
                "value": r3["ratio"],
                "goal": "<= 1.05",
                "mark": mark(r3["ratio"], 1.05, False),
                "detail": f"easy {med['easy']:.2f} ms, plain {med['plain']:.2f} ms (medians); {spread(r3)}",
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
                    f"(medians, {n_img} images); " + spread(r2),
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
                    "mark": mark(r["ratio"], 1.0, True),
                    "detail": f"loop {np.median(t2['loop']):.1f} ms, batched {np.median(t2['batched']):.1f} ms "
                    f"(medians); {spread(r)}",
                }
            )
    return rows
