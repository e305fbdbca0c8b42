"""From-scratch recipe for the two-stage detectors, tuned on the static ResNet-18 (notebook 08).

torchvision's Faster / Mask R-CNN are trained here from random init on 2 CPU cores. Each
row below is the static R18 detector of a two-stage config with one recipe change,
trained by the ordinary step-1 loop (:func:`~dynamicdet.engine.step1.train_step1`: cached,
resumable) and validated every epoch; the table it writes is the evidence for the
recipe the ``<base>_faster_rcnn`` / ``<base>_mask_rcnn`` configs use. Every row states
its whole recipe (epochs, mosaic, norm, learning rate), so the rows do not move when a
config's defaults do.

====  ======================================  ==============================================
row   recipe                                  the one change, and from which row
====  ======================================  ==============================================
a     the old recipe: 5 epochs, BatchNorm     (the committed table before this study)
b     24 epochs, BatchNorm                    from a: 5 -> 24 epochs
c     24 epochs, GroupNorm                    from b: ``model.norm: gn`` (trunk, FPN, mask head)
d     24 epochs, GroupNorm, lr 0.01           from c: ``train.lr0`` 0.02 -> 0.01
e     24 epochs, GroupNorm, lr 0.04           from c: ``train.lr0`` 0.02 -> 0.04
f     24 epochs, GroupNorm, lr 0.08           from e: ``train.lr0`` 0.04 -> 0.08
====  ======================================  ==============================================
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from dynamicdet.config import Config, config_from_dict, load_config
from dynamicdet.engine.runs import STEP1
from dynamicdet.engine.step1 import train_step1
from dynamicdet.evaluation.results import provenance, save_table
from dynamicdet.experiments.generality import two_stage_config
from dynamicdet.experiments.static_models import static_config
from dynamicdet.experiments.step1_ablation import variant

OLD = {"epochs": 5, "close_mosaic": 2, "lr0": 0.02}
LONG = {"epochs": 24, "close_mosaic": 4, "lr0": 0.02}
# row -> (recipe, overrides of the static R18 config)
ROWS: dict[str, tuple[str, dict]] = {
    "a": ("5 epochs, BatchNorm (old recipe)", {"train": OLD, "model": {"norm": "bn"}}),
    "b": ("24 epochs, BatchNorm", {"train": LONG, "model": {"norm": "bn"}}),
    "c": ("24 epochs, GroupNorm", {"train": LONG, "model": {"norm": "gn"}}),
    "d": ("24 epochs, GroupNorm, lr 0.01", {"train": {**LONG, "lr0": 0.01}, "model": {"norm": "gn"}}),
    "e": ("24 epochs, GroupNorm, lr 0.04", {"train": {**LONG, "lr0": 0.04}, "model": {"norm": "gn"}}),
    "f": ("24 epochs, GroupNorm, lr 0.08", {"train": {**LONG, "lr0": 0.08}, "model": {"norm": "gn"}}),
}


def row_config(base: str, kind: str, row: str) -> Config:
    """The static R18 config of ``row`` on the two-stage config ``<base>_<kind>`` (validated)."""
    if row not in ROWS:
        raise ValueError(f"unknown two-stage tuning row {row!r}; choose from {sorted(ROWS)}")
    cfg = two_stage_config(base, kind)
    s = variant(static_config(cfg, backbone=cfg.model.backbone), ROWS[row][1])
    return config_from_dict(s.to_dict(), source=f"two-stage tuning row {row}")


def is_default(base: str, kind: str, row: str) -> bool:
    """Whether ``row`` trains exactly the config's own static R18 (the adopted recipe)."""
    cfg = two_stage_config(base, kind)
    return STEP1.path(row_config(base, kind, row)) == STEP1.path(static_config(cfg, backbone=cfg.model.backbone))


def tuning_row(base: str, kind: str, row: str, progress: bool = True) -> dict:
    """Train (or reuse) one row and read its val AP (final EMA weights) and its per-epoch curve."""
    cfg = row_config(base, kind, row)
    train_step1(cfg, resume=True, progress=progress)
    metrics = pd.read_csv(STEP1.path(cfg) / "step1_metrics.csv")
    last = metrics.iloc[-1]
    curve = metrics.dropna(subset=["det1_AP"])
    out = {
        "row": row,
        "recipe": ROWS[row][0],
        "epochs": cfg.train.epochs,
        "norm": cfg.model.norm,
        "lr0": cfg.train.lr0,
        "AP": float(last["det1_AP"]),
        "AP50": float(last["det1_AP50"]),
        "best epoch AP": float(curve["det1_AP"].max()),
        # still rising? the mean AP gain per epoch over the last quarter of training
        "AP slope (last quarter)": float(curve["det1_AP"].tail(max(len(curve) // 4, 2)).diff().mean()),
        "train_min": float(metrics["time_s"].sum() / 60),
        "adopted": is_default(base, kind, row),
        "run": STEP1.path(cfg).name,
    }
    if "det1_mask_AP" in last:
        out["mask_AP"] = float(last["det1_mask_AP"])
    return out


def tuning_table(base: str, kind: str = "faster_rcnn", rows=tuple(ROWS), progress: bool = True) -> pd.DataFrame:
    """Every tuning row of ``<base>_<kind>``, into ``results/<base>/two_stage_tuning_<kind>.{csv,md}``.

    The rows' configs and this call's wall time go to ``provenance.json`` (``two_stage_tuning``).
    """
    t0 = time.time()
    table = pd.DataFrame([tuning_row(base, kind, r, progress) for r in rows])
    save_table(table, f"two_stage_tuning_{kind}", base)
    record = {"rows": {r: row_config(base, kind, r).to_dict() for r in rows}, "wall_min": (time.time() - t0) / 60}
    provenance(base, load_config(base).to_dict(), {"two_stage_tuning": {kind: record}})
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="standard", help="base config (the two-stage configs are <base>_<kind>)")
    p.add_argument("--kind", default="faster_rcnn", choices=("faster_rcnn", "mask_rcnn"))
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    a = p.parse_args(argv)
    print(tuning_table(a.config, a.kind, tuple(a.rows.split(","))).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
