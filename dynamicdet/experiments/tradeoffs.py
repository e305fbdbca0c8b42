"""The accuracy-cost trade-off: the learned router against every baseline and the static models (notebooks 05-07).

:func:`tradeoff` is the /0 /10 /50 /90 /100 table (``route()`` for real) and a dense
sweep of hard fractions for the learned router, random routing, two oracles and
confidence escalation, all on the same two detectors (:data:`~dynamicdet.engine.runs.TRADEOFF`);
:func:`sweep_latency` places the sweep on the latency axis.

The static frontier in every cost a user pays: GFLOPs, CPU latency at batch 1 and at
``eval.batch`` (torch), and onnxruntime latency at batch 1 (notebook 06). The paper reports
FLOPs and GPU latency; whether Dy /k sits above the static models' frontier can depend on the
axis. :func:`onnx_latency` times the deployment runtime: the dynamic routes through this
project's export (:mod:`dynamicdet.deploy.export`: three graphs routed in Python) and the
static models through ultralytics' own ONNX export, on the latency table's stream of val
images, interleaved and checked like :func:`~.variable_speed.latency_table`.
:func:`frontier_by_cost` is one long table: one row per Dy /k and cost measure.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch
from tqdm.auto import tqdm
from ultralytics import YOLO

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.deploy.export import OnnxDynamicDetector, export_onnx
from dynamicdet.engine.runs import CALIBRATION, ONNX_LATENCY, TRADEOFF
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.coco_eval import detections_to_coco, per_image_ap
from dynamicdet.evaluation.cost import route_gflops
from dynamicdet.evaluation.speed import time_latency_table
from dynamicdet.experiments.static_models import load_static
from dynamicdet.experiments.trained import Trained, evaluate_dets, predict_val, route_detections, routed_evaluator
from dynamicdet.experiments.variable_speed import TIMING_SEGMENT_IMAGES, timed_with_interval, timing_stream
from dynamicdet.files import save_torch, write_csv
from dynamicdet.metrics import mix, static_frontier
from dynamicdet.modeling import routing

ONNX_COLUMN = "latency_ms_onnx_b1"


@dataclass(frozen=True)
class Tradeoff:
    """The variable-speed table and every router's sweep, on the same two detectors (:func:`tradeoff`)."""

    # /0 /10 /50 /90 /100 rows of the learned router (route() for real): model, router, k, k_measured (hard
    # fraction of val), tau (logit threshold), measured_by, AP, AP50, AP75, APs, APm, APl, GFLOPs
    table: pd.DataFrame
    # dense sweep of every router (learned, random, two oracles, confidence escalation): router, k, k_measured,
    # AP... (random: mean over seeds, + AP_std), GFLOPs, capture (c(k))
    sweep: pd.DataFrame
    detector1: dict[str, float]  # COCO metrics of detector 1 alone on val (every image easy): AP, AP50, ...
    detector2: dict[str, float]  # COCO metrics of detector 2 alone on val (every image hard)
    gflops_easy: float  # GFLOPs per image of the easy route (B1 + router + H1)
    gflops_hard: float  # GFLOPs per image of the hard route (B1 + router + links + B2 + H2)

    @classmethod
    def load(cls, path: Path) -> Tradeoff:
        """Read a cached trade-off (a dict with the keys of earlier runs, so their caches stay valid)."""
        d = torch.load(path, weights_only=False)
        return cls(
            table=d["table"],
            sweep=d["sweep"],
            detector1=d["ap1"],
            detector2=d["ap2"],
            gflops_easy=d["gflops"]["easy"],
            gflops_hard=d["gflops"]["hard"],
        )

    def save(self, path: Path) -> None:
        """Write the cache :meth:`load` reads (the keys of earlier runs)."""
        gflops = {"easy": self.gflops_easy, "hard": self.gflops_hard}
        d = {"table": self.table, "sweep": self.sweep, "ap1": self.detector1, "ap2": self.detector2, "gflops": gflops}
        save_torch(d, path)


def calibration_config(cfg: Config) -> Config:
    """The synthetic calibration split of ``cfg``: ``eval.calibration_images`` images drawn by the generator
    like val (its val split, seed ``data.seed + 1``), in a dataset folder of their own."""
    if cfg.data.source != "synthetic":
        raise ValueError(
            f"config {cfg.name!r}: eval.calibration_images > 0 draws a calibration split from the synthetic "
            f"generator, but data.source is {cfg.data.source!r}; set it to 0 (thresholds from the val images)"
        )
    c = copy.deepcopy(cfg)
    c.data.name = f"{cfg.dataset_name}-calibration"
    c.data.seed = cfg.data.seed + 1
    c.data.n_train, c.data.n_val = 0, cfg.eval.calibration_images
    return c


