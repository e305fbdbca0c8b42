"""Variable-speed inference: one model at every latency (notebooks 05, 06).

- :func:`timing_stream` / :func:`stream_latency`: real val images, spread over the
  router's scores, timed as a stream with every compared model in alternation;
- :func:`latency_table`: every model of the trade-off timed together and checked
  (:func:`~dynamicdet.evaluation.speed.time_latency_table`, :data:`~dynamicdet.engine.runs.LATENCY`);
- :func:`target_latency`: thresholds from target latencies, then the achieved latency;
- :func:`variable_speed_table`: the paper's Table 1 (dynamic rows and static models).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamicdet.engine.runs import LATENCY
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.speed import (
    paired_half_widths,
    prepare_for_timing,
    relative_half_width,
    segment_times,
    stream_times,
    time_latency_table,
)
from dynamicdet.experiments.static_models import load_static
from dynamicdet.experiments.trained import Trained
from dynamicdet.files import write_csv
from dynamicdet.metrics import mix
from dynamicdet.modeling import routing

TIMING_SEGMENT_IMAGES = 6  # images per interleaved segment (bench/segment_compare.py: within 1.3% of the truth)


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


MAX_ROUNDS = 200  # precise timing (eval.latency_tolerance): rounds at most per model


def stream_latency(
    t: Trained,
    fns: dict,
    images: list[torch.Tensor],
    batch: int = 1,
    per_round: bool = False,
    segment: int | None = None,
    precision: dict | None = None,
) -> dict:
    """Latency (ms per image) of several models over one stream of images, timed together.

    ``fns`` maps a name to a logit threshold (``route(x, tau)`` of the fused model) or to
    a callable ``fn(x)`` (e.g. a fused static model). The stream (:func:`timing_stream`)
    is cut into batches of ``batch`` (a last partial batch is dropped) and timed by
    :func:`~dynamicdet.evaluation.speed.segment_times` (each entry's pass over the stream, or over each
    ``segment`` batches of it, one timed call, entries in alternation, so machine noise hits
    them alike).

    With ``eval.latency_tolerance`` > 0 (and not ``per_round``), rounds are added (up to
    :data:`MAX_ROUNDS`) until every model's time *relative to the others of its round* is known to
    +-tolerance (95%, :func:`paired_half_widths`), and the mean is returned; ``precision`` (a dict) then
    receives ``{"ci95_rel": {name: relative half-width of the mean time}, "ci95_paired": {name: the same,
    relative to the round}}``. The relative one decides: the machine's speed swings from round to round
    by about a fifth on the 2-core VM, alike for every model of the round, which the absolute interval
    counts and every comparison of two rows cancels (measured at standard: +-2.9% absolute after 200
    rounds at batch 1, every row alike).

    Returns:
        ``{name: median ms per image}`` (precise: mean); with ``per_round``, ``{name: (R,) ms per image of each
        round}`` (entries of one round pair up, :func:`~dynamicdet.evaluation.speed.paired_ratio`); with
        ``per_round`` and ``segment``, ``{name: (R, S) ms per image of each segment in each round}``.
    """
    n = len(images) // batch * batch
    if n == 0:
        raise ValueError(f"a stream of {len(images)} images holds no batch of {batch}")
    batches = [torch.cat(images[i : i + batch]) for i in range(0, n, batch)]
    m = t.timing_model
    calls = {
        name: fn if callable(fn) else (lambda x, tau=float(fn): m.route(x, tau))  # a logit threshold
        for name, fn in fns.items()
    }
    repeats = max(3, t.cfg.eval.latency_repeats // 4)
    if per_round and segment is not None:
        step = segment * batch  # images per segment (the last one may hold fewer)
        sizes = np.array([min(step, n - i) for i in range(0, n, step)], dtype=float)
        times = segment_times(calls, batches, t.device, segment, warmup=1, repeats=repeats)
        return {name: v / sizes for name, v in times.items()}
    tol = t.cfg.eval.latency_tolerance
    times = stream_times(calls, batches, t.device, warmup=1, repeats=repeats, segment=segment)
    if per_round or not tol:
        return times if per_round else {name: float(np.median(v)) for name, v in times.items()}
    # precise: more rounds until every model's time relative to its round is known to +-tol (95%)
    while True:
        paired = paired_half_widths(times)
        if max(paired.values()) <= tol:
            break
        if len(next(iter(times.values()))) >= MAX_ROUNDS:  # said, not hidden: the table keeps each interval
            loose = {name: f"+-{h:.1%}" for name, h in paired.items() if h > tol}
            warnings.warn(
                f"timing stopped at {MAX_ROUNDS} rounds above +-{tol:.0%} (95%, relative to the round): {loose}",
                stacklevel=2,
            )
            break
        more = stream_times(calls, batches, t.device, warmup=1, repeats=repeats, segment=segment)
        times = {name: np.concatenate([v, more[name]]) for name, v in times.items()}
    if precision is not None:
        precision["ci95_rel"] = {name: relative_half_width(v) for name, v in times.items()}
        precision["ci95_paired"] = paired
    return {name: float(np.mean(v)) for name, v in times.items()}


def timed_with_interval(**kwargs) -> tuple[dict, dict]:
    """:func:`stream_latency` as ``({name: ms per image}, {"ci95_rel": {name: ...}, "ci95_paired": {name: ...}})``
    (the second empty without ``eval.latency_tolerance``): a pass of
    :func:`~dynamicdet.evaluation.speed.time_latency_table` that keeps each timing's intervals with it."""
    intervals: dict = {}
    return stream_latency(**kwargs, precision=intervals), intervals


