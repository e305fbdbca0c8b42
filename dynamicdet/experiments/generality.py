"""Generality for two-stage detectors (the paper's Table 4, notebook 08_two_stage).

For a base config ``X`` the two-stage configs are ``dynamicdet/configs/X_faster_rcnn.yaml`` and
``dynamicdet/configs/X_mask_rcnn.yaml``. For each, :func:`two_stage_table` trains (or reuses):

- the dynamic model (step 1 + step 2, the same entry points as the YOLO model);
- static single-detector models on each backbone of ``eval.static_backbones`` (the
  dynamic model's own backbone and its deeper sibling), trained by the same step-1 loop;

and evaluates every row on the val set with pycocotools (boxes, and masks for Mask
R-CNN): the Dy rows run ``route()`` for real at the threshold that sends a fraction k
of the val images to detector 2. GFLOPs are counted (:func:`~dynamicdet.evaluation.cost.gflops`) and
latencies timed at batch 1 on the same ``eval.timing_images`` val images, in alternation and
checked (:func:`~dynamicdet.evaluation.speed.time_latency_table`), for the static models and for the
dynamic model's two routes (every image easy, every image hard); a Dy /k row costs their mix at
its measured hard fraction, as in the YOLO tables. (Timing ``route()`` at each k on a few
images would cost the hard fraction of those images, not k: at k = 0.9 the first 20
standard val images were all hard.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamicdet.config import Config, ConfigError, load_config
from dynamicdet.engine.build import load_model
from dynamicdet.engine.runs import STEP1, STEP2, TWO_STAGE_TABLE
from dynamicdet.engine.step1 import train_step1
from dynamicdet.engine.validate import evaluate_fn, val_loader
from dynamicdet.evaluation.cost import gflops
from dynamicdet.evaluation.results import git_sha, merge_provenance
from dynamicdet.evaluation.speed import environment, prepare_for_timing, stream_times, time_latency_table
from dynamicdet.experiments.static_models import static_config
from dynamicdet.experiments.trained import Trained, trained
from dynamicdet.files import write_csv, write_json
from dynamicdet.metrics import mix
from dynamicdet.modeling import routing
from dynamicdet.modeling.two_stage import KINDS
from dynamicdet.paths import results_dir


def tuning_path(base: str, kind: str) -> Path:
    """The two-stage recipe table of ``studies/two_stage_tuning.py`` for ``<base>_<kind>`` (notebook 08 shows it)."""
    return results_dir(base) / f"two_stage_tuning_{kind}.csv"


def two_stage_config(base: str, kind: str) -> Config:
    """The two-stage config that goes with base config ``base``: ``dynamicdet/configs/<base>_<kind>.yaml``, or for a
    config given by its YAML file, the file ``<stem>_<kind>.yaml`` beside it."""
    if kind not in KINDS:
        raise ValueError(f"unknown two-stage kind {kind!r}; choose from {KINDS}")
    if str(base).endswith((".yaml", ".yml")):
        path = Path(base).with_name(f"{Path(base).stem}_{kind}.yaml")
        if not path.is_file():
            raise ConfigError(
                f"{path}: no {kind} config beside {base} (the two-stage models need one); write it, or run "
                "without the two-stage models (reproduce --no-two-stage)"
            )
        return load_config(path)
    return load_config(f"{base}_{kind}")


def _train_static(cfg: Config, backbone: str, progress: bool) -> Config:
    """Train (or resume, or reuse) the static model on ``backbone``; return its config.

    Step-1 validation is skipped: :func:`two_stage_table` evaluates the final weights once.
    """
    scfg = static_config(cfg, backbone=backbone)
    train_step1(scfg, resume=True, progress=progress, validate=False)
    return scfg


def _val_images(cfg: Config, info, device, n: int) -> list[torch.Tensor]:
    """The first ``n`` val images, one (1, 3, H, W) tensor each."""
    imgs = []
    for b in val_loader(cfg, info, batch=1):
        imgs.append(b["img"].to(device).float() / 255)
        if len(imgs) >= n:
            break
    return imgs


def _train_minutes(cfg: Config, step2: bool = False) -> float:
    """Training wall time of a run: step-1 epochs (validation excluded), + router fit for step 2."""
    minutes = pd.read_csv(STEP1.path(cfg) / "step1_metrics.csv")["time_s"].sum() / 60
    if step2:  # the cache passes are not timed separately; the router fit is
        minutes += pd.read_csv(STEP2.path(cfg) / "router_metrics.csv")["wall_s"].iloc[-1] / 60
    return float(minutes)


def train_two_stage(base: str, kind: str, progress: bool = True) -> tuple[Trained, dict[str, Config]]:
    """Train (or resume, or reuse) the models of :func:`two_stage_table`, nothing timed: the dynamic model
    (steps 1 and 2) and one static model per ``eval.static_backbones`` (the seed campaign trains them
    beside other training; the table times them later, on a quiet machine).

    Returns:
        The trained dynamic model and ``{backbone: static model's config}``.
    """
    cfg = two_stage_config(base, kind)
    tr = trained(cfg, progress=progress)
    return tr, {b: _train_static(cfg, b, progress) for b in cfg.eval.static_backbones}


def two_stage_trained(base: str, kind: str) -> bool:
    """Whether every model of :func:`train_two_stage` is trained (cached)."""
    cfg = two_stage_config(base, kind)
    statics = [static_config(cfg, backbone=b) for b in cfg.eval.static_backbones]
    return STEP2.done(cfg) and all((STEP1.path(s) / "step1.pt").exists() for s in statics)


def two_stage_table(base: str, kind: str, progress: bool = True) -> pd.DataFrame:
    """The generality table for one two-stage kind (cached as ``two_stage_table.csv``).

    Args:
        base: base config name (``smoke``, ``quick``, ``standard``...).
        kind: ``faster_rcnn`` or ``mask_rcnn``.

    Returns:
        One row per model: static models on each ``eval.static_backbones``, then
        ``Dy /k`` for each ``eval.fractions``; columns AP, AP50, AP75, APs, APm, APl
        (+ ``mask_*`` for Mask R-CNN), k_measured, GFLOPs, latency_ms_b1, params_M,
        train_min (training wall time; the dynamic rows share one model).
    """
    cfg = two_stage_config(base, kind)
    path = TWO_STAGE_TABLE.path(cfg)
    if path.exists():
        return pd.read_csv(path)
    tr, statics = train_two_stage(base, kind, progress)
    t0 = time.time()  # evaluation and timing only: every model is trained by now
    device, info = tr.device, tr.info
    loader = val_loader(cfg, info)  # the static models share the dynamic model's data
    rows, fns = [], {}
    for backbone, scfg in statics.items():
        model = load_model(scfg, step=1, device=device)
        name = f"static {backbone}"
        m, _ = evaluate_fn(model.first, scfg, info, device, loader, f"val {name}", progress)
        rows.append({"model": name, "backbone": backbone, "k": np.nan, "k_measured": np.nan, **m})
        rows[-1]["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        rows[-1]["run"] = STEP1.path(scfg).name
        rows[-1]["train_min"] = _train_minutes(scfg)
        fns[name] = prepare_for_timing(model, device).first
    z = tr.val_scores["logit"].to_numpy()
    dyn = prepare_for_timing(tr.model, device)
    n_params = sum(p.numel() for p in tr.model.parameters()) / 1e6
    for k in tqdm(cfg.eval.fractions, desc="Dy rows", disable=not progress):
        tau = routing.threshold_for_fraction(z, k)
        name = f"Dy /{round(100 * k)}"
        m, hard = evaluate_fn(
            lambda x, tau=tau: tr.model.route(x, tau), cfg, info, device, loader, f"val {name}", progress
        )
        rows.append(
            {
                "model": name,
                "backbone": f"2x {cfg.model.backbone}",
                "k": k,
                "k_measured": float(np.mean(list(hard.values()))),
                **m,
                "params_M": n_params,
                "run": STEP2.path(cfg).relative_to(STEP1.path(cfg).parent).as_posix(),
                "train_min": _train_minutes(cfg, step2=True),
            }
        )
    # cost on the same real val images, FLOPs counted per image, latency timed in alternation:
    # the static models and the dynamic model's two routes (a threshold no logit reaches / every logit reaches)
    fns[EASY] = lambda x: dyn.route(x, math.inf)
    fns[HARD] = lambda x: dyn.route(x, -math.inf)
    imgs = _val_images(cfg, info, device, cfg.eval.timing_images)
    lat, checks = _checked_latency(fns, imgs, device, cfg)
    flops = {name: gflops(fn, imgs) for name, fn in fns.items()}
    for row in rows:
        if row["model"] in fns:  # a static model
            row["GFLOPs"], row["latency_ms_b1"] = flops[row["model"]], lat[row["model"]]
        else:  # Dy /k
            row["GFLOPs"], row["latency_ms_b1"] = route_mix(flops, lat, row["k_measured"])
    table = pd.DataFrame(rows)
    failed = set(checks.loc[~checks["passed"], "model"])
    if failed:  # Dy rows are mixes of the two routes: a failed route check makes every Dy row doubtful
        failed |= {r["model"] for r in rows if r["model"].startswith("Dy ")} | {f"static {cfg.model.backbone}"}
    table["consistent"] = [m not in failed for m in table["model"]]
    write_csv(checks, path.with_name(path.stem + "_checks.csv"))
    table.attrs["env"] = environment()
    # who made the table (record_provenance copies it, however much later it runs); written
    # before the CSV, whose existence marks the table as done
    record = {
        "git_sha": git_sha(),
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "eval_wall_s": time.time() - t0,
        "environment": table.attrs["env"],
    }
    write_json(record, table_record_path(path))
    write_csv(table, path)
    return table


def _checked_latency(fns: dict, imgs: list, device, cfg: Config, tries: int = 3) -> tuple[dict, pd.DataFrame]:
    """Batch-1 latency (ms) of every entry of ``fns``, interleaved image by image, checked.

    The checks of :func:`~dynamicdet.metrics.latency_checks` on the two routes, as the rows Dy /0
    and Dy /100 (:data:`ROUTE_ROWS`): the easy route against the static model of the same trunk
    (the same network), the hard route no faster than the easy one (the Dy rows are their linear
    mix). Timed again up to ``tries`` times when a check fails; the attempt with the most passed
    checks is kept, with a warning (:func:`~dynamicdet.evaluation.speed.time_latency_table`).

    Returns:
        ``({name: ms}, checks)``.
    """
    e, same = cfg.eval, f"static {cfg.model.backbone}"

    def timed() -> dict[str, float]:
        # every model on each image in turn (segment=1); the routes under their rows' names
        per = stream_times(fns, imgs, device, warmup=e.latency_warmup, repeats=e.latency_repeats, segment=1)
        return {ROUTE_ROWS.get(name, name): float(np.median(v)) for name, v in per.items()}

    out = time_latency_table(
        passes={"latency_ms_b1": timed},
        rows=[ROUTE_ROWS.get(name, name) for name in fns],
        k_timed={"Dy /0": 0.0, "Dy /100": 1.0},
        same_static=same if same in fns else None,
        tries=tries,
        label=f"{cfg.name} two-stage table",
    )
    ms = out.table.set_index("model")["latency_ms_b1"]
    return {name: float(ms[ROUTE_ROWS.get(name, name)]) for name in fns}, out.checks


def table_record_path(table_path: Path) -> Path:
    """The JSON beside a cached two-stage table: git SHA, date, environment and wall time of its evaluation."""
    return Path(table_path).with_suffix(".json")


EASY, HARD = "every image easy", "every image hard"
ROUTE_ROWS = {EASY: "Dy /0", HARD: "Dy /100"}  # the rows the two routes are checked as (k = 0 and k = 1)


def route_mix(flops: dict[str, float], lat: dict[str, float], k: float) -> tuple[float, float]:
    """(GFLOPs, latency ms) of the dynamic model sending a fraction ``k`` of images to detector 2.

    ``flops`` and ``lat`` hold the two routes' costs per image under :data:`EASY` and :data:`HARD`.
    """
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"hard fraction k = {k} is outside [0, 1]")
    # cost(k) = (1 - k) cost_easy + k cost_hard
    return mix(easy=flops[EASY], hard=flops[HARD], k=k), mix(easy=lat[EASY], hard=lat[HARD], k=k)


def generality_summary(df: pd.DataFrame, col: str = "AP") -> dict:
    """The paper's claims for one two-stage table, one number each.

    Args:
        df: a :func:`two_stage_table`; col: ``AP`` (box) or ``mask_AP``.

    Returns:
        Detector 2's gain (Dy /100 - Dy /0), the capture ratio at k = 0.5 (NaN unless detector 2
        gains), and for each static model the margins of Dy /90 over it in ``col`` and in
        latency (ms, batch 1). Rows missing from ``eval.fractions`` give NaN.
    """
    dy = df[df["model"].str.startswith("Dy")].set_index("k")
    ap = dy[col]
    gain = ap.get(1.0, np.nan) - ap.get(0.0, np.nan)
    out = {"metric": col, "Dy /0": ap.get(0.0, np.nan), "Dy /100": ap.get(1.0, np.nan), "gain /100 - /0": gain}
    # c(k) = (AP(k) - AP(0)) / (AP(1) - AP(0)), read only when detector 2 gains
    c50 = routing.capture_ratio(ap_dyn=ap.get(0.5, np.nan), ap1=ap.get(0.0, np.nan), ap2=ap.get(1.0, np.nan))
    out["c(0.5)"] = c50 if gain > 0 else np.nan
    lat90 = dy["latency_ms_b1"].get(0.9, np.nan)
    for _, s in df[~df["model"].str.startswith("Dy")].iterrows():
        out[f"Dy /90 - {s['backbone']}"] = ap.get(0.9, np.nan) - s[col]
        out[f"Dy /90 - {s['backbone']} (ms)"] = lat90 - s["latency_ms_b1"]
    return out


def summary_table(faster: pd.DataFrame, mask: pd.DataFrame) -> pd.DataFrame:
    """:func:`generality_summary` of Faster R-CNN (box AP) and Mask R-CNN (box and mask AP)."""
    return pd.DataFrame(
        [{"detector": "Faster R-CNN", **generality_summary(faster, "AP")}]
        + [{"detector": "Mask R-CNN", **generality_summary(mask, c)} for c in ("AP", "mask_AP")]
    )


NO_TABLE_RECORD = {"git_sha": None, "note": "made before its record was kept"}


def record_provenance(base: str, tables: dict[str, pd.DataFrame]) -> None:
    """Add the two-stage configs, training minutes and who made each table to ``results/<base>/provenance.json``.

    Only its ``two_stage`` section changes: the top-level SHA, environment and times stay those of
    the run that made the base config's results (each two-stage table carries its own record).
    """
    extra = {}
    for kind, df in tables.items():
        cfg = two_stage_config(base, kind)
        dyn = df[df["model"].str.startswith("Dy")]
        rec = table_record_path(TWO_STAGE_TABLE.path(cfg))
        extra[kind] = {
            # the table's own SHA (tables of one notebook run may be made at different commits)
            "table": json.loads(rec.read_text()) if rec.exists() else NO_TABLE_RECORD,
            "config": cfg.to_dict(),
            "train_min": {
                "dynamic": float(dyn["train_min"].iloc[0]),
                **dict(zip(df["model"][df["k"].isna()], df["train_min"][df["k"].isna()], strict=True)),
            },
        }
    merge_provenance(base, {"two_stage": extra})


def train_model(base: str, kind: str, model: str, progress: bool = True) -> None:
    """Train (or resume) one model of :func:`two_stage_table` and stop.

    Args:
        base: base config name; kind: ``faster_rcnn`` or ``mask_rcnn``.
        model: ``dynamic`` (steps 1 and 2) or one backbone of ``eval.static_backbones``.

    The table reuses what this trains (same run folders), so on a machine with cores to spare
    each model can train in its own process, and notebook 08 only evaluates and times them.
    """
    cfg = two_stage_config(base, kind)
    check_model(cfg, base, kind, model)
    if model == "dynamic":
        trained(cfg, progress=progress)
    else:
        _train_static(cfg, model, progress)


def check_model(cfg: Config, base: str, kind: str, model: str) -> None:
    """Raise ValueError naming the config file unless ``model`` is ``dynamic`` or a static backbone of ``cfg``."""
    choices = ["dynamic", *cfg.eval.static_backbones]
    if model not in choices:
        raise ValueError(f"dynamicdet/configs/{base}_{kind}.yaml: model {model!r} is not one of {choices}")


def main(argv=None) -> int:
    """``python -m dynamicdet.experiments.generality``: train one two-stage model (one process per model)."""
    p = argparse.ArgumentParser(description="Train one model of the two-stage table (notebook 08 evaluates them).")
    p.add_argument("--config", default="quick", help="base config: dynamicdet/configs/<config>_<kind>.yaml")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--model", required=True, help="'dynamic' or a static backbone of eval.static_backbones")
    a = p.parse_args(argv)
    try:  # bad arguments are usage errors; an error raised while training keeps its traceback
        check_model(two_stage_config(a.config, a.kind), a.config, a.kind, a.model)
    except ValueError as e:  # ConfigError too (a missing or bad config file)
        p.error(str(e))
    train_model(a.config, a.kind, a.model)
    return 0


__all__ = [
    "generality_summary",
    "record_provenance",
    "summary_table",
    "train_model",
    "two_stage_config",
    "two_stage_table",
]


if __name__ == "__main__":
    raise SystemExit(main())
