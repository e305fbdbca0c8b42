"""``python -m dynamicdet.experiments.seeds work|tables``: see :mod:`dynamicdet.experiments.seeds`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dynamicdet import paths
from dynamicdet.engine.jobs import work
from dynamicdet.engine.runs import TRADEOFF
from dynamicdet.evaluation.claims import to_markdown
from dynamicdet.experiments.seeds import __doc__ as DOC
from dynamicdet.experiments.seeds.campaign import SEEDS, campaign, seed_config, seed_folder
from dynamicdet.experiments.seeds.summary import write_seed_results
from dynamicdet.experiments.seeds.tables import seed_tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DOC.splitlines()[0])
    ap.add_argument("action", choices=("work", "tables"))
    ap.add_argument("--config", default="standard")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument(
        "--few", type=int, default=3, help="work: seeds that also train the far static scale and the reference"
    )
    ap.add_argument("--no-longer", action="store_true", help="work: leave out the first seed at twice the epochs")
    ap.add_argument("--out", type=Path, default=None, help="tables: results folder (default results/<config>)")
    ap.add_argument("--no-timing", action="store_true", help="tables: leave the latencies out (no quiet machine)")
    args = ap.parse_args(argv)
    if args.action == "work":
        jobs = campaign(args.config, args.seeds, few=args.few, longer=not args.no_longer)
        ran = work(jobs, paths.runs_dir() / "locks", log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
        print(f"{len(ran)} job(s) run here; {sum(j.done() for j in jobs)} of {len(jobs)} done", flush=True)
        return 0
    t0 = time.time()
    for seed in args.seeds:
        seed_tables(args.config, seed, args.out, timing=not args.no_timing, timing_seed=args.seeds[0])
        print(f"seed {seed}: tables written to {seed_folder(args.config, seed, args.out)}", flush=True)
    if TRADEOFF.done(seed_config(args.config, args.seeds[0], longer=True)):  # the convergence check's models
        seed_tables(args.config, args.seeds[0], args.out, not args.no_timing, timing_seed=args.seeds[0], longer=True)
    df = write_seed_results(args.config, tuple(args.seeds), args.out, round(time.time() - t0, 1))
    print(to_markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
