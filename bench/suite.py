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
8. route-aware stream scheduling (full hard batches, `dynamicdet.deploy.stream`) vs the ideal mix at batch 8 and 32
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

This file runs the parts in order and writes the record (``bench_record.save``); the items are
measured in ``bench_routes.py`` (1-3), ``bench_training.py`` (4-5), ``bench_controller.py`` (6, 10),
``bench_datagen.py`` (7), ``bench_stream.py`` (8) and ``bench_export.py`` (9).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from bench_controller import bench_controller, bench_disturbance
from bench_datagen import bench_datagen
from bench_export import bench_export
from bench_record import provenance, save, stamp
from bench_routes import bench_routes
from bench_stream import bench_stream
from bench_training import bench_step1, bench_step2

from dynamicdet.config import load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.engine.build import build_model

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


def _keep_other_parts(old: dict, record: dict, parts: tuple[str, ...]) -> dict:
    """A partial run replaces only its parts; the others stay, marked with the run that measured them."""
    kept = [
        {**r, "measured": r.get("measured", f"{old['date']}, git {old['git_sha']}")}
        for r in old["rows"]
        if _part_of(r) not in parts
    ]
    record["rows"] = sorted(record["rows"] + kept, key=lambda r: PARTS.index(_part_of(r)))
    merged = {p: old.get("part_s", {}).get(p) for p in PARTS if p not in parts} | record["part_s"]
    record["part_s"] = {p: merged[p] for p in PARTS if p in merged}
    return record


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
        **stamp(t_start),  # date, git_sha, env, wall_s
        "parts": list(parts),
        "part_s": part_s,  # wall time of each part measured in this run
        "rows": rows,
    }
    keep = None if set(parts) == set(PARTS) else partial(_keep_other_parts, parts=parts)
    return save("bench", record, render, keep=keep)


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
        last = r.get("parts", PARTS)  # the parts the last run measured
        wall = "bench wall time" if set(last) == set(PARTS) else f"the last run ({', '.join(last)}) took"
        lines += [
            f"## {config} ({r['model']}, {r['img_size']} px)",
            "",
            f"{provenance(r)}, ultralytics {e['ultralytics']}; {wall} {r['wall_s']} s"
            + (
                " (time per part: " + ", ".join(f"{p} {t:.0f} s" for p, t in r["part_s"].items() if t) + ")."
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