@torch.no_grad()
def calibration_logits(t: Trained, progress: bool = True) -> np.ndarray | None:
    """The router's logits z on the calibration split, (N,), or None when ``eval.calibration_images`` is 0.

    Thresholds set on these images are applied to val (:func:`tradeoff`), as the paper sets tau on
    val and reports test-dev. Cached in the step-2 folder (:data:`~dynamicdet.engine.runs.CALIBRATION`).
    """
    cfg = t.cfg
    if not cfg.eval.calibration_images:
        return None
    path = CALIBRATION.path(cfg)
    if path.exists():
        return pd.read_csv(path)["logit"].to_numpy(float)
    c = calibration_config(cfg)
    generate_from_config(c, progress=False)
    info = prepare_dataset(c)
    logits = []
    for batch in tqdm(val_loader(c, info), desc="calibration scores", disable=not progress):
        x = batch["img"].to(t.device).float() / 255
        logits.append(t.model.score_logit(x).cpu())
    z = torch.cat(logits).numpy().astype(float)
    write_csv(pd.DataFrame({"logit": z}), path)
    return z


def tradeoff(t: Trained, progress: bool = True) -> Tradeoff:
    """The variable-speed table and every baseline at the same hard fractions (accuracy, cost).

    Returns:
        The /k table of the learned router, the dense sweep of every router, both detectors' AP
        and both routes' GFLOPs; the table and the sweep are also written as CSV in the step-2
        folder. Latencies come from :func:`~.variable_speed.latency_table` (every model timed
        together) and :func:`sweep_latency`.

    The learned router's sweep points at ``eval.fractions`` run ``route()`` and evaluate
    its detections in full; the points between them, like every baseline, pool the two
    detectors' per-image matches by the routing decision (:class:`RoutedEvaluator`,
    equal to a full evaluation of the composed detections; the column ``measured_by``
    says which). That keeps a dense sweep at one ``accumulate()`` per point.
    """
    cfg, e = t.cfg, t.cfg.eval
    path = TRADEOFF.path(cfg)
    if path.exists():
        return Tradeoff.load(path)
    scores = t.val_scores.set_index("image_id")
    ids = list(scores.index)
    z = scores["logit"].to_numpy()  # thresholds live on the router's logit (see DynamicDetector.route)
    z_cal = calibration_logits(t, progress)
    z_tau = z if z_cal is None else z_cal  # where tau is set: the calibration split (or val itself)
    dets1, dets2 = route_detections(t, progress)
    ap1 = evaluate_dets(t, dets1)
    ap2 = evaluate_dets(t, dets2)
    g_easy, g_hard = route_gflops(t.model, cfg.data.img_size)

    # per-image benefit of detector 2, for the oracles
    pa1 = per_image_ap(t.info.gt_json["val"], detections_to_coco(dets1, t.info.class_to_cat))
    pa2 = per_image_ap(t.info.gt_json["val"], detections_to_coco(dets2, t.info.class_to_cat))
    ap_gain = np.array([np.nan_to_num(pa2.get(i, np.nan)) - np.nan_to_num(pa1.get(i, np.nan)) for i in ids])
    loss_gain = (scores["L1"] - scores["L2"]).to_numpy()
    conf_unc = routing.confidence_escalation_score(dets1, ids)

    routed = routed_evaluator(t, dets1, dets2)

    def ap_of(mask: np.ndarray) -> dict:
        return routed.evaluate(dict(zip(ids, mask, strict=True)))

    fractions = sorted(set(e.fractions) | set(np.linspace(0, 1, e.sweep).round(4).tolist()))
    rows, table = [], []
    for k in tqdm(fractions, desc="trade-off sweep", disable=not progress):
        tau = routing.threshold_for_fraction(z_tau, k)
        if k in e.fractions:  # the table's rows: route() for real, its detections evaluated in full
            dets, hard = predict_val(t, lambda x, tau=tau: t.model.route(x, tau), f"route k={k:.2f}", False)
            m = evaluate_dets(t, dets)
            k_meas = float(np.mean([hard[i] for i in ids]))
        else:  # between them: the router's decisions (z >= tau, as in route()) splice the two detectors' matches
            mask = z >= tau
            m, k_meas = ap_of(mask), float(mask.mean())
        row = {
            "router": "learned",
            "k": k,
            "k_measured": k_meas,
            "tau": tau,
            "measured_by": "route()" if k in e.fractions else "spliced",
            **m,
            "GFLOPs": mix(easy=g_easy, hard=g_hard, k=k_meas),
        }
        rows.append(row)
        if k in e.fractions:
            table.append(dict(row))
        for name, mask in (
            ("oracle (L1-L2)", routing.top_fraction(loss_gain, k)),
            ("oracle (AP gain)", routing.top_fraction(ap_gain, k)),
            ("confidence escalation", routing.top_fraction(conf_unc, k)),
        ):
            rows.append(
                {
                    "router": name,
                    "k": k,
                    "k_measured": float(mask.mean()),
                    **ap_of(mask),
                    "GFLOPs": mix(easy=g_easy, hard=g_hard, k=k),
                }
            )
        rand = [ap_of(routing.random_route(len(ids), k, seed))["AP"] for seed in range(e.random_seeds)]
        rows.append(
            {
                "router": "random",
                "k": k,
                "k_measured": k,
                "AP": float(np.mean(rand)),
                "AP_std": float(np.std(rand)),
                "GFLOPs": mix(easy=g_easy, hard=g_hard, k=k),
            }
        )
    sweep = pd.DataFrame(rows)
    sweep["capture"] = [routing.capture_ratio(a, ap1["AP"], ap2["AP"]) for a in sweep["AP"]]
    table = pd.DataFrame(table)
    table.insert(0, "model", [f"Dy /{round(100 * k)}" for k in table["k"]])
    out = Tradeoff(table=table, sweep=sweep, detector1=ap1, detector2=ap2, gflops_easy=g_easy, gflops_hard=g_hard)
    out.save(path)
    write_csv(table, path.with_name(path.stem + "_table.csv"))
    write_csv(sweep, path.with_name(path.stem + "_sweep.csv"))
    return out


