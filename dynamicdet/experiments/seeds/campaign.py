"""The seed campaign: every model of the seed runs as a queue of cached jobs (:mod:`dynamicdet.engine.jobs`)."""

from __future__ import annotations

import copy
import fcntl
from pathlib import Path

from dynamicdet import paths
from dynamicdet.config import Config, load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.engine.jobs import Job
from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_ROW, STEP1, TRADEOFF
from dynamicdet.experiments.generality import train_two_stage, two_stage_config, two_stage_trained
from dynamicdet.experiments.static_models import static_baselines, static_config, ultralytics_reference
from dynamicdet.experiments.tradeoffs import tradeoff
from dynamicdet.experiments.trained import trained
from dynamicdet.modeling.two_stage import KINDS

SEEDS = (0, 1, 2, 3, 4, 5, 6)  # the standard reference's seeds


def train_overrides(config: str, seed: int, longer: bool = False) -> dict:
    """The ``train`` overrides of one seed run: ``train.seed``, and with ``longer`` twice the epochs (mosaic
    closed for twice as many), the convergence check."""
    t = {"seed": seed}
    if longer:
        base = load_config(config).train
        t.update(epochs=2 * base.epochs, close_mosaic=2 * base.close_mosaic)
    return t


def seed_config(config: str, seed: int, longer: bool = False, train: dict | None = None) -> Config:
    """``config`` with ``train.seed = seed`` (everything else as in the file; ``longer``: :func:`train_overrides`;
    ``train``: further ``train`` overrides, e.g. ``{"workers": 2}``)."""
    return load_config(config, {"train": {**train_overrides(config, seed, longer), **(train or {})}})


def seed_folder(config: str, seed: int, out: Path | None = None, longer: bool = False) -> Path:
    """``<out>/seeds/seed<k>/`` (``out``: ``results/<config>/``; ``longer``: ``seed<k>-2x/``): the tables of one
    seed that the claims read."""
    return (out or paths.results_dir(config)) / "seeds" / (f"seed{seed}" + ("-2x" if longer else ""))


def _model_jobs(config: str, train: dict, tag: str, scales: list[str]) -> list[Job]:
    """The jobs of ``config`` with the ``train`` overrides: the joint model with the default router and with
    the paper's (the preset ``router: paper``; the same step 1), and the static ``scales``."""
    cfg = load_config(config, {"train": train})
    paper = load_config(config, {"train": train, "router": "paper"})
    jobs = [
        Job(f"{tag}-joint", lambda: tradeoff(trained(cfg, progress=False), progress=False), lambda: TRADEOFF.done(cfg)),
        Job(
            f"{tag}-paper-router",
            lambda: tradeoff(trained(paper, progress=False), progress=False),
            lambda: TRADEOFF.done(paper),
            ready=lambda: STEP1.done(cfg),  # step 1 is the joint job's: never train it twice at once
        ),
    ]
    return jobs + [_static_job(cfg, tag, scale) for scale in scales]


def _static_job(cfg: Config, tag: str, scale: str) -> Job:
    """The static model of ``scale`` by our step-1 loop (a frontier point) for ``cfg``'s seed."""
    one = copy.deepcopy(cfg)
    one.eval.static_scales = [scale]
    return Job(
        f"{tag}-static-{scale}",
        lambda: static_baselines(one, progress=False),
        lambda: STATIC_ROW.done(static_config(one, scale)),
    )


def _reference_job(cfg: Config, tag: str, scale: str = "n") -> Job:
    """The static model of ``scale`` by ultralytics' trainer (the trainer reference) for ``cfg``'s seed."""
    return Job(
        f"{tag}-ultralytics-{scale}",
        lambda: ultralytics_reference(cfg, [scale], progress=False),
        lambda: REFERENCE_ROW.done(cfg, model=f"{cfg.model.family}{scale}"),
    )


def generate_data(cfg: Config) -> None:
    """Generate ``cfg``'s synthetic dataset unless it is current, one process at a time (workers start together:
    the others wait on the lock, then find it current)."""
    if cfg.data.source != "synthetic":
        return
    lock = paths.runs_dir() / "locks" / "data.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        generate_from_config(cfg, progress=False)


def _two_stage_job(config: str, kind: str) -> Job:
    """Notebook 08's Dy-<kind> and its static models on ``config``'s two-stage config, trained (one run: the
    reference); their table, which times them, is made later on a quiet machine (``make reproduce``)."""
    ts = two_stage_config(config, kind)

    def run():
        generate_data(ts)
        train_two_stage(config, kind, progress=False)

    return Job(f"two-stage-{kind}", run, lambda: two_stage_trained(config, kind))


def campaign(config: str, seeds: list[int], few: int = 3, longer: bool = True, two_stage: bool = True) -> list[Job]:
    """The seed runs of ``config`` as a queue of cached jobs (:func:`dynamicdet.engine.jobs.work`), seed by seed.

    Per seed: :func:`_model_jobs` with every static scale but the last (the far end of the frontier),
    which, like ultralytics' yolov8n (the trainer reference), trains on the first ``few`` seeds;
    ``two_stage``: then notebook 08's two-stage models, trained only (the config's own seed, one run each);
    ``longer``: then seed ``seeds[0]`` at twice the epochs (joint, both routers, the static scales but the last).
    """
    base = load_config(config)
    scales = base.eval.static_scales
    jobs = []
    for i, seed in enumerate(seeds):
        jobs += _model_jobs(config, {"seed": seed}, f"seed{seed}", scales if i < few else scales[:-1])
        if i < few:
            jobs.append(_reference_job(seed_config(config, seed), f"seed{seed}"))
    if two_stage:
        jobs += [_two_stage_job(config, kind) for kind in KINDS]
    if longer:  # twice the epochs, mosaic closed for twice as many
        jobs += _model_jobs(config, train_overrides(config, seeds[0], True), f"seed{seeds[0]}-2x", scales[:-1])
    return jobs


def override_tag(train: dict | None) -> str:
    """``{"workers": 2}`` -> ``"-workers2"``: what names the jobs and tables of a row with ``train`` overrides."""
    return "".join(f"-{k}{v}" for k, v in sorted((train or {}).items()))


def trainer_jobs(config: str, seeds: list[int], scale: str = "n", train: dict | None = None) -> list[Job]:
    """The trainer comparison alone: per seed, static ``scale`` by our step-1 loop and by ultralytics' trainer
    (without ``train`` overrides, the same jobs, and caches, as the campaign's; with them, a row of its own:
    the overrides reach both trainers, their cache keys and the job names)."""
    jobs = []
    for seed in seeds:
        cfg = seed_config(config, seed, train=train)
        tag = f"seed{seed}{override_tag(train)}"
        jobs += [_static_job(cfg, tag, scale), _reference_job(cfg, tag, scale)]
    return jobs
