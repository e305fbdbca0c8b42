"""The paper's experiments as cached stages that the notebooks call.

Each stage stores its output in the run folder (keyed by config), so re-running a
notebook does not retrain or re-measure. Stages:

- :func:`route_detections`: val detections of both routes (for the baselines).
- :func:`routed_evaluator`: AP of any per-image routing of those detections, cheaply.
- :func:`latency_table`: every model of the trade-off timed together on one stream of val images.
- :func:`static_baselines`: plain ultralytics models trained by ultralytics' own trainer.
- :func:`tradeoff`: the /0 /10 /50 /90 /100 table, the dense sweep and every baseline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
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
from .speed import TimingError, prepare_for_timing, time_interleaved
from .train import evaluate_fn, load_model, resolve_device, router_dir, run_dir, train_step2, val_loader


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

    @cached_property
    def timing_model(self) -> torch.nn.Module:
        """A fused copy of the model for latency figures (prepared once, see :func:`speed.prepare_for_timing`)."""
        return prepare_for_timing(self.model, self.device)


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


def stream_latency(t: Trained, fns: dict, images: list[torch.Tensor], batch: int = 1) -> dict:
    """Latency (ms per image) of several models over one stream of images, timed together.

    ``fns`` maps a name to a logit threshold (``route(x, tau)`` of the fused model) or to
    a callable ``fn(x)`` (e.g. a fused static model). The stream (:func:`timing_stream`)
    is cut into batches of ``batch`` (a last partial batch is dropped); each entry's pass
    over the whole stream is one timed call, and the entries' passes are timed in
    alternation (:func:`speed.time_interleaved`), so machine noise hits them alike.

    Returns:
        ``{name: median ms per image}``.
    """
    n = len(images) // batch * batch
    if n == 0:
        raise ValueError(f"a stream of {len(images)} images holds no batch of {batch}")
    batches = [torch.cat(images[i : i + batch]) for i in range(0, n, batch)]
    m = t.timing_model

    def stream_of(fn):
        if not callable(fn):  # a logit threshold
            return lambda tau=float(fn): [m.route(x, tau) for x in batches]
        return lambda: [fn(x) for x in batches]

    res = time_interleaved(
        {name: stream_of(fn) for name, fn in fns.items()},
        t.device,
        warmup=1,
        repeats=max(3, t.cfg.eval.latency_repeats // 4),
    )
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


def tradeoff(t: Trained, progress: bool = True) -> dict[str, pd.DataFrame]:
    """The variable-speed table and every baseline at the same hard fractions (accuracy, cost).

    Returns:
        ``{"table": /0 /10 /50 /90 /100 rows of the learned router (route() for real),
        "sweep": dense sweep of all routers (AP vs k, GFLOPs, capture ratio), "ap1",
        "ap2", "gflops"}``. Also written as CSV in the step-2 folder. Latencies come from
        :func:`latency_table` (every model timed together) and :func:`sweep_latency`.

    The learned router's sweep points at ``eval.fractions`` run ``route()`` and evaluate
    its detections in full; the points between them, like every baseline, pool the two
    detectors' per-image matches by the routing decision (:class:`RoutedEvaluator`,
    equal to a full evaluation of the composed detections; the column ``measured_by``
    says which). That keeps a dense sweep at one ``accumulate()`` per point.
    """
    cfg, e = t.cfg, t.cfg.eval
    path = t.folder / "tradeoff.pt"
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
    save_atomic(out, path)
    table.to_csv(t.folder / "tradeoff_table.csv", index=False)
    sweep.to_csv(t.folder / "tradeoff_sweep.csv", index=False)
    return out


# ------------------------------------------------------------------------ static baselines
def static_baselines(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """Plain ultralytics models of the same family, trained by ultralytics' own trainer.

    Same data, same epochs (``eval.static_epochs`` or ``train.epochs``), the same
    optimiser settings; evaluated with the same pycocotools code (AP, GFLOPs; latency:
    :func:`latency_table`, with the dynamic model). One row per scale in
    ``eval.static_scales``; cached in the run folder.
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
        det = load_static(cfg, scale)
        desc = f"val {cfg.model.family}{scale}"
        m, _ = evaluate_fn(lambda x, det=det: det(x)[0], cfg, info, device, val_loader(cfg, info), desc, progress)
        x = torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size)
        fused = det.fuse(verbose=False) if hasattr(det, "fuse") else det
        row = {
            "model": f"{cfg.model.family}{scale} (static)",
            **m,
            "GFLOPs": _gflops(lambda fused=fused, x=x: fused(x)),
            "epochs": epochs,
            "train_wall_s": round(wall, 1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2))
        rows.append(row)
    return pd.DataFrame(rows)


def load_static(cfg: Config, scale: str) -> torch.nn.Module:
    """The static ultralytics model of ``scale`` trained by :func:`static_baselines` (CPU, eval)."""
    path = run_dir(cfg) / "static" / scale / "weights" / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: static {cfg.model.family}{scale} not trained yet (run static_baselines)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()


def latency_table(t: Trained, res: dict, static: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Latency (ms per image) of every model of the trade-off, timed together.

    The dynamic rows run ``route()`` at the table's thresholds; ``B1 + router`` is the
    router's score alone (confidence escalation's hard images pay H1 = easy - score on
    top); the static models run their fused forward. All on one stream of val images
    (:func:`timing_stream`), in alternation (:func:`stream_latency`), at batch 1 and
    ``eval.batch``: figures taken minutes apart on a shared machine are not comparable.
    Cached as ``latency_table.csv`` in the step-2 folder.

    Returns:
        Columns ``model``, ``latency_ms_b1``, ``latency_ms_b<eval.batch>``.
    """
    table, e = res["table"], t.cfg.eval
    path = t.folder / "latency_table.csv"
    names = [*table["model"], "B1 + router", *static.get("model", [])]
    if path.exists():
        cached = pd.read_csv(path)
        if list(cached["model"]) == names:
            return cached
    fns: dict = dict(zip(table["model"], table["tau"], strict=True))
    fns["B1 + router"] = t.timing_model.score
    for scale in e.static_scales:
        name = f"{t.cfg.model.family}{scale} (static)"
        if name in names:
            fns[name] = prepare_for_timing(load_static(t.cfg, scale), t.device)
    stream, _ = timing_stream(t)
    out: dict = {"model": names}
    for b in tqdm(sorted({1, e.batch}), desc="latency table", disable=not progress):
        ms = stream_latency(t, fns, stream, b)
        out[f"latency_ms_b{b}"] = [ms[n] for n in names]
    df = pd.DataFrame(out)
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return df


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


def variable_speed_table(res: dict, static: pd.DataFrame, lat: pd.DataFrame, batch: int) -> pd.DataFrame:
    """The trade-off table: dynamic rows /0 /10 /50 /90 /100 (route() for real) plus static models.

    Columns: model, k (target hard fraction), k_measured, GFLOPs, latency at batch 1 and
    ``batch`` (ms per image, :func:`latency_table`), FPS at batch 1, AP, AP50, AP75, APs,
    APm, APl.
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
    rows = pd.concat([res["table"], static], ignore_index=True)
    rows = rows.drop(columns=[c for c in rows if c.startswith(("latency_ms", "FPS"))]).merge(
        lat, on="model", how="left"
    )
    rows["FPS_b1"] = 1000.0 / rows["latency_ms_b1"]
    return rows.reindex(columns=cols)