def sweep_latency(res: Tradeoff, lat: pd.DataFrame) -> pd.DataFrame:
    """The trade-off sweep with ``latency_ms`` (batch 1) from :func:`~.variable_speed.latency_table`.

    Every router mixes the two routes: lat = (1 - k) lat_easy + k lat_hard, with
    lat_easy, lat_hard the timed /0 and /100 rows and k the measured hard fraction;
    confidence escalation's hard images ran H1 before being escalated: + k (lat_easy - lat_score).
    """
    table, ms = res.table, lat.set_index("model")["latency_ms_b1"]
    ends = {k: table.loc[table["k"] == k, "model"] for k in (0.0, 1.0)}
    if any(v.empty for v in ends.values()):
        raise ValueError("eval.fractions must include 0 and 1: the sweep's latency mixes the /0 and /100 rows")
    easy, hard = ms[ends[0.0].item()], ms[ends[1.0].item()]
    sweep = res.sweep.copy()
    # lat = (1 - k) lat_easy + k lat_hard
    sweep["latency_ms"] = mix(easy=easy, hard=hard, k=sweep["k_measured"])
    escalation = sweep["router"] == "confidence escalation"
    # + k (lat_easy - lat_score): H1 already ran on the images sent on to detector 2
    sweep.loc[escalation, "latency_ms"] += sweep.loc[escalation, "k_measured"] * max(easy - ms["B1 + router"], 0.0)
    return sweep


def cost_columns(batch: int) -> dict[str, str]:
    """Cost measure -> column of ``variable_speed.csv`` (lower is cheaper)."""
    return {
        "GFLOPs": "GFLOPs",
        "CPU latency, batch 1 (torch)": "latency_ms_b1",
        f"CPU latency, batch {batch} (torch)": f"latency_ms_b{batch}",
        "CPU latency, batch 1 (onnxruntime)": ONNX_COLUMN,
    }


