"""Controlled comparison of latency controllers through the disturbed stream (bench item 10).

Usage::

    python bench/controller_compare.py --config standard [--reps 3]

Each repetition runs :func:`~dynamicdet.experiments.controller.disturbed_stream` (one
calibration, then every controller through the same quiet / loaded / quiet stream of val
images, batch 8, target at experiments.controller.TARGET_K, competing process duty 0.1), the loops in a rotated order
so that none always runs first. The loops:

- ``open loop``: the calibrated threshold, never moved;
- ``integral``: the earlier controller, k <- clip(k + gain (target - measured) / (lat_hard -
  lat_easy), 0, 1) after every window, from that window's ms/img (gain 0.5);
- ``model``: :class:`~dynamicdet.deploy.stream.LatencyController`, k from the per-image costs of the
  three kinds of batch measured on the running stream.

Per (loop, phase): achieved / target per repetition, how many are within 5%, how many were out
of reach (the routes' ms/img as that loop measured them in that phase: all-easy above 1.05 x the
target or all-hard below 0.95 x, where no hard fraction can hold it) and how many of the others
held it, the median |achieved / target - 1|, the mean hard fraction, and the windows spent at
k = 0 or 1. Merged into
``results/controller_compare.{json,md}`` per config.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from bench_record import provenance, save, stamp

from dynamicdet.config import load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.deploy.stream import LatencyController
from dynamicdet.experiments import trained
from dynamicdet.experiments.controller import TARGET_K, disturbed_stream


@dataclass
class IntegralController(LatencyController):
    """The controller this project used before: an integral controller on k, per window."""

    gain: float = 0.5

    def _next_k(self, measured: float, c: dict[str, float]) -> float:
        # k <- clip(k + gain (target - measured) / (lat_hard - lat_easy), 0, 1)
        step = self.gain * (self.target_ms - measured) / (self.lat_hard - self.lat_easy)
        return float(np.clip(self.k + step, 0.0, 1.0))


LOOPS = {
    "open loop": partial(LatencyController, closed=False),
    "integral": IntegralController,
    "model": LatencyController,
}


RUN_COLUMNS = [
    "rep",
    "position",
    "loop",
    "phase",
    "achieved / target",
    "fraction hard",
    "AP",
    "windows",
    "windows at k = 0 or 1",
    "easy now / target",
    "hard now / target",
    "target ms/img",
]


def compare(config: str, reps: int = 3, passes: int = 3, duty: float = 0.1, target_k: float = TARGET_K) -> dict:
    """``reps`` disturbed streams of every loop in :data:`LOOPS`; per-run rows and a summary."""
    cfg = load_config(config)
    if cfg.data.source == "synthetic":
        generate_from_config(cfg, progress=False)
    t = trained(cfg, progress=False)
    names = list(LOOPS)
    rows, t0 = [], time.time()
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotated: no loop always first
        out = disturbed_stream(
            t,
            batch=8,
            passes=passes,
            target_k=target_k,
            duty=duty,
            loops={n: LOOPS[n] for n in order},
            progress=False,
        )
        cal = out["calibration"].iloc[0]
        if cal["noisy"]:
            print(f"rep {rep}: calibration inverted (hard no slower than easy), skipped")
            continue
        hist = out["history"]
        for _, r in out["phases"].iterrows():
            h = hist[(hist["loop"] == r["loop"]) & (hist["phase"] == r["phase"])]
            rows.append(
                {
                    "rep": rep,
                    "position": order.index(r["loop"]) + 1,
                    "loop": r["loop"],
                    "phase": r["phase"],
                    "achieved / target": r["achieved / target"],
                    "fraction hard": r["fraction hard"],
                    "AP": r["AP"],
                    "windows": len(h),
                    "windows at k = 0 or 1": int(((h["k"] <= 0) | (h["k"] >= 1)).sum()),
                    # the routes' ms/img as this loop measured them in this phase, over the target
                    "easy now / target": r["lat_easy now"] / cal["target ms/img"],
                    "hard now / target": r["lat_hard now"] / cal["target ms/img"],
                    "target ms/img": cal["target ms/img"],
                }
            )
        print(f"rep {rep + 1}/{reps} done ({time.time() - t0:.0f} s)", flush=True)
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    err = (runs["achieved / target"] - 1).abs()
    # out of reach: even all-easy ran slower than 1.05 x the target, or all-hard faster than 0.95 x
    out = (runs["easy now / target"] > 1.05) | (runs["hard now / target"] < 0.95)
    summary = (
        runs.assign(within=err <= 0.05, err=err, out=out, within_reach=(err <= 0.05) & ~out)
        .groupby(["loop", "phase"], sort=False)
        .agg(
            runs=("rep", "size"),
            within_5pct=("within", "sum"),
            out_of_reach=("out", "sum"),
            within_5pct_in_reach=("within_reach", "sum"),
            median_abs_error=("err", "median"),
            max_abs_error=("err", "max"),
            fraction_hard=("fraction hard", "mean"),
            AP=("AP", "mean"),
            windows_at_0_or_1=("windows at k = 0 or 1", "sum"),
            windows=("windows", "sum"),
        )
        .reset_index()
    )
    return {
        "config": config,
        **stamp(t0),  # date, git_sha, env, wall_s
        "settings": {"reps": reps, "passes": passes, "duty": duty, "target_k": target_k, "batch": 8},
        "runs": runs.to_dict("records"),
        "summary": summary.to_dict("records"),
    }


def render(allrec: dict) -> str:
    lines = [
        "# Latency controllers through the disturbed stream",
        "",
        "Made by `python bench/controller_compare.py --config <config>` (see its docstring): the same "
        "calibration and stream for every loop in a repetition, loops in rotated order.",
        "",
    ]
    for config, r in allrec.items():
        s = r["settings"]
        lines += [
            f"## {config}",
            "",
            f"{provenance(r)}; "
            f"{s['reps']} repetitions x {s['passes']} passes per phase, batch {s['batch']}, duty {s['duty']}, "
            f"target at k = {s['target_k']}; wall time {r['wall_s']} s.",
            "",
        ]
        if not r["runs"]:
            lines += ["No run: every calibration timed the hard route no slower than the easy one.", ""]
            continue
        runs = pd.DataFrame(r["runs"])
        lines += [
            pd.DataFrame(r["summary"]).to_markdown(index=False, floatfmt=".3f"),
            "",
            "Per run, achieved / target (and the routes' ms/img measured in that phase, easy - hard, over the target):",
            "",
            runs.assign(
                cell=runs["achieved / target"].map("{:.3f}".format)
                + runs["easy now / target"].map(" ({:.2f}-".format)
                + runs["hard now / target"].map("{:.2f})".format)
            )
            .pivot(index=["loop", "phase"], columns="rep", values="cell")
            .loc[runs.set_index(["loop", "phase"]).index.unique()]
            .to_markdown(),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/controller_compare.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--passes", type=int, default=3, help="passes over the val images per phase")
    args = p.parse_args(argv)
    rec = compare(args.config, reps=args.reps, passes=args.passes)
    save("controller_compare", rec, render)
    print(render({rec["config"]: rec}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