def target_latency(
    t: Trained,
    ks=(0.1, 0.5, 0.9),
    n_images: int | None = None,
    rounds: int = 3,
    progress: bool = True,
    retries: int = 2,
    segment: int | None = 6,
) -> pd.DataFrame:
    """Check the latency controller: thresholds from target latencies, then route() timed at them.

    Batch 1, on a stream of ``eval.stream_images`` real val images (:func:`timing_stream`).
    Each of ``rounds`` rounds:

    1. calibration: the stream through the easy route (tau = +inf) and through the hard
       route (tau = -inf), timed in alternation; lat_easy, lat_hard = ms per image;
    2. each target: lat_t = lat_easy + k (lat_hard - lat_easy) ms, and tau from
       :func:`routing.threshold_for_latency` on the router's scores over all of val;
    3. achieved: the stream through ``route(x, tau)`` for every target, timed right after
       the calibration, in alternation with the easy and hard streams again, ``segment``
       images at a time (every entry on images 1-6, then every entry on images 7-12, ...:
       :func:`~dynamicdet.evaluation.speed.segment_times`; ``None``: whole passes).

    ``achieved / target`` is what a user gets from a calibration taken moments before; on
    a shared machine it also carries the machine's change of speed between the two passes
    (it swings from minute to minute on ours: docs/design.md, timing noise), hence the rounds.
    ``achieved / model`` compares with
    lat_easy + k_s (lat_hard - lat_easy) from the easy and hard passes over the same segment s
    of the same timing round (k_s: that segment's fraction of hard images): the accuracy of the
    latency model itself, as the median of that ratio over every segment of every timing round
    of every round (:func:`~dynamicdet.evaluation.speed.paired_ratio`). Segments a few images long pair
    calls taken moments apart: on the 2-core VM, whose speed swings within a 1.5 s pass,
    the median of 15 whole-pass ratios came out at 0.87 (``make bench`` item 6b), although at
    batch 1 route() makes the very calls of the easy and hard passes.

    A calibration whose hard route times no slower than its easy route (machine noise
    larger than the routes' difference) is measured again, up to ``retries`` times; a
    round that stays inverted is recorded as noisy and skipped, never raised: timing
    noise does not fail the caller. ``noisy_rounds`` counts them; with no calibrated
    round the timing columns are NaN.

    Returns:
        One row per target, medians over the rounds: ``target k``, ``target ms/img``,
        ``logit threshold``, ``val fraction hard``, ``timed fraction hard``,
        ``achieved ms/img``, ``achieved / target`` (+ ``_min``, ``_max`` over the rounds),
        ``achieved / model`` (median over ``achieved / model_n`` segment ratios), ``lat_easy ms/img``,
        ``lat_hard ms/img`` (calibration), ``images``, ``rounds``, ``noisy_rounds``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if segment is not None and segment < 1:
        raise ValueError(f"segment must be >= 1 image or None, got {segment}")
    stream, z_timed = timing_stream(t, n_images)
    z = t.val_scores["logit"].to_numpy()
    step = len(stream) if segment is None else segment
    z_segments = [z_timed[i : i + step] for i in range(0, len(stream), step)]
    sizes = np.array([len(zs) for zs in z_segments], dtype=float)  # (S,) images per segment
    ends = {"easy": float("inf"), "hard": float("-inf")}
    per_round, noisy = [], 0
    model_ratios: dict[float, list[float]] = {}  # per target: achieved / model of every segment of every timing round
    for _ in tqdm(range(rounds), desc="target latency", disable=not progress, leave=False):
        for _ in range(retries + 1):
            cal = stream_latency(t, ends, stream)
            if cal["hard"] > cal["easy"]:
                break
        else:
            noisy += 1
            warnings.warn(
                f"target latency: hard route timed no slower than the easy route ({cal['hard']:.3f} vs "
                f"{cal['easy']:.3f} ms/img on {len(stream)} val images, {retries + 1} tries): round skipped as noisy",
                stacklevel=2,
            )
            continue
        # lat_t = (1 - k) lat_easy + k lat_hard
        targets = {k: mix(easy=cal["easy"], hard=cal["hard"], k=k) for k in ks}
        taus = {k: routing.threshold_for_latency(z, lat, cal["easy"], cal["hard"]) for k, lat in targets.items()}
        per = stream_latency(t, {**ends, **taus}, stream, per_round=True, segment=segment)
        per = {name: v.reshape(len(v), -1) for name, v in per.items()}  # (R, S) ms/img per segment
        # a round's ms/img over the stream = the segments' ms/img weighted by their images
        achieved = {name: float(np.median(v @ sizes / sizes.sum())) for name, v in per.items()}
        for k in ks:
            k_timed = float((z_timed >= taus[k]).mean())
            k_seg = np.array([float((zs >= taus[k]).mean()) for zs in z_segments])  # (S,)
            # same segment s of timing round i: model_is = (1 - k_s) lat_easy,is + k_s lat_hard,is
            model = mix(easy=per["easy"], hard=per["hard"], k=k_seg)
            model_ratios.setdefault(k, []).extend((per[k] / model).reshape(-1))
            per_round.append(
                {
                    "target k": k,
                    "target ms/img": targets[k],
                    "logit threshold": taus[k],
                    "val fraction hard": float((z >= taus[k]).mean()),
                    "timed fraction hard": k_timed,
                    "achieved ms/img": achieved[k],
                    "achieved / target": achieved[k] / targets[k],
                    "achieved / model": np.nan,  # pooled over every round below
                    "lat_easy ms/img": cal["easy"],
                    "lat_hard ms/img": cal["hard"],
                }
            )
    columns = [
        "target k",
        "target ms/img",
        "logit threshold",
        "val fraction hard",
        "timed fraction hard",
        "achieved ms/img",
        "achieved / target",
        "achieved / model",
        "lat_easy ms/img",
        "lat_hard ms/img",
    ]
    per_round = pd.DataFrame(per_round, columns=columns) if per_round else pd.DataFrame({"target k": list(ks)})
    g = per_round.reindex(columns=columns).groupby("target k", sort=False)
    out = g.median().reset_index()
    ratio = out.columns.get_loc("achieved / target")
    out.insert(ratio + 1, "achieved / target_min", g["achieved / target"].min().to_numpy())
    out.insert(ratio + 2, "achieved / target_max", g["achieved / target"].max().to_numpy())
    out["achieved / model"] = [float(np.median(model_ratios[k])) if k in model_ratios else np.nan for k in ks]
    out["achieved / model_n"] = [len(model_ratios.get(k, [])) for k in ks]
    out["images"] = len(stream)
    out["rounds"] = rounds
    out["noisy_rounds"] = noisy
    return out


def latency_table(t: Trained, res, static: pd.DataFrame, progress: bool = True, tries: int = 3) -> pd.DataFrame:
    """Latency (ms per image) of every model of the trade-off ``res`` (a
    :class:`~dynamicdet.experiments.tradeoffs.Tradeoff`), timed together, then checked.

    The dynamic rows run ``route()`` at the table's thresholds; ``B1 + router`` is the
    router's score alone (confidence escalation's hard images pay H1 = easy - score on
    top); the static models run their fused forward. All on one stream of val images
    (:func:`timing_stream`), interleaved every :data:`TIMING_SEGMENT_IMAGES` images
    (:func:`stream_latency` with ``segment``: every model on images 1-6, then every model
    on images 7-12, ...), at batch 1 and ``eval.batch``: whole passes timed one after the
    other strayed by up to 26% on a shared machine (``bench/segment_compare.py``).

    The table is then checked (:func:`~dynamicdet.metrics.latency_checks`); a table that fails
    is timed again, up to ``tries`` times, and the attempt with the most passed checks is kept
    (:func:`~dynamicdet.evaluation.speed.time_latency_table`). It is written with a
    ``consistent`` column (False on rows that take part in a failed check) and a warning, never
    silently. The checks go to ``<table>_checks.csv`` beside it. Cached
    (:data:`~dynamicdet.engine.runs.LATENCY`).

    Returns:
        Columns ``model``, ``k_timed`` (hard fraction of the timed images; NaN for static
        rows), ``latency_ms_b1``, ``latency_ms_b<eval.batch>``, ``consistent``.
    """
    table, e = res.table, t.cfg.eval
    path = LATENCY.path(t.cfg)
    names = [*table["model"], "B1 + router", *static.get("model", [])]
    if path.exists():
        cached = pd.read_csv(path)
        if list(cached["model"]) == names:
            return cached
    fns: dict = dict(zip(table["model"], table["tau"], strict=True))
    fns["B1 + router"] = t.timing_model.score
    same = None
    for scale in e.static_scales:
        name = f"{t.cfg.model.family}{scale} (static)"
        if name in names:
            fns[name] = prepare_for_timing(load_static(t.cfg, scale), t.device)
            same = name if scale == t.cfg.model.scale else same
    stream, z = timing_stream(t)
    k_timed = {m: float((z >= tau).mean()) for m, tau in zip(table["model"], table["tau"], strict=True)}
    # one cost measure per batch size: every model over the stream, interleaved every few images
    passes = {
        f"latency_ms_b{b}": partial(
            timed_with_interval,
            t=t,
            fns=fns,
            images=stream,
            batch=b,
            segment=max(1, TIMING_SEGMENT_IMAGES // b),
        )
        for b in sorted({1, e.batch})
    }
    timed = time_latency_table(
        passes=passes, rows=names, k_timed=k_timed, same_static=same, tries=tries, progress=progress
    )
    df = timed.table
    df.insert(1, "k_timed", [k_timed.get(n, np.nan) for n in names])
    write_csv(timed.checks, path.with_name(path.stem + "_checks.csv"))
    write_csv(df, path)
    return df


def latency_table_checks(t: Trained) -> pd.DataFrame:
    """The checks of the cached latency table of ``t`` (:func:`latency_table` must have run)."""
    path = LATENCY.path(t.cfg)
    return pd.read_csv(path.with_name(path.stem + "_checks.csv"))


def variable_speed_table(
    res, static: pd.DataFrame, lat: pd.DataFrame, batch: int, onnx: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The trade-off table: dynamic rows /0 /10 /50 /90 /100 (route() for real) plus static models.

    ``res`` is the :class:`~dynamicdet.experiments.tradeoffs.Tradeoff` (not imported here: that module
    imports this one for its timing stream).

    Columns: model, k (target hard fraction), k_measured, GFLOPs, latency at batch 1 and
    ``batch`` (ms per image, :func:`latency_table`), FPS at batch 1, AP, AP50, AP75, APs,
    APm, APl, ``consistent`` (the latency figures passed :func:`~dynamicdet.metrics.latency_checks`);
    with ``onnx`` (:func:`~.tradeoffs.onnx_latency`) also ``latency_ms_onnx_b1`` and ``consistent_onnx``; with
    precise timing (``eval.latency_tolerance``) each latency's 95% interval relative to it, ``ci95_rel_<b1...>``,
    and relative to the other models of its rounds (what a comparison of two rows sees), ``ci95_paired_<b1...>``.
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
        "consistent",
    ]
    rows = pd.concat([res.table, static], ignore_index=True)
    rows = rows.drop(columns=[c for c in rows if c.startswith(("latency_ms", "FPS"))]).merge(
        lat, on="model", how="left"
    )
    rows["FPS_b1"] = 1000.0 / rows["latency_ms_b1"]
    if onnx is not None:
        rows = rows.merge(onnx, on="model", how="left")
        cols.insert(cols.index("FPS_b1"), "latency_ms_onnx_b1")
        cols.append("consistent_onnx")
    return rows.reindex(columns=cols + sorted(c for c in rows if c.startswith(("ci95_rel_", "ci95_paired_"))))
