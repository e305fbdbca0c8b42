"""The step-1 speed levers on 2 CPU cores: torch threads, dataloader workers, image cache, channels_last.

Usage::

    python -m studies.step1_speed --config quick [--iters 24]
    python -m studies.step1_speed --config quick --epoch --setups "2 threads, 2 workers" "2 threads, 0 workers"

Each setup runs in its own process (torch's thread count is fixed per process): the
config's joint model trains ``--iters`` batches after 4 warm-up batches, with the config's
mosaic augmentation, and the throughput of the timed batches is recorded. ``--epoch`` times
one whole epoch instead, from the creation of its data loader (as training makes one per
epoch: the workers' start is part of the cost) to its last batch, and writes
``step1_speed_epoch.{csv,md}``. Setups are run
twice, interleaved (A B C ... A B C ...), and the best of the two rounds is kept, so a
passing disturbance on the shared machine does not decide a row. Written to
``results/<config>_tuning/step1_speed.{csv,md}`` (a speed measurement: the weights a setup
trains differ only as a seed does, see ``python -m studies.reproducibility``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

import pandas as pd

from dynamicdet import paths
from dynamicdet.config import load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.evaluation.results import run_stamp

# setup -> (torch threads, dataloader workers, image cache, channels_last)
SETUPS = {
    "2 threads, 2 workers": (2, 2, False, False),
    "2 threads, 1 worker": (2, 1, False, False),
    "2 threads, 0 workers": (2, 0, False, False),
    "1 thread, 1 worker": (1, 1, False, False),
    "1 thread, 2 workers": (1, 2, False, False),
    "2 threads, 2 workers, RAM image cache": (2, 2, True, False),
    "2 threads, 2 workers, channels_last": (2, 2, False, True),
}

CHILD = r"""
import json, sys, time, torch
threads, workers, cache, cl, config, iters, epoch = json.loads(sys.argv[1])
torch.set_num_threads(threads)
from dynamicdet.engine.build import build_model
from dynamicdet.config import load_config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.loaders import build_dataset, make_loader, seed_everything, to_device
cfg = load_config(config)
info = prepare_dataset(cfg)
seed_everything(0)
model = build_model(cfg, nc=len(info.names))
if cl:
    model = model.to(memory_format=torch.channels_last)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
aug = {"mosaic": cfg.train.mosaic, "mixup": cfg.train.mixup, **({"cache": "ram"} if cache else {})}
ds = build_dataset(info.data, "train", cfg.data.img_size, augment=True, batch=cfg.train.batch, **aug)
def step(batch):
    # one training step; returns the batch's image count
    batch = to_device(batch, torch.device("cpu"))
    if cl:
        batch["img"] = batch["img"].contiguous(memory_format=torch.channels_last)
    loss, _ = model.objective(batch)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return len(batch["img"])


done, t0, n_img = 0, None, 0
if epoch:  # 4 warm-up batches, then one whole epoch from its loader's creation on
    for i, batch in enumerate(make_loader(ds, cfg.train.batch, True, 1, 0)):
        step(batch)
        if i == 3:
            break
    t0 = time.perf_counter()
    for batch in make_loader(ds, cfg.train.batch, True, 0, workers):
        n_img += step(batch)
    done = iters + 4
while done < iters + 4:
    for batch in make_loader(ds, cfg.train.batch, True, done, workers):
        if done == 4:
            t0, n_img = time.perf_counter(), 0
        n_img += step(batch)
        done += 1
        if done == iters + 4:
            break
print(json.dumps({"img_s": n_img / (time.perf_counter() - t0)}))
"""


def measure(config: str, setup: tuple, iters: int, epoch: bool = False) -> float:
    """Images per second of step-1 training under ``setup`` (a fresh process; ``epoch``: one whole epoch)."""
    threads, workers, cache, cl = setup
    args = json.dumps([threads, workers, cache, cl, config, iters, epoch])
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"setup {setup} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["img_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quick")
    ap.add_argument("--iters", type=int, default=24, help="timed batches per setup and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epoch", action="store_true", help="time one whole epoch per setup, loader start included")
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), help="setup names (default: all)")
    args = ap.parse_args(argv)
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        ap.error(f"--setups: unknown {sorted(unknown)}; known: {list(SETUPS)}")
    setups = {name: SETUPS[name] for name in SETUPS if name in args.setups}
    cfg = load_config(args.config)
    generate_from_config(cfg, progress=False)
    t0 = time.time()
    best: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(args.rounds):
        for name, setup in setups.items():
            best[name].append(measure(args.config, setup, args.iters, args.epoch))
            print(f"round {r + 1} {name}: {best[name][-1]:.1f} img/s", flush=True)
    ref = max(best[next(iter(setups))])
    rows = []
    for name, (threads, workers, cache, cl) in setups.items():
        img_s = max(best[name])
        rows.append(
            {
                "setup": name,
                "torch threads": threads,
                "workers": workers,
                "RAM cache": cache,
                "channels_last": cl,
                "img/s (best of rounds)": round(img_s, 1),
                "rounds": " / ".join(f"{v:.1f}" for v in best[name]),
                "vs the first setup": round(img_s / ref, 3),  # no comma in a column name (CSV)
            }
        )
    df = pd.DataFrame(rows)
    out = paths.results_dir(f"{args.config}_tuning")
    out.mkdir(parents=True, exist_ok=True)
    name = "step1_speed_epoch" if args.epoch else "step1_speed"
    df.to_csv(out / f"{name}.csv", index=False)
    stamp = run_stamp(cfg.to_dict())
    what = "one whole epoch per setup from its loader's creation" if args.epoch else f"{args.iters} timed batches"
    command = shlex.join(["python", "-m", "studies.step1_speed", *(argv if argv is not None else sys.argv[1:])])
    note = (
        f"Step-1 training throughput at `{args.config}` (joint model, mosaic on, batch {cfg.train.batch}, "
        f"{cfg.data.img_size} px), {what}, best of {args.rounds} interleaved rounds; "
        f"`{command}`, git {stamp['git_sha'][:7]}, {stamp['environment']['torch']}, "
        f"{time.time() - t0:.0f} s.\n\n"
    )
    (out / f"{name}.md").write_text(note + df.to_markdown(index=False) + "\n")
    print(note + df.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
