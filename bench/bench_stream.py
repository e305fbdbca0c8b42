"""Bench item 8: route-aware stream scheduling (``make bench``, part ``stream``).

8. the stream scheduler (``dynamicdet.deploy.stream``) vs the ideal mix at batch 8 and 32; 8a, the same
   call timed twice (the noise floor of these ratios); 8b, per-image p50/p95 latency with and
   without a max-wait deadline; 8c, the other easy-route mode.
"""

from __future__ import annotations

import numpy as np
import torch
from bench_record import mark, spread

from dynamicdet.config import Config
from dynamicdet.deploy.stream import StreamScheduler
from dynamicdet.evaluation.speed import paired_ratio, prepare_for_timing, time_interleaved
from dynamicdet.modeling import routing


def bench_stream(cfg: Config, model, repeats: int, batches=(8, 32), ks=(0.125, 0.5, 0.875)) -> list[dict]:
    """Item 8: the route-aware stream scheduler (full H1 and B2 + H2 batches) vs the ideal mix, and its latency.

    A stream of max(8 x batch, 128) random images (4 x batch before: a 0.25 s pass at batch 8
    left the ratios +-0.1 noisy on this machine); the threshold is the logit quantile that sends a
    fraction k of them to the hard route. ``t_easy`` / ``t_hard``: the same stream with every
    image easy / hard; ideal = (1 - k) t_easy + k t_hard. Per batch size, in one counterbalanced
    round robin (:func:`~dynamicdet.evaluation.speed.time_interleaved`): the two ends, every k's stream
    (the scheduler's default, easy images queued for full H1 batches), 8c (H1 at once on each
    batch's easy sub-batch) at k = 0.5, and the easy stream a second time (8a: the same call
    under two names, the noise floor of these ratios). Each ratio is the median over rounds of
    that round's stream time over that round's ideal mix (:func:`~dynamicdet.evaluation.speed.paired_ratio`),
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
                "detail": f"{spread(aa)}: how far the ratios below can stray from the truth on this machine",
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
                    "mark": mark(r["ratio"], 1.05, False),
                    "detail": f"stream {np.median(t[f'stream {k}']) / n:.2f} ms/img, ideal {np.median(ideal) / n:.2f} "
                    f"ms/img (medians); {spread(r)}",
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
                        f"them): {np.median(t['other']) / n:.2f} ms/img; {spread(o)}; other mode faster than "
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
