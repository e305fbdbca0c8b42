"""Controlled comparison of latency controllers through the disturbed stream (bench item 10).

Usage::

    python bench/controller_compare.py --config standard [--reps 3]

Each repetition runs :func:`~dynamicdet.experiments.controller.disturbed_stream` (one
calibration, then every controller through the same quiet / loaded / quiet stream of val
images, batch 8, target at k = 0.5, competing process duty 0.1), the loops in a rotated order
so that none always runs first. The loops:

- ``open loop``: the calibrated threshold, never moved;
- ``integral``: the earlier controller, k <- clip(k + gain (target - measured) / (lat_hard -
  lat_easy), 0, 1) after every window, from that window's ms/img (gain 0.5);
- ``model``: :class:`~dynamicdet.stream.LatencyController`, k from the per-image costs of the
  three kinds of batch measured on the running stream.

Per (loop, phase): achieved / target per repetition, how many are within 5%, the median
|achieved / target - 1|, the mean hard fraction, and the windows spent at k = 0 or 1 (the
target out of reach, or a controller thrown there by noise). Merged into
``results/controller_compare.{json,md}`` per config.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from dynamicdet import paths, routing
from dynamicdet.config import load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.experiments import trained
from dynamicdet.experiments.controller import disturbed_stream
from dynamicdet.results import git_sha
from dynamicdet.speed import environment
from dynamicdet.stream import LatencyController


@dataclass
class IntegralController(LatencyController):
    """The controller this project used before: an integral controller on k, per window."""

    gain: float = 0.5

    def _update(self) -> None:
        measured = self._window_ms / self._images
        # k <- clip(k + gain (target - measured) / (lat_hard - lat_easy), 0, 1)
        step = self.gain * (self.target_ms - measured) / (self.lat_hard - self.lat_easy)
        self.k = float(np.clip(self.k + step, 0.0, 1.0))
        self.threshold = routing.threshold_for_fraction(self.val_logits, self.k)
        entry = {"images": self._images, "ms_per_image": measured, "k": self.k, "threshold": self.threshold}
        self.history.append(entry)
        self._images, self._window_ms = 0, 0.0


LOOPS = {
    "open loop": partial(LatencyController, closed=False),
    "integral": IntegralController,
    "model": LatencyController,
}


def compare(config: str, reps: int = 3, passes: int = 3, duty: float = 0.1, target_k: float = 0.5) -> dict:
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
                    "target ms/img": cal["target ms/img"],
                }
            )
        print(f"rep {rep + 1}/{reps} done ({time.time() - t0:.0f} s)", flush=True)
    runs = pd.DataFrame(rows)
    err = (runs["achieved / target"] - 1).abs()
    summary = (
        runs.assign(within=err <= 0.05, err=err)
        .groupby(["loop", "phase"], sort=False)
        .agg(
            runs=("rep", "size"),
            within_5pct=("within", "sum"),
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
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_sha": git_sha(),
        "env": environment(),
        "wall_s": round(time.time() - t0, 1),
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
        e, s = r["env"], r["settings"]
        lines += [
            f"## {config}",
            "",
            f"{r['date']}, git {r['git_sha']}, {e['device']}, {e['threads']} threads, torch {e['torch']}; "
            f"{s['reps']} repetitions x {s['passes']} passes per phase, batch {s['batch']}, duty {s['duty']}, "
            f"target at k = {s['target_k']}; wall time {r['wall_s']} s.",
            "",
            pd.DataFrame(r["summary"]).to_markdown(index=False, floatfmt=".3f"),
            "",
            "Per run (achieved / target):",
            "",
            pd.DataFrame(r["runs"])
            .pivot_table(index=["loop", "phase"], columns="rep", values="achieved / target", sort=False)
            .to_markdown(floatfmt=".3f"),
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
    root = paths.results_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / "controller_compare.json"
    allrec = json.loads(path.read_text()) if path.exists() else {}
    allrec[rec["config"]] = rec
    path.write_text(json.dumps(allrec, indent=2))
    (root / "controller_compare.md").write_text(render(allrec))
    print(render({rec["config"]: rec}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
