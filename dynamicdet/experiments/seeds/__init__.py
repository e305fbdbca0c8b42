"""Seeds as a dimension: the YOLO reference trained for several seeds, and the claims with intervals.

A seed changes ``train.seed`` only (initialisation, shuffling and augmentation of step 1 and
of the static models; the data stay the same). Every stage is the pipeline's own cached
stage, keyed by the config with that seed, so the campaign is a queue of cached jobs
(:func:`campaign`, :mod:`dynamicdet.engine.jobs`) that any number of processes share and
that resumes where it stopped::

    # one worker per core, one torch thread each (the jobs are split between them by file locks)
    OMP_NUM_THREADS=1 python -m dynamicdet.experiments.seeds work --config standard --seeds 0 1 2 3 4 5 6 &
    OMP_NUM_THREADS=1 python -m dynamicdet.experiments.seeds work --config standard --seeds 0 1 2 3 4 5 6 &
    python -m dynamicdet.experiments.seeds tables --config standard --seeds 0 1 2 3 4 5 6   # quiet machine

Per seed: the joint model with the default router and with the paper's (``router: paper``),
the frontier's static models (``eval.static_scales`` by our step-1 loop; the last scale, the
far end, on the first ``--few`` seeds only) and, on the first ``--few`` seeds, yolov8n by
ultralytics' trainer (the trainer reference); then notebook 08's two-stage models (one run); then, on
seed 0, the same at twice the epochs (convergence). ``gap`` runs the trainer comparison alone (static
yolov8n by both trainers on every seed, the campaign's own jobs) into ``results/trainer_gap/<config>.*``;
with ``--train KEY=VALUE`` both trainers get that setting, a row of its own (``<config>-<key><value>.*``).
``tables`` writes, per seed, the tables the claims read into ``results/<config>/seeds/seed<k>/``,
one row per seed and model into ``results/<config>/seeds.csv``, and the scorecard over the
seeds into ``results/<config>/claims.{csv,md}`` (:func:`dynamicdet.evaluation.claims.write_claims`).
"""

from dynamicdet.experiments.seeds.campaign import SEEDS, campaign, seed_config, seed_folder
from dynamicdet.experiments.seeds.summary import (
    run_summary,
    seeds_frontier,
    seeds_summary,
    seeds_table,
    write_seed_results,
)
from dynamicdet.experiments.seeds.tables import seed_tables

__all__ = [
    "SEEDS",
    "campaign",
    "run_summary",
    "seed_config",
    "seed_folder",
    "seed_tables",
    "seeds_frontier",
    "seeds_summary",
    "seeds_table",
    "write_seed_results",
]
