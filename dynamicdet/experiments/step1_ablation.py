"""Step-1 ablation: why do the jointly trained detectors lose to a plain yolov8n? (notebook 09)

One row per training recipe, same data, same seed, same epochs; each row is one config
change (``train.clip``, ``train.detach_links``, ``model.dual``) trained by the ordinary
entry points (:func:`~dynamicdet.engine.step1.train_step1`, or ultralytics' trainer for row a),
so every row is a cached stage and an interrupted ablation resumes where it stopped.

====  =============================================================  =======================================
row   recipe                                                         config change
====  =============================================================  =======================================
a     static yolov8n, ultralytics' trainer (the published baseline)   (``experiments.static_models``)
b     static yolov8n, our step-1 loop (one detector, the frontier's)  ``model.dual: false``
c     joint, one clip over both detectors                            ``train.clip: joint``
d     joint, each detector clipped on its own (the default)          ``train.clip: per_detector``
e     joint, no clipping (the authors' YOLOv7 loop)                  ``train.clip: none``
f     joint, composite links detached                                ``train.detach_links: true``
f2    per-detector clipping and links detached                       both
g     the best joint recipe of c-f2, and row a, at twice the epochs  ``train.epochs: 2x``
      (best: highest mean of detector 1's and 2's AP, over seeds)
====  =============================================================  =======================================
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import pandas as pd

from dynamicdet import paths
from dynamicdet.config import Config, load_config
from dynamicdet.engine.jobs import Job, work
from dynamicdet.engine.runs import REFERENCE_ROW, STEP1
from dynamicdet.engine.step1 import train_step1
from dynamicdet.evaluation.results import provenance, save_table
from dynamicdet.experiments.static_models import static_epochs, ultralytics_reference

# row -> (recipe, overrides of the base config)
RECIPES: dict[str, tuple[str, dict]] = {
    # one detector: joint and per-detector clipping are the same ("joint" keys its cached runs)
    "b": ("static, our loop", {"model": {"dual": False}}),
    "c": ("joint, one clip", {"train": {"clip": "joint", "detach_links": False}}),
    "d": ("joint, per-detector clip", {"train": {"clip": "per_detector", "detach_links": False}}),
    "e": ("joint, no clip", {"train": {"clip": "none", "detach_links": False}}),
    "f": ("joint, links detached", {"train": {"clip": "joint", "detach_links": True}}),
    "f2": ("per-detector clip + links detached", {"train": {"clip": "per_detector", "detach_links": True}}),
}
JOINT_ROWS = ("c", "d", "e", "f", "f2")


def variant(base: str | Config, overrides: dict, epochs_factor: int = 1, seed: int | None = None) -> Config:
    """The base config with one recipe's overrides (and optionally more epochs or another seed)."""
    cfg = copy.deepcopy(base) if isinstance(base, Config) else load_config(base)
    for section, values in overrides.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    if epochs_factor != 1:
        cfg.train.epochs *= epochs_factor
        cfg.train.close_mosaic *= epochs_factor
    if seed is not None:
        cfg.train.seed = seed
    return cfg


def row_config(base: str | Config, row: str, seed: int | None = None) -> Config:
    """The config that trains ``row`` (``b``...``f2``) of the ablation on ``base``."""
    if row not in RECIPES:
        raise ValueError(f"row {row!r} is not a step-1 loop recipe; choose from {sorted(RECIPES)}")
    return variant(variant(base, {}, seed=seed), RECIPES[row][1])


def grad_norm_log(base: str | Config, row: str, seed: int | None = None) -> pd.DataFrame:
    """Per optimizer step of ``row``'s training: ``epoch``, ``step``, gradient norms before clipping, ``clipped``."""
    return pd.read_csv(STEP1.path(row_config(base, row, seed)) / "step1_grad_norms.csv")


def _joint_row(row: str, recipe: str, cfg: Config, progress: bool) -> dict:
    train_step1(cfg, resume=True, progress=progress)
    return _trained_row(row, recipe, cfg)


