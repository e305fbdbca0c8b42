"""Is the data stream the cause of the trainer gap? Our step-1 loop fed by ultralytics' own train loader.

Usage::

    python -m studies.loader_swap --config quick --seeds 0 1 2 3

One change against the trainer comparison (``python -m dynamicdet.experiments.seeds gap``): the static
yolov8n is trained by our step-1 loop (model init, optimizer, schedule, warm-up, clip, loss, EMA,
evaluation: all ours), but its batches come from the loader ultralytics' trainer builds
(``ultralytics.data.build.build_dataloader``: one persistent loader whose shuffling generator and
augmentation random streams run on across epochs, with the mosaic buffer carried over), instead of
ours (a loader per epoch whose random streams are reseeded by (seed, epoch), the mosaic buffer refilled
at each epoch start, so that a resumed run repeats an uninterrupted one). Same data, recipe, epochs and
seeds; the runs live in ``<home>/loader_swap/`` (their own caches). Writes
``results/trainer_gap/<config>-ultralytics_loader.{csv,md}``: per seed, this run's AP beside the AP of
ultralytics' trainer from the trainer comparison's cache (trained there when missing: ``seeds gap``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ultralytics.data.build import build_dataloader

from dynamicdet import paths
from dynamicdet.engine import step1
from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_ROW
from dynamicdet.evaluation.results import run_stamp
from dynamicdet.experiments.seeds.campaign import generate_data, seed_config
from dynamicdet.experiments.seeds.summary import GAP_NOTE, gap_table
from dynamicdet.experiments.static_models import static_baselines, static_config
from dynamicdet.files import write_csv, write_json, write_text


def ultralytics_loader(dataset, batch, shuffle, seed, workers=0, distributed=False):
    """Stands in for :func:`dynamicdet.data.loaders.make_loader` (called once per epoch by step 1): the first
    call builds ultralytics' persistent train loader on ``dataset``; every call returns it, and iterating it
    yields the next epoch's batches of one continuing stream (``seed`` unused: nothing is reseeded)."""
    if getattr(dataset, "_ultralytics_loader", None) is None:
        dataset._ultralytics_loader = build_dataloader(dataset, batch, workers, shuffle=shuffle, rank=-1)
    return dataset._ultralytics_loader


def _ap(path: Path) -> float:
    return float(json.loads(path.read_text())["AP"]) if path.exists() else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--scale", default="n")
    args = ap.parse_args(argv)
    t0 = time.time()
    home = paths.home_dir()
    references = {}
    for seed in args.seeds:  # ultralytics' trainer's AP, from the trainer comparison's cache
        cfg = seed_config(args.config, seed)
        references[seed] = _ap(REFERENCE_ROW.path(cfg, model=f"{cfg.model.family}{args.scale}"))
    generate_data(seed_config(args.config, args.seeds[0]))
    os.environ["DYNAMICDET_HOME"] = str(home / "loader_swap")  # this study's runs: their own caches
    step1.make_loader = ultralytics_loader  # the one change
    step1.reset_mosaic_buffer = lambda dataset, seed: None  # ultralytics carries its buffer over epochs
    rows = []
    for seed in args.seeds:
        cfg = seed_config(args.config, seed)
        one = static_config(cfg, args.scale)
        cfg.eval.static_scales = [args.scale]
        static_baselines(cfg, progress=False)
        ours = _ap(STATIC_ROW.path(one))
        rows.append({"seed": str(seed), "our loop": ours, "ultralytics": references[seed]})
        print(f"seed {seed}: our loop on ultralytics' loader {ours:.4f}, ultralytics' trainer {references[seed]:.4f}")
    df = gap_table(rows)
    out = paths.results_dir() / "trainer_gap"
    stem = f"{args.config}-ultralytics_loader"
    write_csv(df, out / f"{stem}.csv")
    head = (
        "our loop: our step-1 loop fed by ultralytics' train loader (studies/loader_swap.py); "
        "ultralytics: ultralytics' trainer.\n\n"
    )
    write_text(head + df.to_markdown(index=False, floatfmt=".4f") + f"\n\n{GAP_NOTE}\n", out / f"{stem}.md")
    record = {**run_stamp(seed_config(args.config, args.seeds[0]).to_dict()), "seeds": args.seeds}
    seeds = " ".join(map(str, args.seeds))
    command = f"python -m studies.loader_swap --config {args.config} --seeds {seeds}"
    write_json({**record, "wall_s": round(time.time() - t0, 1), "command": command}, out / f"{stem}_provenance.json")
    print(df.to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
