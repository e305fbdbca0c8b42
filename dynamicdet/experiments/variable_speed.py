"""Variable-speed inference: one model at every latency (notebooks 05, 06).

- :func:`timing_stream` / :func:`stream_latency`: real val images, spread over the
  router's scores, timed as a stream with every compared model in alternation;
- :func:`latency_table`: every model of the trade-off timed together (:data:`~dynamicdet.engine.runs.LATENCY`);
- :func:`target_latency`: thresholds from target latencies, then the achieved latency;
- :func:`variable_speed_table`: the paper's Table 1 (dynamic rows and static models).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamicdet.engine.runs import LATENCY
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.speed import prepare_for_timing, segment_times, stream_times
from dynamicdet.experiments.static_models import load_static
from dynamicdet.experiments.trained import Trained
from dynamicdet.files import write_csv
from dynamicdet.modeling import routing


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


def stream_latency(
    t: Trained,
    fns: dict,
    images: list[torch.Tensor],
    batch: int = 1,
    per_round: bool = False,
    segment: int | None = None,
) -> dict:
    """Latency (ms per image) of several models over one stream of images, timed together.

    ``fns`` maps a name to a logit threshold (``route(x, tau)`` of the fused model) or to
    a callable ``fn(x)`` (e.g. a fused static model). The stream (:func:`timing_stream`)
    is cut into batches of ``batch`` (a last partial batch is dropped) and timed by
    :func:`~dynamicdet.evaluation.speed.segment_times` (each entry's pass over the stream, or over each
    ``segment`` batches of it, one timed call, entries in alternation, so machine noise hits
    them alike).

    Returns:
        ``{name: median ms per image}``; with ``per_round``, ``{name: (R,) ms per image of each
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
    times = stream_times(calls, batches, t.device, warmup=1, repeats=repeats, segment=segment)
    return times if per_round else {name: float(np.median(v)) for name, v in times.items()}


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
    (up to 1.7x on ours), hence the rounds. ``achieved / model`` compares with
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
        # lat_t = lat_easy + k (lat_hard - lat_easy)
        targets = {k: cal["easy"] + k * (cal["hard"] - cal["easy"]) for k in ks}
        taus = {k: routing.threshold_for_latency(z, lat, cal["easy"], cal["hard"]) for k, lat in targets.items()}
        per = stream_latency(t, {**ends, **taus}, stream, per_round=True, segment=segment)
        per = {name: v.reshape(len(v), -1) for name, v in per.items()}  # (R, S) ms/img per segment
        # a round's ms/img over the stream = the segments' ms/img weighted by their images
        achieved = {name: float(np.median(v @ sizes / sizes.sum())) for name, v in per.items()}
        for k in ks:
            k_timed = float((z_timed >= taus[k]).mean())
            k_seg = np.array([float((zs >= taus[k]).mean()) for zs in z_segments])  # (S,)
            # same segment s of timing round i: model_is = lat_easy,is + k_s (lat_hard,is - lat_easy,is)
            model = per["easy"] + k_seg * (per["hard"] - per["easy"])
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


# the latency table's consistency checks (see latency_checks): bounds that hold on a quiet machine
SAME_NETWORK = (0.97, 1.08)  # Dy /0 / the static model of the same architecture (+ a router of about 2%)
MONOTONE_TOL = 0.02  # t(/k') >= (1 - tol) t(/k) for k' > k
LINEAR_TOL = 0.05  # |t(/k) / ((1 - k) t(/0) + k t(/100)) - 1| <= tol
TIMING_SEGMENT_IMAGES = 6  # images per interleaved segment (bench/segment_compare.py: within 1.3% of the truth)


def latency_checks(lat: pd.DataFrame, k_timed: dict[str, float], same_static: str | None) -> pd.DataFrame:
    """The three checks a latency table must pass before its figures are believed.

    For every ``latency_ms_b*`` column of ``lat``:

    1. ``same network``: Dy /0 (B1 + router + H1) over the static model of the same
       architecture (``same_static``, skipped when absent) within :data:`SAME_NETWORK`;
    2. ``non-decreasing``: each Dy /k at least (1 - :data:`MONOTONE_TOL`) times the Dy row
       of the next smaller k;
    3. ``linear mix``: each Dy /k within :data:`LINEAR_TOL` of (1 - k) t(/0) + k t(/100), k the
       hard fraction of the timed stream (``k_timed``).

    At batch 1, route() makes exactly the calls of one route per image, so all three must hold
    (``decides``). At a larger batch, a Dy /k with 0 < k < 1 splits most batches into an easy
    and a hard sub-batch (two smaller calls instead of one full one), a real cost beyond the
    linear mix; checks 2 and 3 are then recorded as measurements of that overhead
    (``decides`` False), and only check 1 (Dy /0 never splits) decides.

    Args:
        lat: columns ``model`` and ``latency_ms_b<B>``; the Dy rows are the models in ``k_timed``.
        k_timed: Dy row name -> fraction of the timed images that took the hard route (must
            include a 0 and a 1 row).
        same_static: name of the static row of the same architecture, or None.

    Returns:
        One row per check and batch column: ``batch``, ``check``, ``model``, ``value``,
        ``lo``, ``hi``, ``passed``, ``decides`` (whether it counts for the table's consistency).
    """
    dy = sorted(k_timed, key=lambda m: k_timed[m])
    if not dy or k_timed[dy[0]] != 0 or k_timed[dy[-1]] != 1:
        raise ValueError(f"latency_checks: the Dy rows must include k = 0 and k = 1, got {k_timed}")
    rows = []
    for col in [c for c in lat.columns if c.startswith("latency_ms_b")]:
        t = lat.set_index("model")[col]
        b = col.removeprefix("latency_ms_")

        def add(check, model, value, lo, hi, b=b):
            decides = b == "b1" or check == "same network"
            rows.append(
                {
                    "batch": b,
                    "check": check,
                    "model": model,
                    "value": value,
                    "lo": lo,
                    "hi": hi,
                    "passed": bool(lo <= value <= hi),
                    "decides": decides,
                }
            )

        t0, t1 = t[dy[0]], t[dy[-1]]
        if same_static is not None and same_static in t.index:
            add("same network", dy[0], t0 / t[same_static], *SAME_NETWORK)
        for prev, m in itertools.pairwise(dy):
            add("non-decreasing", m, t[m] / t[prev], 1 - MONOTONE_TOL, np.inf)
        for m in dy[1:-1]:
            k = k_timed[m]
            # the linear mix of the two routes: (1 - k) t(/0) + k t(/100)
            add("linear mix", m, t[m] / ((1 - k) * t0 + k * t1), 1 - LINEAR_TOL, 1 + LINEAR_TOL)
    return pd.DataFrame(rows, columns=["batch", "check", "model", "value", "lo", "hi", "passed", "decides"])


def time_until_consistent(
    time_once: Callable[[int], pd.DataFrame],
    check: Callable[[pd.DataFrame], pd.DataFrame],
    k_timed: dict[str, float],
    same_static: str | None,
    tries: int,
) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """Time a latency table up to ``tries`` times until its deciding checks pass.

    Args:
        time_once: ``attempt -> table`` (one timing of every row).
        check: ``table -> checks`` with boolean columns ``passed`` and ``decides``
            (:func:`latency_checks`).
        k_timed: hard fraction of each Dy row; the /0 and /100 rows take part in every mix check.
        same_static: the static row compared with Dy /0 (None without one).
        tries: timings at most (at least one).

    Returns:
        The attempt with the most passed deciding checks (the last of equals), its checks,
        and the rows to mark inconsistent: those of a failed deciding check plus the rows
        they were compared with (/0, /100 and ``same_static``); empty when all passed.
    """
    best = None
    for attempt in range(max(tries, 1)):
        df = time_once(attempt)
        checks = check(df)
        ok = checks["passed"] | ~checks["decides"]
        if best is None or ok.sum() >= best[2]:
            best = (df, checks, ok.sum())
        if ok.all():
            break
    df, checks, _ = best
    failed = set(checks.loc[~checks["passed"] & checks["decides"], "model"])
    if failed:
        failed |= {m for m in k_timed if k_timed[m] in (0.0, 1.0)} | ({same_static} if same_static else set())
    return df, checks, failed


def latency_table(t: Trained, res: dict, static: pd.DataFrame, progress: bool = True, tries: int = 3) -> pd.DataFrame:
    """Latency (ms per image) of every model of the trade-off, timed together, then checked.

    The dynamic rows run ``route()`` at the table's thresholds; ``B1 + router`` is the
    router's score alone (confidence escalation's hard images pay H1 = easy - score on
    top); the static models run their fused forward. All on one stream of val images
    (:func:`timing_stream`), interleaved every :data:`TIMING_SEGMENT_IMAGES` images
    (:func:`stream_latency` with ``segment``: every model on images 1-6, then every model
    on images 7-12, ...), at batch 1 and ``eval.batch``: whole passes timed one after the
    other strayed by up to 26% on a shared machine (``bench/segment_compare.py``).

    The table is then checked (:func:`latency_checks`); a table that fails is timed again,
    up to ``tries`` times, and the attempt with the most passed checks is kept. It is
    written with a ``consistent`` column (False on rows that take part in a failed check)
    and a warning, never silently. The checks go to ``<table>_checks.csv`` beside it.
    Cached (:data:`~dynamicdet.engine.runs.LATENCY`).

    Returns:
        Columns ``model``, ``k_timed`` (hard fraction of the timed images; NaN for static
        rows), ``latency_ms_b1``, ``latency_ms_b<eval.batch>``, ``consistent``.
    """
    table, e = res["table"], t.cfg.eval
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

    def time_once(attempt: int) -> pd.DataFrame:
        out: dict = {"model": names, "k_timed": [k_timed.get(n, np.nan) for n in names]}
        for b in tqdm(sorted({1, e.batch}), desc=f"latency table (try {attempt + 1})", disable=not progress):
            ms = stream_latency(t, fns, stream, b, segment=max(1, TIMING_SEGMENT_IMAGES // b))
            out[f"latency_ms_b{b}"] = [ms[n] for n in names]
        return pd.DataFrame(out)

    df, checks, failed = time_until_consistent(
        time_once, lambda df: latency_checks(df, k_timed, same), k_timed, same, tries
    )
    if failed:
        bad = checks.loc[~checks["passed"] & checks["decides"], ["batch", "check", "model", "value"]]
        bad = bad.to_string(index=False)
        warnings.warn(
            f"latency table: checks failed after {tries} timing(s); written with consistent=False:\n{bad}", stacklevel=2
        )
    df["consistent"] = [n not in failed for n in names]
    write_csv(checks, path.with_name(path.stem + "_checks.csv"))
    write_csv(df, path)
    return df


def latency_table_checks(t: Trained) -> pd.DataFrame:
    """The checks of the cached latency table of ``t`` (:func:`latency_table` must have run)."""
    path = LATENCY.path(t.cfg)
    return pd.read_csv(path.with_name(path.stem + "_checks.csv"))


def variable_speed_table(
    res: dict, static: pd.DataFrame, lat: pd.DataFrame, batch: int, onnx: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The trade-off table: dynamic rows /0 /10 /50 /90 /100 (route() for real) plus static models.

    Columns: model, k (target hard fraction), k_measured, GFLOPs, latency at batch 1 and
    ``batch`` (ms per image, :func:`latency_table`), FPS at batch 1, AP, AP50, AP75, APs,
    APm, APl, ``consistent`` (the latency figures passed :func:`latency_checks`); with
    ``onnx`` (:func:`~.frontier.onnx_latency`) also ``latency_ms_onnx_b1`` and ``consistent_onnx``.
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
    rows = pd.concat([res["table"], static], ignore_index=True)
    rows = rows.drop(columns=[c for c in rows if c.startswith(("latency_ms", "FPS"))]).merge(
        lat, on="model", how="left"
    )
    rows["FPS_b1"] = 1000.0 / rows["latency_ms_b1"]
    if onnx is not None:
        rows = rows.merge(onnx, on="model", how="left")
        cols.insert(cols.index("FPS_b1"), "latency_ms_onnx_b1")
        cols.append("consistent_onnx")
    return rows.reindex(columns=cols)
