"""The paper's experiments as cached stages that the notebooks call.

Each stage stores its output in the run folder (keyed by config), so re-running a
notebook does not retrain or re-measure. Stages:

- :func:`route_detections`: val detections of both routes (for the baselines).
- :func:`routed_evaluator`: AP of any per-image routing of those detections, cheaply.
- :func:`latencies`: route latencies at batch 1 and ``eval.batch``.
- :func:`static_baselines`: plain ultralytics models trained by ultralytics' own trainer.
- :func:`tradeoff`: the /0 /10 /50 /90 /100 table, the dense sweep and every baseline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import routing
from .checkpoint import save_atomic
from .config import Config
from .cost import dynamic_gflops, route_gflops
from .data.coco import prepare_dataset
from .evaluate import RoutedEvaluator, coco_evaluate, detections_to_coco, per_image_ap
from .offline import same_threads
from .predict import predict
from .speed import environment, plain_latency, route_latencies
from .train import load_model, resolve_device, router_dir, run_dir, train_step2, val_loader


@dataclass
class Trained:
    """Everything the evaluation stages need about a trained config."""

    cfg: Config
    info: object
    model: torch.nn.Module
    device: torch.device
    val_scores: pd.DataFrame  # image_id, phi, logit, L1, L2 on val

    @property
    def folder(self) -> Path:
        return router_dir(self.cfg)


def trained(cfg: Config, progress: bool = True) -> Trained:
    """Train (or reuse) steps 1 and 2 of a config and load the result."""
    train_step2(cfg, progress=progress)
    device = resolve_device(cfg.device)
    info = prepare_dataset(cfg)
    model = load_model(cfg, step=2, device=device)
    scores = pd.read_csv(router_dir(cfg) / "val_scores.csv")
    return Trained(cfg, info, model, device, scores)


def _predict(t: Trained, fn, desc: str, progress: bool):
    e = t.cfg.eval
    return predict(
        fn,
        val_loader(t.cfg, t.info),
        t.info.file_to_image_id["val"],
        t.device,
        e.conf,
        e.iou,
        e.max_det,
        desc=desc,
        progress=progress,
    )


def evaluate_dets(t: Trained, dets: dict) -> dict:
    """COCO AP, AP50, AP75, APs, APm, APl of val detections."""
    return coco_evaluate(t.info.gt_json["val"], detections_to_coco(dets, t.info.class_to_cat))


def route_detections(t: Trained, progress: bool = True) -> tuple[dict, dict]:
    """Val detections of detector 1 and detector 2 for every image (cached)."""
    path = t.folder / "val_dets.pt"
    if path.exists():
        d = torch.load(path, weights_only=False)
        return d["det1"], d["det2"]
    dets1, _ = _predict(t, t.model.first, "val det1", progress)
    dets2, _ = _predict(t, t.model.second, "val det2", progress)
    save_atomic({"det1": dets1, "det2": dets2}, path)
    return dets1, dets2


def routed_evaluator(t: Trained, dets1: dict | None = None, dets2: dict | None = None) -> RoutedEvaluator:
    """COCO AP of any per-image choice between the two detectors' val detections.

    ``evaluator.evaluate({image_id: hard})`` costs one ``accumulate()``; equal to
    evaluating the composed detections (see :class:`RoutedEvaluator`).
    """
    if dets1 is None or dets2 is None:
        dets1, dets2 = route_detections(t, progress=False)
    c2c = t.info.class_to_cat
    return RoutedEvaluator(t.info.gt_json["val"], detections_to_coco(dets1, c2c), detections_to_coco(dets2, c2c))


def latencies(t: Trained, refresh: bool = False) -> dict:
    """Route latencies (ms) at batch 1 and ``eval.batch``, with the environment (cached)."""
    path = t.folder / "latency.json"
    if path.exists() and not refresh:
        return json.loads(path.read_text())
    e = t.cfg.eval
    out = {"env": environment()}
    for b in sorted({1, e.batch}):
        r = route_latencies(t.model, t.cfg.data.img_size, b, t.device, e.latency_warmup, e.latency_repeats)
        r.pop("detail")
        out[f"batch{b}"] = r
    path.write_text(json.dumps(out, indent=2))
    return out


def timing_stream(t: Trained, n: int | None = None) -> tuple[list[torch.Tensor], np.ndarray]:
    """A stream of ``n`` (``eval.stream_images``) val images for timing route(), and their logits.

    The images sit at evenly spaced ranks of the router's score, so the fraction of them
    above any threshold equals the val fraction to within 1/n (a timing on n images
    measures the routes' costs, not the luck of the sample), in a fixed shuffled order, so
    consecutive images take different routes as in a deployment.

    Returns:
        images: n tensors (1, 3, S, S), letterboxed like evaluation, on ``t.device``;
        logits: (n,) router logits of those images (from ``val_scores.csv``), same order.
    """
    n = t.cfg.eval.stream_images if n is None else n
    if n < 1:
        raise ValueError(f"the timing stream needs at least one image (eval.stream_images = {n})")
    scores = t.val_scores.sort_values("logit", kind="stable").reset_index(drop=True)
    n = min(n, len(scores))
    picked = scores.iloc[((np.arange(n) + 0.5) * len(scores) / n).astype(int)]
    picked = picked.iloc[np.random.default_rng(0).permutation(n)]
    ds = val_loader(t.cfg, t.info, 1).dataset
    index_of = {t.info.file_to_image_id["val"][Path(f).name]: i for i, f in enumerate(ds.im_files)}
    dtype = torch.float16 if t.device.type == "cuda" else torch.float32
    images = [ds[index_of[int(i)]]["img"][None].to(t.device, dtype) / 255 for i in picked["image_id"]]
    return images, picked["logit"].to_numpy()


def stream_latency(t: Trained, taus: dict, images: list[torch.Tensor], batch: int = 1) -> dict:
    """Latency (ms per image) of ``route(x, tau)`` over a stream of images, for each tau.

    The stream (:func:`timing_stream`) is cut into batches of ``batch`` (a last partial
    batch is dropped); each tau's pass over the whole stream is one timed call, and the
    taus' passes are timed in alternation (:func:`speed.time_interleaved`), so machine
    noise hits them alike. ``route`` is the fused model's (as in every latency figure).

    Returns:
        ``{name: median ms per image}`` for ``taus = {name: logit threshold}``.
    """
    from .speed import prepare_for_timing, time_interleaved

    n = len(images) // batch * batch
    if n == 0:
        raise ValueError(f"a stream of {len(images)} images holds no batch of {batch}")
    batches = [torch.cat(images[i : i + batch]) for i in range(0, n, batch)]
    m = prepare_for_timing(t.model, t.device)
    fns = {name: (lambda tau=tau: [m.route(x, tau) for x in batches]) for name, tau in taus.items()}
    res = time_interleaved(fns, t.device, warmup=1, repeats=max(3, t.cfg.eval.latency_repeats // 4))
    return {name: r["median_ms"] / n for name, r in res.items()}


def target_latency(
    t: Trained, ks=(0.1, 0.5, 0.9), n_images: int | None = None, rounds: int = 3, progress: bool = True
) -> pd.DataFrame:
    """Check the latency controller: thresholds from target latencies, then route() timed at them.

    Batch 1, on a stream of ``eval.stream_images`` real val images (:func:`timing_stream`).
    Each of ``rounds`` rounds:

    1. calibration: the stream through the easy route (tau = +inf) and through the hard
       route (tau = -inf), timed in alternation; lat_easy, lat_hard = ms per image;
    2. each target: lat_t = lat_easy + k (lat_hard - lat_easy) ms, and tau from
       :func:`routing.threshold_for_latency` on the router's scores over all of val;
    3. achieved: the stream through ``route(x, tau)`` for every target, timed right after
       the calibration, in alternation with the easy and hard streams again.

    ``achieved / target`` is what a user gets from a calibration taken moments before; on
    a shared machine it also carries the machine's change of speed between the two passes
    (up to 1.7x on ours), hence the rounds. ``achieved / model`` compares with
    lat_easy + k_timed (lat_hard - lat_easy) from the easy and hard streams of the same
    pass: the accuracy of the latency model itself.

    Returns:
        One row per target, medians over the rounds: ``target k``, ``target ms/img``,
        ``logit threshold``, ``val fraction hard``, ``timed fraction hard``,
        ``achieved ms/img``, ``achieved / target`` (+ ``_min``, ``_max`` over the rounds),
        ``achieved / model``, ``lat_easy ms/img``, ``lat_hard ms/img`` (calibration),
        ``images``, ``rounds``.
    """
    from .speed import TimingError

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    stream, z_timed = timing_stream(t, n_images)
    z = t.val_scores["logit"].to_numpy()
    ends = {"easy": float("inf"), "hard": float("-inf")}
    per_round = []
    for _ in tqdm(range(rounds), desc="target latency", disable=not progress, leave=False):
        cal = stream_latency(t, ends, stream)
        if not cal["hard"] > cal["easy"]:
            raise TimingError(
                f"hard route timed no slower than the easy route ({cal['hard']:.3f} vs {cal['easy']:.3f} ms/img "
                f"on {len(stream)} val images): too noisy to calibrate; raise eval.latency_repeats or "
                "eval.stream_images, or measure on a quieter machine"
            )
        # lat_t = lat_easy + k (lat_hard - lat_easy)
        targets = {k: cal["easy"] + k * (cal["hard"] - cal["easy"]) for k in ks}
        taus = {k: routing.threshold_for_latency(z, lat, cal["easy"], cal["hard"]) for k, lat in targets.items()}
        achieved = stream_latency(t, {**ends, **taus}, stream)
        for k in ks:
            k_timed = float((z_timed >= taus[k]).mean())
            # same pass: lat_easy + k_timed (lat_hard - lat_easy)
            model = achieved["easy"] + k_timed * (achieved["hard"] - achieved["easy"])
            per_round.append(
                {
                    "target k": k,
                    "target ms/img": targets[k],
                    "logit threshold": taus[k],
                    "val fraction hard": float((z >= taus[k]).mean()),
                    "timed fraction hard": k_timed,
                    "achieved ms/img": achieved[k],
                    "achieved / target": achieved[k] / targets[k],
                    "achieved / model": achieved[k] / model,
                    "lat_easy ms/img": cal["easy"],
                    "lat_hard ms/img": cal["hard"],
                }
            )
    g = pd.DataFrame(per_round).groupby("target k", sort=False)
    out = g.median().reset_index()
    ratio = out.columns.get_loc("achieved / target")
    out.insert(ratio + 1, "achieved / target_min", g["achieved / target"].min().to_numpy())
    out.insert(ratio + 2, "achieved / target_max", g["achieved / target"].max().to_numpy())
    out["images"] = len(stream)
    out["rounds"] = rounds
    return out


def tradeoff(t: Trained, progress: bool = True, measure_latency: bool = True) -> dict[str, pd.DataFrame]:
    """The variable-speed table and every baseline at the same hard fractions.

    Returns:
        ``{"table": /0 /10 /50 /90 /100 rows of the learned router (route() for real),
        "sweep": dense sweep of all routers (AP vs k, latency, capture ratio), "ap1",
        "ap2", "latency", "gflops"}``. Also written as CSV in the step-2 folder.

    The learned router's sweep points at ``eval.fractions`` run ``route()`` and evaluate
    its detections in full; the points between them, like every baseline, pool the two
    detectors' per-image matches by the routing decision (:class:`RoutedEvaluator`,
    equal to a full evaluation of the composed detections; the column ``measured_by``
    says which). That keeps a dense sweep at one ``accumulate()`` per point.
    """
    cfg, e = t.cfg, t.cfg.eval
    path = t.folder / ("tradeoff.pt" if measure_latency else "tradeoff-no-latency.pt")
    if path.exists():
        return torch.load(path, weights_only=False)
    scores = t.val_scores.set_index("image_id")
    ids = list(scores.index)
    z = scores["logit"].to_numpy()  # thresholds live on the router's logit (see DynamicDetector.route)
    dets1, dets2 = route_detections(t, progress)
    ap1 = evaluate_dets(t, dets1)
    ap2 = evaluate_dets(t, dets2)
    g_easy, g_hard = route_gflops(t.model, cfg.data.img_size)
    lat = latencies(t)
    lat1 = lat["batch1"]
    # confidence escalation's hard route runs H1 too: + (lat_easy - lat_score)
    h1_cost = max(lat1["easy"] - lat1["score"], 0.0)

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
            dets, hard = _predict(t, lambda x, tau=tau: t.model.route(x, tau), f"route k={k:.2f}", False)
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
            "latency_ms": lat1["easy"] + k_meas * (lat1["hard"] - lat1["easy"]),
        }
        rows.append(row)
        if k in e.fractions:
            table.append(dict(row))
        lat_k = lat1["easy"] + k * (lat1["hard"] - lat1["easy"])
        for name, mask in (
            ("oracle (L1-L2)", routing.top_fraction(loss_gain, k)),
            ("oracle (AP gain)", routing.top_fraction(ap_gain, k)),
            ("confidence escalation", routing.top_fraction(conf_unc, k)),
        ):
            extra = k * h1_cost if name == "confidence escalation" else 0.0
            rows.append(
                {
                    "router": name,
                    "k": k,
                    "k_measured": float(mask.mean()),
                    **ap_of(mask),
                    "GFLOPs": dynamic_gflops(g_easy, g_hard, k),
                    "latency_ms": lat_k + extra,
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
                "latency_ms": lat_k,
            }
        )
    sweep = pd.DataFrame(rows)
    sweep["capture"] = [routing.capture_ratio(a, ap1["AP"], ap2["AP"]) for a in sweep["AP"]]
    table = pd.DataFrame(table)
    if measure_latency:  # every row's route() timed on one stream of val images, rows in alternation
        stream, _ = timing_stream(t)
        for b in sorted({1, e.batch}):
            ms = stream_latency(t, dict(enumerate(table["tau"])), stream, b)
            table[f"latency_ms_b{b}"] = [ms[i] for i in range(len(table))]
        table["FPS_b1"] = 1000.0 / table["latency_ms_b1"]
    table.insert(0, "model", [f"Dy /{round(100 * k)}" for k in table["k"]])
    out = {
        "table": table,
        "sweep": sweep,
        "ap1": ap1,
        "ap2": ap2,
        "latency": lat,
        "gflops": {"easy": g_easy, "hard": g_hard},
    }
    save_atomic(out, path)
    table.to_csv(t.folder / "tradeoff_table.csv", index=False)
    sweep.to_csv(t.folder / "tradeoff_sweep.csv", index=False)
    return out


# ------------------------------------------------------------------------ static baselines
def static_baselines(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """Plain ultralytics models of the same family, trained by ultralytics' own trainer.

    Same data, same epochs (``eval.static_epochs`` or ``train.epochs``), the same
    optimiser settings; evaluated with the same pycocotools code and latency harness.
    One row per scale in ``eval.static_scales``; cached in the run folder.
    """
    from ultralytics import YOLO

    from .cost import _gflops

    folder = run_dir(cfg) / "static"
    info = prepare_dataset(cfg)
    device = resolve_device(cfg.device)
    t, e = cfg.train, cfg.eval
    epochs = e.static_epochs or t.epochs
    rows = []
    for scale in e.static_scales:
        out = folder / f"{cfg.model.family}{scale}.json"
        if out.exists():
            rows.append(json.loads(out.read_text()))
            continue
        t0 = time.time()
        yolo = YOLO(f"{cfg.model.family}{scale}.yaml", task="detect")
        with same_threads():
            yolo.train(
                data=str(info.yaml_path),
                epochs=epochs,
                imgsz=cfg.data.img_size,
                batch=t.batch,
                device=str(device),
                workers=t.workers,
                optimizer=t.optimizer,
                lr0=t.lr0,
                lrf=t.lrf,
                momentum=t.momentum,
                weight_decay=t.weight_decay,
                nbs=t.nbs,
                warmup_epochs=t.warmup_epochs,
                close_mosaic=t.close_mosaic,
                mosaic=t.mosaic,
                mixup=t.mixup,
                cos_lr=True,
                seed=t.seed,
                deterministic=False,
                amp=False,
                project=str(folder),
                name=scale,
                exist_ok=True,
                plots=False,
                verbose=False,
                pretrained=False,
                val=False,
            )
        wall = time.time() - t0
        det = torch.load(folder / scale / "weights" / "last.pt", map_location="cpu", weights_only=False)
        det = (det.get("ema") or det["model"]).float().eval()
        loader = val_loader(cfg, info)
        dets, _ = predict(
            lambda x, det=det: det(x)[0],
            loader,
            info.file_to_image_id["val"],
            device,
            e.conf,
            e.iou,
            e.max_det,
            desc=f"val {cfg.model.family}{scale}",
            progress=progress,
        )
        m = coco_evaluate(info.gt_json["val"], detections_to_coco(dets, info.class_to_cat))
        x = torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size)
        fused = det.fuse(verbose=False) if hasattr(det, "fuse") else det
        row = {
            "model": f"{cfg.model.family}{scale} (static)",
            **m,
            "GFLOPs": _gflops(lambda fused=fused, x=x: fused(x)),
            "latency_ms_b1": plain_latency(det, cfg.data.img_size, 1, device, e.latency_warmup, e.latency_repeats),
            "epochs": epochs,
            "train_wall_s": round(wall, 1),
        }
        row["FPS_b1"] = 1000.0 / row["latency_ms_b1"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2))
        rows.append(row)
    return pd.DataFrame(rows)


def variable_speed_table(res: dict, static: pd.DataFrame, batch: int) -> pd.DataFrame:
    """The trade-off table: dynamic rows /0 /10 /50 /90 /100 (route() for real) plus static models.

    Columns: model, k (target hard fraction), k_measured, GFLOPs, latency at batch 1 and
    ``batch`` (ms per image), FPS at batch 1, AP, AP50, AP75, APs, APm, APl.
    """
    cols = [
        "model",
        "k",
        "k_measured",
        "GFLOPs",
        "latency_ms_b1",
        f"latency_ms_b{batch}",
        "FPS_b1",
        "AP",
        "AP50",
        "AP75",
        "APs",
        "APm",
        "APl",
    ]
    dyn = res["table"].reindex(columns=cols)
    st = static.reindex(columns=cols)
    return pd.concat([dyn, st], ignore_index=True)
