"""The paper's experiments as cached stages that the notebooks call, one module per section.

=========================  ==========================================================  ==========
module                     what                                                        notebooks
=========================  ==========================================================  ==========
:mod:`.trained`            a trained config, its val detections, routed evaluation     04-08
:mod:`.router_study`       router losses, targets and signals; the paper's router      04, 06
:mod:`.tradeoffs`          the /k table and the dense sweep against every baseline;    05, 06, 07
                           onnxruntime latency; the static frontier in four costs
:mod:`.variable_speed`     timing on a stream of val images, latency table, targets    05, 06
:mod:`.controller`         closed vs open loop through a slow-down (stream scheduler)  05
:mod:`.static_models`      plain ultralytics models trained by ultralytics' trainer    05, 06
:mod:`.seeds`              the reference trained for several seeds; claims' intervals  (CLI)
:mod:`.generality`         Dy-Faster / Dy-Mask R-CNN against static models             08
:mod:`.step1_ablation`     step-1 recipes against a plain static model (ablation)      09
=========================  ==========================================================  ==========

Every stage stores its output under the run folder, keyed by the config fields it reads
(:mod:`dynamicdet.engine.runs`), so re-running a notebook does not retrain or re-measure.
"""

from dynamicdet.experiments.generality import record_provenance, two_stage_config, two_stage_table
from dynamicdet.experiments.static_models import (
    load_static,
    static_baselines,
    static_config,
    train_ultralytics,
    ultralytics_reference,
)
from dynamicdet.experiments.tradeoffs import (
    Tradeoff,
    cost_columns,
    frontier_by_cost,
    onnx_latency,
    sweep_latency,
    tradeoff,
)
from dynamicdet.experiments.trained import (
    Trained,
    evaluate_dets,
    predict_val,
    route_detections,
    routed_evaluator,
    trained,
)
from dynamicdet.experiments.variable_speed import (
    latency_table,
    stream_latency,
    target_latency,
    timing_stream,
    variable_speed_table,
)
from dynamicdet.metrics import static_frontier  # the frontier gap lives in metrics; importable here too

__all__ = [
    "Tradeoff",
    "cost_columns",
    "frontier_by_cost",
    "onnx_latency",
    "Trained",
    "evaluate_dets",
    "latency_table",
    "load_static",
    "predict_val",
    "record_provenance",
    "route_detections",
    "routed_evaluator",
    "static_baselines",
    "static_config",
    "stream_latency",
    "static_frontier",
    "sweep_latency",
    "target_latency",
    "timing_stream",
    "trained",
    "tradeoff",
    "train_ultralytics",
    "ultralytics_reference",
    "two_stage_config",
    "two_stage_table",
    "variable_speed_table",
]
