"""Controlled comparison of two estimators of bench item 6b (achieved / latency model, batch 1).

Usage::

    python bench/segment_compare.py --config quick [--reps 3] [--segment 6]

Each repetition runs :func:`~dynamicdet.experiments.target_latency` (one round) twice on the
same trained model and val stream: once with whole passes (every stream's pass over the 60
images one timed call, ``segment=None``) and once with the streams interleaved every
``segment`` images (``segment=6``, what the bench uses), the two in alternating order. At
batch 1 route() makes the very calls of the easy and hard passes, so the true ratio is 1 and
an estimator's distance from 1 is its error on this machine. Per estimator: every (repetition,
k) ratio, the largest and the mean |1 - ratio|, and how many fell outside the 0.95-1.05 goal.
Merged into ``results/segment_compare.{json,md}`` per config.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from bench_record import provenance, save, stamp

from dynamicdet.config import load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.experiments import target_latency, trained


def compare(config: str, reps: int = 3, segment: int = 6) -> dict:
    """``reps`` alternating pairs of target_latency runs (whole passes / segments); the record to save."""
    if reps < 1 or segment < 1:
        raise ValueError(f"reps and segment must be >= 1, got {reps} and {segment}")
    cfg = load_config(config)
    if cfg.data.source == "synthetic":
        generate_from_config(cfg, progress=False)
    t = trained(cfg, progress=False)
    t0 = time.time()
    estimators = [("whole passes", None), (f"segments of {segment}", segment)]
    runs, images = [], 0
    for rep in range(reps):
        for position, (name, seg) in enumerate(estimators if rep % 2 == 0 else estimators[::-1], start=1):
            start = time.time()
            demo = target_latency(t, rounds=1, progress=False, segment=seg)
            images = int(demo["images"].iloc[0])
            for _, r in demo.iterrows():
                runs.append(
                    {
                        "rep": rep,
                        "position": position,
                        "estimator": name,
                        "k": float(r["target k"]),
                        "achieved / model": float(r["achieved / model"]),
                        "ratios": int(r["achieved / model_n"]),
                        "seconds": round(time.time() - start, 1),
                    }
                )
    df = pd.DataFrame(runs)
    err = (df["achieved / model"] - 1).abs()  # NaN for a round skipped as noisy (counted, never an error)
    summary = (
        df.assign(err=err, outside=(err > 0.05))
        .groupby("estimator", sort=False)
        .agg(
            runs=("err", "size"),
            ratios_per_run=("ratios", "median"),
            max_error=("err", "max"),
            mean_error=("err", "mean"),
            outside_goal=("outside", "sum"),
            seconds_per_run=("seconds", "median"),
        )
        .reset_index()
    )
    return {
        "config": config,
        **stamp(t0),  # date, git_sha, env, wall_s
        "settings": {"reps": reps, "segment": segment, "images": images},
        "runs": runs,
        "summary": summary.to_dict("records"),
    }


def render(allrec: dict) -> str:
    lines = [
        "# Item 6b's estimator: whole passes vs segments",
        "",
        "Made by `python bench/segment_compare.py --config <config>` (see its docstring): "
        "achieved / latency model at batch 1, where the truth is 1; the two estimators in alternating order.",
        "",
    ]
    for config, r in allrec.items():
        s = r["settings"]
        runs = pd.DataFrame(r["runs"])
        lines += [
            f"## {config}",
            "",
            f"{provenance(r)}; "
            f"{s['reps']} repetitions of one round, {s['images']} val images; wall time {r['wall_s']} s.",
            "",
            pd.DataFrame(r["summary"]).to_markdown(index=False, floatfmt=".3f"),
            "",
            "Per repetition, achieved / model at each k:",
            "",
            runs.pivot(index=["estimator", "k"], columns="rep", values="achieved / model").to_markdown(floatfmt=".3f"),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/segment_compare.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--segment", type=int, default=6, help="images per segment of the segmented estimator")
    args = p.parse_args(argv)
    rec = compare(args.config, reps=args.reps, segment=args.segment)
    save("segment_compare", rec, render)
    print(render({rec["config"]: rec}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
