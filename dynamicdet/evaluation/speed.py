"""Latency harness: easy route, hard route, router, and plain ultralytics models.

Every figure is measured on a fused model under ``torch.inference_mode`` after a
warm-up, as the median (and 10th/90th percentiles) over repeats, with the compared
variants timed in alternation so that machine noise hits them alike; on a GPU the model
runs in fp16 with CUDA synchronisation around each timed call. Results carry the
device, threads, image size and package versions they were measured with.

A latency table (every model of a comparison in one or more cost measures) is timed by
:func:`time_latency_table`: interleaved, checked (:func:`~dynamicdet.metrics.latency_checks`) and timed again
until consistent (:func:`time_until_consistent`).
"""

from __future__ import annotations

import copy
import math
import platform
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pycocotools
import torch
import torchvision
import ultralytics
from tqdm.auto import tqdm
from ultralytics.nn.tasks import DetectionModel

from dynamicdet.metrics import latency_checks


def environment() -> dict:
    """Device, threads and package versions to store next to any timing."""
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ultralytics": ultralytics.__version__,
        "pycocotools": getattr(pycocotools, "__version__", "2.0.11"),
        "python": platform.python_version(),
        "fp16": cuda,
    }


def _sync(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(times: list[float]) -> dict:
    t = np.asarray(times)
    return {
        "median_ms": float(np.median(t)),
        "p10_ms": float(np.percentile(t, 10)),
        "p90_ms": float(np.percentile(t, 90)),
        "min_ms": float(t.min()),
        "repeats": len(times),
        "times_ms": [float(x) for x in t],  # each repeat's time, in round order (pair rounds across entries)
    }


@torch.inference_mode()
def time_interleaved(fns: dict[Hashable, Callable[[], object]], device, warmup: int = 5, repeats: int = 20) -> dict:
    """Time several zero-argument callables in alternation (round robin, counterbalanced).

    Each repeat (round) calls every function once, in turn, so a burst of machine noise hits
    all of them alike and their *ratios* stay meaningful on a shared machine. Odd rounds call
    them in reverse order (A B C, C B A, ...): a machine that slows down steadily within a
    round would otherwise charge the later positions more in every round (measured on the 2-core
    VM: the same call timed under two names, in positions 1 and 4 of six, came out 4% apart in
    the median of 15 per-round ratios; ``bench/suite.py`` item 8a reports this noise floor).

    Returns:
        ``{name: {"median_ms", "p10_ms", "p90_ms", "min_ms", "repeats", "times_ms"}}``; ``times_ms[i]``
        of every entry comes from round ``i``, so per-round ratios between entries
        (:func:`paired_ratio`) cancel the machine's slower drifts.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: _stats(v) for k, v in times.items()}


def paired_ratio(num, den) -> dict:
    """Ratio of two timings taken in the same rounds of :func:`time_interleaved`.

    ``num[i] / den[i]`` is a ratio within round ``i`` (both sides under the same machine speed);
    the figure is the median over rounds, so rounds in which the machine changed speed between
    the two calls count as outliers, not as a shift. ``den`` may be a combination of entries
    (e.g. the ideal mix ``(1 - k) easy + k hard`` of each round).

    Args:
        num, den: (R,) per-round times of the same R rounds.

    Returns:
        ``{"ratio": median, "lo": min, "hi": max, "rounds": R}``.
    """
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if num.shape != den.shape or num.ndim != 1 or len(num) == 0:
        raise ValueError(f"per-round times of the same rounds are needed, got shapes {num.shape} and {den.shape}")
    r = num / den
    return {"ratio": float(np.median(r)), "lo": float(r.min()), "hi": float(r.max()), "rounds": len(r)}


def relative_half_width(rounds: np.ndarray) -> float:
    """Half-width of the Student-t 95% interval of the mean of ``rounds`` (R,), relative to the mean."""
    from scipy import stats  # deferred: scipy.stats takes about 1.5 s to import and only precise timing needs it

    r = np.asarray(rounds, dtype=float)
    if len(r) < 2:
        return math.inf
    # t_{0.975, R-1} sd / sqrt(R) / mean
    return float(stats.t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / math.sqrt(len(r)) / r.mean())


def paired_half_widths(times: dict[str, np.ndarray]) -> dict[str, float]:
    """Each model's 95% interval relative to the others timed in the same rounds.

    Args:
        times: ``{name: (R,) ms per image of each round}``, the rounds of every entry paired (timed together).

    Returns:
        ``{name: relative half-width}`` of the mean of ``times[name] / g``, where ``g`` (R,) is each round's
        speed: the geometric mean of every model's time in that round. A swing of the machine's speed
        scales every model of a round alike and leaves these ratios unchanged; the precision of a
        comparison of two rows is about the root sum of squares of their two figures.
    """
    logs = np.log(np.stack([np.asarray(v, dtype=float) for v in times.values()]))  # (models, R)
    # g_r = exp(mean_m log t_{m,r}); each model's time relative to its round: t_{m,r} / g_r
    relative = np.exp(logs - logs.mean(axis=0))
    return {name: relative_half_width(r) for name, r in zip(times, relative, strict=True)}


def segment_times(
    fns: dict[str, Callable[[torch.Tensor], object]],
    batches: list[torch.Tensor],
    device,
    segment: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> dict[str, np.ndarray]:
    """Per-round time (ms) of several models on each segment of one stream of batches, timed together.

    The stream is cut into consecutive segments of ``segment`` batches (``None``: one segment,
    the whole stream). Each model's pass over one segment is one timed call; a round times
    every model on the first segment, in alternation, then every model on the next segment,
    and so on (:func:`time_interleaved`: the whole sequence reversed in odd rounds). Two
    models' times on the same segment of the same round were taken moments apart, so their
    ratio (:func:`paired_ratio`) stays meaningful even when the machine's speed swings within
    a pass (measured on the 2-core VM: the same 60-image pass timed at 12 ms/img and at 25
    ms/img in consecutive rounds).

    Args:
        fns: name -> ``fn(x)`` on one batch ``x`` (B, 3, H, W).
        batches: the stream.
        segment: batches per segment (the last segment may be shorter); >= 1 or ``None``.

    Returns:
        ``{name: (repeats, S) ms of each segment's pass, per round}`` for the S segments in stream order.
    """
    if not batches or sum(len(x) for x in batches) == 0:
        raise ValueError("the timing stream holds no image")
    if segment is not None and segment < 1:
        raise ValueError(f"segment must be >= 1 batch or None, got {segment}")
    step = len(batches) if segment is None else segment
    parts = [batches[i : i + step] for i in range(0, len(batches), step)]
    # segment-major: every model on segment 0, then every model on segment 1, ...
    passes = {
        (s, name): (lambda fn=fn, part=part: [fn(x) for x in part])
        for s, part in enumerate(parts)
        for name, fn in fns.items()
    }
    res = time_interleaved(passes, device, warmup, repeats)
    return {name: np.stack([res[(s, name)]["times_ms"] for s in range(len(parts))], axis=1) for name in fns}


def stream_times(
    fns: dict[str, Callable[[torch.Tensor], object]],
    batches: list[torch.Tensor],
    device,
    warmup: int = 1,
    repeats: int = 3,
    segment: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-round latency (ms per image) of several models over one stream of batches, timed together.

    The one timing path of the project (:func:`segment_times`): each model's pass over the
    whole stream (or over each ``segment`` of it) is one timed call, and the models' passes
    alternate (:func:`time_interleaved`), so a burst of machine noise hits them alike.

    Args:
        fns: name -> ``fn(x)`` on one batch ``x`` (B, 3, H, W).
        batches: the stream.
        segment: interleave the models every ``segment`` batches (``None``: every whole pass).

    Returns:
        ``{name: (repeats,) pass time / images in the stream, per round}``: entries of the same
        round pair up (:func:`paired_ratio`).
    """
    n = sum(len(x) for x in batches)
    times = segment_times(fns, batches, device, segment, warmup, repeats)
    # one round's pass = the sum of its segments' passes
    return {name: t.sum(axis=1) / n for name, t in times.items()}


def time_streams(
    fns: dict[str, Callable[[torch.Tensor], object]],
    batches: list[torch.Tensor],
    device,
    warmup: int = 1,
    repeats: int = 3,
) -> dict[str, float]:
    """:func:`stream_times` as ``{name: median over rounds of ms per image}``."""
    return {name: float(np.median(t)) for name, t in stream_times(fns, batches, device, warmup, repeats).items()}


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
            (:func:`~dynamicdet.metrics.latency_checks`).
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


@dataclass(frozen=True)
class TimedTable:
    """A latency table timed by :func:`time_latency_table`."""

    table: pd.DataFrame  # one row per model: ``model``, one column per cost measure (ms per image), ``consistent``
    checks: pd.DataFrame  # the kept timing's checks (:func:`~dynamicdet.metrics.latency_checks`)
    inconsistent: set[str]  # rows with ``consistent`` False: a failed deciding check and the rows it compared


def time_latency_table(
    passes: dict[str, Callable[[], dict[str, float]]],
    rows: list[str],
    k_timed: dict[str, float],
    same_static: str | None,
    tries: int = 3,
    same_network_decides: bool = True,
    label: str = "latency table",
    progress: bool = False,
) -> TimedTable:
    """Time a latency table: every model in every cost measure, checked, timed again until consistent.

    One attempt calls every pass in turn: each times all the models together, interleaved
    (:func:`stream_times`: a burst of machine noise hits them alike), and gives one column of
    the table. The table is checked (:func:`~dynamicdet.metrics.latency_checks`; with ``same_network_decides``
    False the same-network ratio is recorded, not deciding) and, while a deciding check fails,
    timed again, up to ``tries`` times; the attempt with the most passed checks is kept
    (:func:`time_until_consistent`). Rows that take part in a failed check get ``consistent``
    False and the table comes with a warning: timing noise never fails the caller.

    Args:
        passes: cost column (``latency_ms_b<B>``: ms per image at batch B) -> one interleaved
            timing of every model in that measure, ``{row: ms per image}``, or ``(that, {kind: {row: relative
            half-width of its 95% interval}})``, which adds a column ``<kind>_b<B>`` per kind (``ci95_rel``,
            ``ci95_paired``: :func:`~dynamicdet.experiments.variable_speed.timed_with_interval`).
        rows: the table's rows (model names), in order.
        k_timed: Dy row -> hard fraction of the timed images (must include a 0 and a 1 row).
        same_static: the static row of Dy /0's architecture, or None.
        tries: timings at most (at least one).
        label: names the table in the progress bar and the warning.

    Returns:
        The kept timing, its checks and its inconsistent rows.
    """

    def time_once(attempt: int) -> pd.DataFrame:
        out: dict = {"model": rows}
        for col, timed in tqdm(passes.items(), desc=f"{label} (try {attempt + 1})", disable=not progress):
            ms = timed()
            ms, intervals = ms if isinstance(ms, tuple) else (ms, {})
            out[col] = [ms[r] for r in rows]
            for kind, half in intervals.items():  # precise timing: each figure's intervals, kept with its attempt
                out[f"{kind}_{col.removeprefix('latency_ms_')}"] = [half.get(r, math.nan) for r in rows]
        return pd.DataFrame(out)

    def check(df: pd.DataFrame) -> pd.DataFrame:
        checks = latency_checks(lat=df, k_timed=k_timed, same_static=same_static)
        if not same_network_decides:  # the ratio is recorded; the monotone and linear-mix checks decide
            checks.loc[checks["check"] == "same network", "decides"] = False
        return checks

    df, checks, failed = time_until_consistent(
        time_once=time_once, check=check, k_timed=k_timed, same_static=same_static, tries=tries
    )
    if failed:
        bad = checks.loc[~checks["passed"] & checks["decides"], ["batch", "check", "model", "value"]]
        warnings.warn(
            f"{label}: latency checks failed after {tries} timing(s); written with consistent=False on "
            f"{sorted(failed)}:\n{bad.to_string(index=False)}",
            stacklevel=3,  # the line that asked for the table (the caller of latency_table, onnx_latency, ...)
        )
    df["consistent"] = [r not in failed for r in rows]
    return TimedTable(table=df, checks=checks, inconsistent=failed)


def prepare_for_timing(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A fused, eval-mode copy of ``model`` on ``device`` (fp16 on CUDA)."""
    m = copy.deepcopy(model).to(device).eval()
    # ultralytics models fold BN into convs; our wrappers fuse their parts (two-stage: nothing to fold)
    m = m.fuse(verbose=False) if isinstance(m, DetectionModel) else m.fuse()
    return m.half() if device.type == "cuda" else m


def route_latencies(
    model,
    img_size: int,
    batch: int = 1,
    device: torch.device | str = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    retries: int = 2,
) -> dict:
    """Latency (ms per batch) of the easy route, the hard route, B1 + router, and the router head.

    easy = B1 + router + H1 (``route`` with every image easy);
    hard = B1 + router + links + B2 + H2 (``route`` with every image hard).
    On one random batch (``dynamicdet speed``: the weights do not change the cost), the
    four in alternation (:func:`time_streams`).

    The hard route does strictly more work than the easy one; when noise says otherwise
    the four are measured again with doubled repeats, up to ``retries`` times. A range
    that stays inverted is returned with ``"noisy": True`` and a warning: timing noise
    never fails the caller (a shared machine's speed swings from minute to minute: docs/design.md, timing noise).
    """
    device = torch.device(device)
    m = prepare_for_timing(model, device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.rand(batch, model.ch, img_size, img_size, device=device, dtype=dtype)
    with torch.inference_mode():
        pooled = m.router_input(x)
    fns = {
        "easy": lambda x: m.route(x, float("inf")),
        "hard": lambda x: m.route(x, float("-inf")),
        "score": lambda x: m.score(x),
        "router": lambda x: m.router.head(pooled),
    }
    for attempt in range(retries + 1):
        res = {k: v * batch for k, v in time_streams(fns, [x], device, warmup, repeats * 2**attempt).items()}
        if res["hard"] > res["easy"]:
            break
    noisy = not res["hard"] > res["easy"]
    if noisy:
        warnings.warn(
            f"hard route measured no slower than the easy route ({res['hard']:.3f} vs {res['easy']:.3f} ms at "
            f"batch {batch}, {img_size} px) after {retries + 1} attempts: the machine is too noisy for these "
            "latencies; raise eval.latency_repeats or measure on a quieter machine",
            stacklevel=2,
        )
    return {"batch": batch, "img_size": img_size, **res, "noisy": noisy}