def _static_session(t: Trained, scale: str, folder: Path, threads: int) -> ort.InferenceSession:
    """ultralytics' ONNX export of the trained static ``scale`` (fp32, dynamic batch), on onnxruntime."""
    weights = folder / f"{t.cfg.model.family}{scale}.pt"
    # the model in ultralytics' checkpoint layout, which YOLO() reads; the .onnx is written beside it
    save_torch({"model": load_static(t.cfg, scale), "train_args": {}}, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = YOLO(str(weights), task="detect").export(
            format="onnx", imgsz=t.cfg.data.img_size, dynamic=True, simplify=False, opset=17, verbose=False
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the routes' sessions
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_latency(t: Trained, res: Tradeoff, static: pd.DataFrame, tries: int = 3) -> pd.DataFrame | None:
    """onnxruntime ms per image at batch 1 of every model of the trade-off, timed together, checked.

    The Dy rows route at the table's thresholds (``OnnxDynamicDetector.route``), the static
    rows run ultralytics' exported graph; onnxruntime gets torch's thread count. Timed on the
    latency table's stream, every :data:`~.variable_speed.TIMING_SEGMENT_IMAGES` images in
    alternation; checked and timed again up to ``tries`` times
    (:func:`~dynamicdet.evaluation.speed.time_latency_table`). Cached (:data:`~dynamicdet.engine.runs.ONNX_LATENCY`).

    Returns:
        Columns ``model``, ``latency_ms_onnx_b1``, ``consistent_onnx``; None when the config
        turns it off (``eval.onnx_latency: false``).
    """
    if not t.cfg.eval.onnx_latency:
        return None
    table = res.table
    path = ONNX_LATENCY.path(t.cfg)
    names = [*table["model"], *static.get("model", [])]
    if path.exists():
        cached = pd.read_csv(path)
        if list(cached["model"]) == names:
            return cached
    threads = torch.get_num_threads()
    stream, z = timing_stream(t)
    k_timed = {m: float((z >= tau).mean()) for m, tau in zip(table["model"], table["tau"], strict=True)}
    with tempfile.TemporaryDirectory(prefix="dynamicdet_onnx_") as tmp:
        graphs = export_onnx(t.model, Path(tmp) / "dynamic", t.cfg.data.img_size, list(t.cfg.data.classes))
        dyn = OnnxDynamicDetector(graphs, threads)
        thresholds = zip(table["model"], table["tau"], strict=True)
        fns: dict = {m: (lambda x, tau=float(tau): dyn.route(x, tau)) for m, tau in thresholds}
        same = None
        for scale in t.cfg.eval.static_scales:
            name = f"{t.cfg.model.family}{scale} (static)"
            if name in names:
                sess = _static_session(t, scale, Path(tmp), threads)
                fns[name] = lambda x, s=sess: s.run(None, {"images": x.detach().cpu().numpy()})
                same = name if scale == t.cfg.model.scale else same
        timed = time_latency_table(
            passes={
                "latency_ms_b1": partial(
                    timed_with_interval, t=t, fns=fns, images=stream, batch=1, segment=TIMING_SEGMENT_IMAGES
                )
            },
            rows=names,
            k_timed=k_timed,
            same_static=same,
            tries=tries,
            # Dy /0 here is two sessions (stage1 + head1) against ultralytics' one graph of the same network:
            # the ratio is the export's split, recorded; the monotone and linear-mix checks decide
            same_network_decides=False,
            label="onnxruntime latency table",
        )
    df = timed.table.rename(
        columns={
            "latency_ms_b1": ONNX_COLUMN,
            "consistent": "consistent_onnx",
            "ci95_rel_b1": "ci95_rel_onnx_b1",
            "ci95_paired_b1": "ci95_paired_onnx_b1",
        }
    )
    write_csv(timed.checks, path.with_name(path.stem + "_checks.csv"))
    write_csv(df, path)
    return df


def frontier_by_cost(table: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Each Dy /k against the static frontier in every cost measure of ``table`` (``variable_speed.csv``).

    Returns:
        One row per cost measure and Dy row: ``cost``, ``model``, ``cost value``, ``AP``,
        ``AP_frontier``, ``gap`` (AP - AP_frontier, >= 0: on or above the frontier; NaN with
        fewer than two static models or without that cost column), ``gap (log cost)`` (the frontier
        interpolated linearly in log cost) and ``bracketed`` (the point's cost lies between the cheapest and
        the costliest static model's: its gap interpolates, not extrapolates).
    """
    static = table[table["model"].str.endswith("(static)")]
    dy = table[~table["model"].str.endswith("(static)")]
    parts = []
    for cost, col in cost_columns(batch).items():
        if col not in table:
            continue
        f = static_frontier(points=dy, static=static, cost=col).rename(columns={col: "cost value"})
        f["gap (log cost)"] = static_frontier(points=dy, static=static, cost=col, log_cost=True)["gap"]
        ends = static[col].astype(float)
        f["bracketed"] = (len(static) >= 2) & f["cost value"].astype(float).between(ends.min(), ends.max())
        f.insert(0, "cost", cost)
        parts.append(f)
    return pd.concat(parts, ignore_index=True)