def _trained_row(row: str, recipe: str, cfg: Config) -> dict:
    """The table row of a trained step-1 run (its last validation and gradient-norm logs)."""
    metrics = pd.read_csv(STEP1.path(cfg) / "step1_metrics.csv")
    norms = pd.read_csv(STEP1.path(cfg) / "step1_grad_norms.csv")
    last = metrics.iloc[-1]
    late = norms[norms["epoch"] > cfg.train.epochs // 2]  # second half of training
    out = {
        "row": row,
        "recipe": recipe,
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "AP det1": float(last["det1_AP"]),
        "AP det2": float(last["det2_AP"]) if "det2_AP" in last else float("nan"),
        "grad_norm (late)": float(late["grad_norm"].median()),
        "grad_norm det1 (late)": float(late["grad_norm_det1"].median()),
        "grad_norm det2 (late)": float(late["grad_norm_det2"].median()) if "grad_norm_det2" in late else float("nan"),
        "clipped_frac": float(norms["clipped"].mean()),
        "train_min": float(metrics["time_s"].sum() / 60),
        "run": STEP1.path(cfg).name,
    }
    return out


def _reference_config(cfg: Config) -> Config:
    """``cfg`` with the static model trained for as many epochs as the joint rows (row a's config). Where
    ``eval.static_epochs`` already gives that many, ``cfg`` is left as it is: the run is then the seed
    campaign's ultralytics reference of the same seed (one cache, trained once)."""
    s = copy.deepcopy(cfg)
    if static_epochs(cfg) != cfg.train.epochs:
        s.eval.static_epochs = cfg.train.epochs
    return s


def _static_row(row: str, cfg: Config, progress: bool) -> dict:
    r = ultralytics_reference(_reference_config(cfg), [cfg.model.scale], progress=progress).iloc[0]
    return {
        "row": row,
        "recipe": "static, ultralytics' trainer",
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "AP det1": float(r["AP"]),
        "AP det2": float("nan"),
        "train_min": float(r["train_wall_s"]) / 60,
    }


def ablation_table(
    base: str | Config,
    rows: tuple[str, ...] = ("a", "b", *JOINT_ROWS, "g"),
    seeds=(None,),
    second_seed: dict[str, int] | None = None,
    best: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (or reuse) every row of the step-1 ablation and tabulate it.

    Args:
        base: the base config (data, model, schedule shared by every row).
        rows: which rows to run; ``g`` runs the best joint row at twice the epochs, and row a
            at twice the epochs. Best = the highest mean of detector 1's and detector 2's AP
            (the two ends of the dynamic curve, which is close to linear between them),
            averaged over the seeds each row was trained with.
        seeds: training seeds of every row; ``None`` = the config's own.
        second_seed: ``{row: seed}``, rows trained once more with another seed (where two
            rows are too close to call on one seed).
        best: the joint recipe row g doubles (``c``...``f2``); ``None`` = the best joint row
            of this table (then ``rows`` must hold at least one).

    Returns:
        One row per (row, seed): AP of detector 1 and 2, the late-training median gradient
        norms (total and per detector, before clipping), the fraction of clipped steps,
        training minutes and the run folder.
    """
    if best is not None and best not in JOINT_ROWS:
        raise ValueError(f"best: row {best!r} is not a joint recipe; choose from {list(JOINT_ROWS)}")
    if "g" in rows and best is None and not {*rows, *(second_seed or {})} & set(JOINT_ROWS):
        raise ValueError("row g doubles the best joint recipe: list one of c-f2 in rows, or pass best=")
    out = []
    for seed in seeds:
        cfg0 = variant(base, {}, seed=seed)
        if "a" in rows:
            out.append(_static_row("a", cfg0, progress))
        for row in rows:
            if row in RECIPES:
                out.append(_joint_row(row, RECIPES[row][0], row_config(cfg0, row), progress))
    for row, seed in (second_seed or {}).items():
        if row not in RECIPES:
            raise ValueError(f"second_seed: row {row!r} is not a step-1 loop recipe; choose from {sorted(RECIPES)}")
        out.append(_joint_row(row, RECIPES[row][0], row_config(base, row, seed=seed), progress))
    if "g" in rows:
        cfg0 = variant(base, {}, seed=seeds[0])
        best = best or best_joint([r for r in out if r["row"] in JOINT_ROWS])
        recipe, overrides = RECIPES[best]
        out.append(_joint_row("g", f"{recipe}, 2x epochs", variant(cfg0, overrides, epochs_factor=2), progress))
        out.append(
            {
                **_static_row("g", variant(cfg0, {}, epochs_factor=2), progress),
                "recipe": "static, ultralytics' trainer, 2x epochs",
            }
        )
    return pd.DataFrame(out)


def best_joint(records: list[dict]) -> str:
    """The joint recipe row g doubles: the highest mean over seeds of (AP det1 + AP det2) / 2."""
    joint = pd.DataFrame(records)
    # mean over seeds of (AP det1 + AP det2) / 2
    score = ((joint["AP det1"] + joint["AP det2"]) / 2).groupby(joint["row"]).mean()
    return str(score.idxmax())


# notebook 09's reference run (its parameters cell holds the same values; tested): the rows, the rows trained
# with a second seed, and the rows confirmed at the standard size
NOTEBOOK_ROWS = ("a", "b", *JOINT_ROWS, "g")
SECOND_SEED = {"c": 1, "e": 1}
CONFIRM = ("standard", ("a", "b", "c", "d", "e"))


def ablation_jobs(
    base: str | Config, rows: tuple[str, ...] = NOTEBOOK_ROWS, second_seed: dict[str, int] | None = None
) -> list[Job]:
    """The training of :func:`ablation_table`'s rows as a queue of cached jobs (:func:`dynamicdet.engine.jobs.work`),
    so that several one-thread processes share them; the table then reuses every run. Row g waits for the joint
    rows it chooses from."""
    cfg0 = variant(base, {})
    tag = f"step1-{cfg0.name}"

    def reference(name: str, cfg: Config) -> Job:
        ref = _reference_config(cfg)
        return Job(
            name,
            lambda: ultralytics_reference(ref, [cfg.model.scale], progress=False),
            lambda: REFERENCE_ROW.done(ref, model=f"{cfg.model.family}{cfg.model.scale}"),
        )

    def step1(name: str, cfg: Callable[[], Config], ready: Callable[[], bool] = lambda: True) -> Job:
        """A step-1 run; ``cfg`` makes its config when asked (row g's is known once the joint rows are)."""
        return Job(
            name, lambda: train_step1(cfg(), resume=True, progress=False), lambda: ready() and STEP1.done(cfg()), ready
        )

    first = [(r, row_config(cfg0, r)) for r in rows if r in RECIPES]
    again = [(r, row_config(base, r, seed=seed)) for r, seed in (second_seed or {}).items()]
    jobs = [reference(f"{tag}-a", cfg0)] if "a" in rows else []
    jobs += [step1(f"{tag}-{r}-seed{c.train.seed}", lambda c=c: c) for r, c in first + again]
    joint = [(r, c) for r, c in first + again if r in JOINT_ROWS]
    if "g" in rows:

        def trained() -> bool:
            return all(STEP1.done(c) for _, c in joint)

        def doubled() -> Config:  # the best joint recipe at twice the epochs (known once the joint rows are)
            best = best_joint([_trained_row(r, RECIPES[r][0], c) for r, c in joint])
            return variant(cfg0, RECIPES[best][1], epochs_factor=2)

        jobs.append(step1(f"{tag}-g", doubled, ready=trained))
        jobs.append(reference(f"{tag}-g-a", variant(cfg0, {}, epochs_factor=2)))
    return jobs


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per row and recipe: mean AP of each detector over its seeds, their spread, and how many seeds."""
    t = table.assign(**{"AP mean(det1, det2)": (table["AP det1"] + table["AP det2"]) / 2})
    g = t.groupby(["row", "recipe"], sort=False)
    out = g[["AP det1", "AP det2", "AP mean(det1, det2)"]].mean()
    out["seeds"] = g.size()
    out["AP det1 range"] = g["AP det1"].max() - g["AP det1"].min()
    out["AP det2 range"] = g["AP det2"].max() - g["AP det2"].min()
    return out.reset_index()


def main(argv=None) -> int:
    """``python -m dynamicdet.experiments.step1_ablation``: some rows of the ablation, into results/."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="ablation", help="base config of every row (dynamicdet/configs/<config>.yaml)")
    p.add_argument("--rows", default="a,b,c,d,e,f,f2,g", help="comma-separated rows (a, b, c...f2, g)")
    p.add_argument("--best", default=None, help="the joint row that row g doubles (default: the best listed)")
    p.add_argument("--results", default="ablation", help="a config name: results/<results>/ (notebook 09's)")
    p.add_argument("--name", default=None, help="table name (default: step1_ablation_<config>_<rows>)")
    p.add_argument(
        "--work",
        action="store_true",
        help="train every run notebook 09's reference needs (its rows, second seeds and standard-size rows) as a "
        "queue of jobs that processes started the same way share (one per core, OMP_NUM_THREADS=1); then "
        "`make ablation` reuses them",
    )
    a = p.parse_args(argv)
    if a.work:
        return work_notebook_runs()
    rows = tuple(r for r in a.rows.split(",") if r)
    unknown = set(rows) - {"a", "g", *RECIPES}
    if unknown:
        p.error(f"--rows: unknown row(s) {sorted(unknown)}; choose from a, {', '.join(RECIPES)}, g")
    base = load_config(a.config)
    folder = load_config(a.results)  # results/<results>/provenance.json keeps its own config at the top level
    name = a.name or f"step1_ablation_{base.name}_{'_'.join(rows)}"
    t0 = time.time()
    table = ablation_table(base, rows=rows, best=a.best, progress=True)
    save_table(table, name, a.results)
    doubled = table.loc[(table["row"] == "g") & table["AP det2"].notna(), "recipe"].tolist()
    record = {
        "base_config": base.to_dict(),
        "rows": list(rows),
        "row g doubles": doubled[0] if doubled else None,
        "wall_min": (time.time() - t0) / 60,
    }
    provenance(a.results, folder.to_dict(), {name: record})
    print(table.to_string())
    return 0


def work_notebook_runs() -> int:
    """``--work``: one worker of notebook 09's training (:data:`NOTEBOOK_ROWS` with :data:`SECOND_SEED` on the
    ``ablation`` config, :data:`CONFIRM`'s rows at the standard size)."""
    from dynamicdet.experiments.seeds.campaign import generate_data  # deferred: the seeds package imports this one

    base, (confirm, confirm_rows) = load_config("ablation"), CONFIRM
    for cfg in (base, load_config(confirm)):
        generate_data(cfg)
    jobs = ablation_jobs(base, NOTEBOOK_ROWS, SECOND_SEED) + ablation_jobs(confirm, confirm_rows)
    ran = work(jobs, paths.runs_dir() / "locks", log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    print(f"ran {len(ran)} job(s); every run of notebook 09 is trained: `make ablation` tabulates them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
