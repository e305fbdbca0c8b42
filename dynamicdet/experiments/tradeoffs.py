"""The accuracy-latency trade-off: the learned router against every baseline (notebooks 05, 06, 07).

:func:`tradeoff` is the /0 /10 /50 /90 /100 table (``route()`` for real) and a dense
sweep of hard fractions for the learned router, random routing, two oracles and
confidence escalation, all on the same two detectors (:data:`~dynamicdet.engine.runs.TRADEOFF`);
:func:`sweep_latency` places the sweep on the latency axis.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamicdet.engine.runs import TRADEOFF
from dynamicdet.evaluation.coco_eval import detections_to_coco, per_image_ap
from dynamicdet.evaluation.cost import dynamic_gflops, route_gflops
from dynamicdet.experiments.trained import Trained, evaluate_dets, predict_val, route_detections, routed_evaluator
from dynamicdet.files import save_torch, write_csv
from dynamicdet.modeling import routing


def tradeoff(t: Trained, progress: bool = True) -> dict[str, pd.DataFrame]:
    """The variable-speed table and every baseline at the same hard fractions (accuracy, cost).

    Returns:
        ``{"table": /0 /10 /50 /90 /100 rows of the learned router (route() for real),
        "sweep": dense sweep of all routers (AP vs k, GFLOPs, capture ratio), "ap1",
        "ap2", "gflops"}``. Also written as CSV in the step-2 folder. Latencies come from
        :func:`~.variable_speed.latency_table` (every model timed together) and :func:`sweep_latency`.

    The learned router's sweep points at ``eval.fractions`` run ``route()`` and evaluate
    its detections in full; the points between them, like every baseline, pool the two
    detectors' per-image matches by the routing decision (:class:`RoutedEvaluator`,
    equal to a full evaluation of the composed detections; the column ``measured_by``
    says which). That keeps a dense sweep at one ``accumulate()`` per point.
    """
    cfg, e = t.cfg, t.cfg.eval
    path = TRADEOFF.path(cfg)
    if path.exists():
        return torch.load(path, weights_only=False)
    scores = t.val_scores.set_index("image_id")
    ids = list(scores.index)
    z = scores["logit"].to_numpy()  # thresholds live on the router's logit (see DynamicDetector.route)
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
        tau = routing.threshold_for_fraction(z, k)
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
            "GFLOPs": dynamic_gflops(g_easy, g_hard, k_meas),
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
                    "GFLOPs": dynamic_gflops(g_easy, g_hard, k),
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
                "GFLOPs": dynamic_gflops(g_easy, g_hard, k),
            }
        )
    sweep = pd.DataFrame(rows)
    sweep["capture"] = [routing.capture_ratio(a, ap1["AP"], ap2["AP"]) for a in sweep["AP"]]
    table = pd.DataFrame(table)
    table.insert(0, "model", [f"Dy /{round(100 * k)}" for k in table["k"]])
    out = {
        "table": table,
        "sweep": sweep,
        "ap1": ap1,
        "ap2": ap2,
        "gflops": {"easy": g_easy, "hard": g_hard},
    }
    save_torch(out, path)
    write_csv(table, path.with_name(path.stem + "_table.csv"))
    write_csv(sweep, path.with_name(path.stem + "_sweep.csv"))
    return out


def sweep_latency(res: dict, lat: pd.DataFrame) -> pd.DataFrame:
    """The trade-off sweep with ``latency_ms`` (batch 1) from :func:`latency_table`.

    Every router mixes the two routes: lat = lat_easy + k (lat_hard - lat_easy), with
    lat_easy, lat_hard the timed /0 and /100 rows and k the measured hard fraction;
    confidence escalation's hard images ran H1 before being escalated: + k (lat_easy - lat_score).
    """
    table, ms = res["table"], lat.set_index("model")["latency_ms_b1"]
    ends = {k: table.loc[table["k"] == k, "model"] for k in (0.0, 1.0)}
    if any(v.empty for v in ends.values()):
        raise ValueError("eval.fractions must include 0 and 1: the sweep's latency mixes the /0 and /100 rows")
    easy, hard = ms[ends[0.0].item()], ms[ends[1.0].item()]
    sweep = res["sweep"].copy()
    # lat = lat_easy + k (lat_hard - lat_easy)
    sweep["latency_ms"] = easy + sweep["k_measured"] * (hard - easy)
    escalation = sweep["router"] == "confidence escalation"
    # + k (lat_easy - lat_score): H1 already ran on the images sent on to detector 2
    sweep.loc[escalation, "latency_ms"] += sweep.loc[escalation, "k_measured"] * max(easy - ms["B1 + router"], 0.0)
    return sweep


def static_frontier(points: pd.DataFrame, static: pd.DataFrame) -> pd.DataFrame:
    """Where each point stands against the static models' accuracy-latency frontier.

    The frontier is the piecewise-linear curve through the static models in (latency_ms_b1, AP),
    sorted by latency and extended along its first and last segment beyond the ends (the
    paper's claim: a dynamic point beats the static models of the same speed). With fewer
    than two static models there is no line and ``AP_frontier`` is NaN.

    Args:
        points: one row per dynamic point, columns ``model``, ``latency_ms_b1``, ``AP``.
        static: the static models, columns ``model``, ``latency_ms_b1``, ``AP``.

    Returns:
        ``points``' ``model``, ``latency_ms_b1``, ``AP`` with ``AP_frontier`` (the frontier's AP
        at that latency) and ``gap`` = AP - AP_frontier (>= 0: on or above the frontier).
    """
    for name, df in (("points", points), ("static", static)):
        missing = {"model", "latency_ms_b1", "AP"} - set(df.columns)
        if missing:
            raise ValueError(f"static_frontier: {name} lacks columns {sorted(missing)}")
    s = static.sort_values("latency_ms_b1")
    x, y = s["latency_ms_b1"].to_numpy(float), s["AP"].to_numpy(float)
    out = points[["model", "latency_ms_b1", "AP"]].reset_index(drop=True).copy()
    if len(s) < 2:
        out["AP_frontier"] = np.nan
    else:
        lat = out["latency_ms_b1"].to_numpy(float)
        # segment i joins static models i and i+1; points left of the first (right of the last) use the end segments
        i = np.clip(np.searchsorted(x, lat) - 1, 0, len(x) - 2)
        # AP_frontier = y_i + (lat - x_i) (y_{i+1} - y_i) / (x_{i+1} - x_i)
        out["AP_frontier"] = y[i] + (lat - x[i]) * (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    out["gap"] = out["AP"] - out["AP_frontier"]
    return out
