"""``python -m dynamicdet.experiments.seeds work|tables|gap``: see :mod:`dynamicdet.experiments.seeds`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from dynamicdet import paths
from dynamicdet.config import TrainConfig, load_config
from dynamicdet.engine.jobs import work
from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_ROW, TRADEOFF
from dynamicdet.evaluation.claims import to_markdown
from dynamicdet.evaluation.results import run_stamp
from dynamicdet.experiments.seeds import __doc__ as DOC
from dynamicdet.experiments.seeds.campaign import (
    SEEDS,
    campaign,
    generate_data,
    override_tag,
    seed_config,
    seed_folder,
    trainer_jobs,
)
from dynamicdet.experiments.seeds.summary import GAP_NOTE, gap_table, write_seed_results
from dynamicdet.experiments.seeds.tables import anchor_far_end, seed_tables
from dynamicdet.experiments.static_models import static_config
from dynamicdet.files import write_csv, write_json, write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DOC.splitlines()[0])
    ap.add_argument("action", choices=("work", "tables", "gap"))
    ap.add_argument("--config", default="standard")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument(
        "--few", type=int, default=3, help="work: seeds that also train the far static scale and the reference"
    )
    ap.add_argument("--no-longer", action="store_true", help="work: leave out the first seed at twice the epochs")
    ap.add_argument("--no-two-stage", action="store_true", help="work: leave out notebook 08's two-stage models")
    ap.add_argument("--out", type=Path, default=None, help="tables: results folder (default results/<config>)")
    ap.add_argument("--no-timing", action="store_true", help="tables: leave the latencies out (no quiet machine)")
    ap.add_argument(
        "--train",
        metavar="KEY=VALUE",
        nargs="+",
        default=[],
        help="gap: train overrides for both trainers (e.g. workers=2): a row of its own, <config>-<key><value>",
    )
    args = ap.parse_args(argv)
    train = _overrides(ap, args.train)
    if args.action in ("work", "gap"):
        generate_data(load_config(args.config))
    if args.action == "gap":
        df = trainer_comparison(args.config, args.seeds, args.out, train=train)
        print(df.to_markdown(index=False, floatfmt=".4f"))
        return 0
    if args.action == "work":
        jobs = campaign(
            args.config, args.seeds, few=args.few, longer=not args.no_longer, two_stage=not args.no_two_stage
        )
        ran = work(jobs, paths.runs_dir() / "locks", log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
        print(f"{len(ran)} job(s) run here; {sum(j.done() for j in jobs)} of {len(jobs)} done", flush=True)
        return 0
    t0 = time.time()
    for seed in args.seeds:
        seed_tables(args.config, seed, args.out, timing=not args.no_timing, timing_seed=args.seeds[0])
        print(f"seed {seed}: tables written to {seed_folder(args.config, seed, args.out)}", flush=True)
    for line in anchor_far_end(args.config, args.seeds, args.out):  # the far end's AP: its seeds' mean
        print(f"anchored {line}", flush=True)
    if TRADEOFF.done(seed_config(args.config, args.seeds[0], longer=True)):  # the convergence check's models
        seed_tables(args.config, args.seeds[0], args.out, not args.no_timing, timing_seed=args.seeds[0], longer=True)
    df = write_seed_results(args.config, tuple(args.seeds), args.out, round(time.time() - t0, 1))
    print(to_markdown(df))
    return 0


def _overrides(ap: argparse.ArgumentParser, items: list[str]) -> dict:
    """``["workers=2"]`` -> ``{"workers": 2}`` (values read as YAML scalars); a key the ``train`` section does
    not have is an error here, not after hours of training."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in TrainConfig.__dataclass_fields__:
            ap.error(f"--train {item!r}: expected KEY=VALUE with KEY a field of the train section")
        out[key] = yaml.safe_load(value)
    return out


def _ap(path: Path) -> float:
    return float(json.loads(path.read_text())["AP"]) if path.exists() else float("nan")


def trainer_comparison(
    config: str, seeds: list[int], out: Path | None = None, scale: str = "n", train: dict | None = None
):
    """``gap``: train (or resume, or reuse) static ``scale`` by both trainers on every seed
    (:func:`~.campaign.trainer_jobs`), then write their APs side by side (:func:`~.summary.gap_table`) into
    ``<out>/<stem>.{csv,md}`` and ``<stem>_provenance.json`` (``out``: ``results/trainer_gap/``; ``stem``:
    ``config``, with ``train`` overrides ``<config>-<key><value>``)."""
    t0 = time.time()
    jobs = trainer_jobs(config, seeds, scale, train)
    work(jobs, paths.runs_dir() / "locks", log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    rows = []
    for seed in seeds:
        cfg = seed_config(config, seed, train=train)
        ours = _ap(STATIC_ROW.path(static_config(cfg, scale)))
        theirs = _ap(REFERENCE_ROW.path(cfg, model=f"{cfg.model.family}{scale}"))
        rows.append({"seed": str(seed), "our loop": ours, "ultralytics": theirs})
    df = gap_table(rows)
    out = out or paths.results_dir() / "trainer_gap"
    stem = config + override_tag(train)
    write_csv(df, out / f"{stem}.csv")
    write_text(df.to_markdown(index=False, floatfmt=".4f") + f"\n\n{GAP_NOTE}\n", out / f"{stem}.md")
    cfg = seed_config(config, seeds[0], train=train)
    record = {**run_stamp(cfg.to_dict()), "seeds": list(seeds), "model": f"{scale} (static)", "train": train or {}}
    command = f"python -m dynamicdet.experiments.seeds gap --config {config} --seeds {' '.join(map(str, seeds))}"
    if train:
        command += " --train " + " ".join(f"{k}={v}" for k, v in train.items())
    record.update(wall_s=round(time.time() - t0, 1), command=command)
    write_json(record, out / f"{stem}_provenance.json", indent=2)
    return df


if __name__ == "__main__":
    sys.exit(main())
