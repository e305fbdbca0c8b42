"""Small numeric helpers at the bottom of the library (numpy, scipy and pandas only, nothing from dynamicdet).

- :func:`spearman`: rank correlation (router scores against losses, gains, difficulty);
- :func:`mix`: the cost of a dynamic model at hard fraction k, (1 - k) cost_easy + k cost_hard;
- :func:`static_frontier`: each point's AP gap to the static models' frontier along one cost;
- :func:`latency_checks`: the consistency rules a latency table must pass (same network, monotone, linear mix);
- :func:`dominance`: which static models a point dominates or is dominated by (no interpolation);
- :func:`interval`: per-run values as a mean and a Student-t interval, inside the values' range
  (Fisher z for correlations, logit for shares);
- :func:`superiority` / :func:`equivalence`: the verdict of per-run margins (the scorecard's
  standard of evidence, :mod:`dynamicdet.evaluation.evidence`), with :func:`seeds_needed`;
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-d arrays of the same length (average ranks for ties)."""
    a, b = pd.Series(np.asarray(a, dtype=float)), pd.Series(np.asarray(b, dtype=float))
    return float(a.rank().corr(b.rank()))


def mix(easy, hard, k):
    """Cost of a dynamic model sending a fraction ``k`` of its images to the hard route.

    The routes' costs mix linearly, as in the paper's latency rule and the authors' FLOPs table. Works
    elementwise on floats, numpy arrays and pandas Series alike.

    Args:
        easy: cost of the easy route (B1 + router + H1): GFLOPs or ms per image.
        hard: cost of the hard route (B1 + router + links + B2 + H2), same unit.
        k: hard fraction(s) in [0, 1].

    Returns:
        The mix, in the unit of ``easy`` and ``hard``.
    """
    # cost(k) = (1 - k) cost_easy + k cost_hard
    return (1 - k) * easy + k * hard


def static_frontier(points: pd.DataFrame, static: pd.DataFrame, cost: str, log_cost: bool = False) -> pd.DataFrame:
    """Where each point stands against the static models' accuracy-cost frontier.

    The frontier is the piecewise-linear curve through the static models in (cost, AP), sorted by
    cost and extended along its first and last segment beyond the ends (the paper's claim: a
    dynamic point beats the static models of the same cost). With fewer than two static models
    there is no line and ``AP_frontier`` is NaN.

    Args:
        points: one row per dynamic point, columns ``model``, ``cost``, ``AP``.
        static: the static models, columns ``model``, ``cost``, ``AP``.
        cost: the cost column (lower is cheaper): ``GFLOPs``, ``latency_ms_b1``, ...
        log_cost: interpolate AP linearly in log(cost) instead of cost (costs must be > 0): model
            scales grow in cost geometrically, and AP is closer to linear in their log.

    Returns:
        ``points``' ``model``, ``cost``, ``AP`` with ``AP_frontier`` (the frontier's AP at that
        cost) and ``gap`` = AP - AP_frontier (>= 0: on or above the frontier).
    """
    for name, df in (("points", points), ("static", static)):
        missing = {"model", cost, "AP"} - set(df.columns)
        if missing:
            raise ValueError(f"static_frontier: {name} lacks columns {sorted(missing)}")
    s = static.sort_values(cost)
    x, y = s[cost].to_numpy(float), s["AP"].to_numpy(float)
    out = points[["model", cost, "AP"]].reset_index(drop=True).copy()
    if len(s) < 2:
        out["AP_frontier"] = np.nan
    else:
        c = out[cost].to_numpy(float)
        if log_cost:
            if (x <= 0).any() or (c <= 0).any():
                raise ValueError(f"static_frontier: log_cost needs {cost} > 0")
            x, c = np.log(x), np.log(c)
        # segment i joins static models i and i+1; points left of the first (right of the last) use the end segments
        i = np.clip(np.searchsorted(x, c) - 1, 0, len(x) - 2)
        # AP_frontier = y_i + (c - x_i) (y_{i+1} - y_i) / (x_{i+1} - x_i), c and x in cost or in log(cost)
        out["AP_frontier"] = y[i] + (c - x[i]) * (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    out["gap"] = out["AP"] - out["AP_frontier"]
    return out


def dominance(points: pd.DataFrame, static: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Which static models each point is dominated by, and which it dominates: no interpolation.

    A static model at lower or equal cost and higher AP places the point below any frontier
    (``dominated_by``); the point dominates a static model it beats at lower cost (``dominates``).
    Works with a single static model, where :func:`static_frontier` has no line.

    Returns:
        ``points``' ``model`` with ``dominated_by`` and ``dominates``: tuples of static model names.
    """
    sc, sa, names = static[cost].to_numpy(float), static["AP"].to_numpy(float), list(static["model"])
    rows = []
    for m, c, ap in zip(points["model"], points[cost].astype(float), points["AP"].astype(float), strict=True):
        by = tuple(n for n, x, y in zip(names, sc, sa, strict=True) if x <= c and y > ap)
        over = tuple(n for n, x, y in zip(names, sc, sa, strict=True) if c < x and ap > y)
        rows.append((m, by, over))
    return pd.DataFrame(rows, columns=["model", "dominated_by", "dominates"])


# the latency table's consistency checks (see latency_checks): bounds that hold on a quiet machine
SAME_NETWORK = (0.97, 1.08)  # Dy /0 / the static model of the same architecture (+ a router of about 2%)
MONOTONE_TOL = 0.02  # t(/k') >= (1 - tol) t(/k) for k' > k
LINEAR_TOL = 0.05  # |t(/k) / ((1 - k) t(/0) + k t(/100)) - 1| <= tol


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
            rows.append((b, check, model, value, lo, hi, bool(lo <= value <= hi), decides))  # the columns below

        t0, t1 = t[dy[0]], t[dy[-1]]
        if same_static is not None and same_static in t.index:
            add("same network", dy[0], t0 / t[same_static], *SAME_NETWORK)
        for prev, m in itertools.pairwise(dy):
            add("non-decreasing", m, t[m] / t[prev], 1 - MONOTONE_TOL, np.inf)
        for m in dy[1:-1]:
            # the linear mix of the two routes: (1 - k) t(/0) + k t(/100)
            add("linear mix", m, t[m] / mix(easy=t0, hard=t1, k=k_timed[m]), 1 - LINEAR_TOL, 1 + LINEAR_TOL)
    return pd.DataFrame(rows, columns=["batch", "check", "model", "value", "lo", "hi", "passed", "decides"])


MIN_RUNS = 3  # a verdict needs this many independent runs; fewer carry their margin and no verdict word
RUN_WORDS = {1: "one run", 2: "two runs"}
SEEDS_CAP = 100  # seeds_needed looks no further: "> 100 seeds"
_EPS = 1e-6  # bounded values are clipped this far inside their range before the transform (a share of 0 or 1)


def _forward(values, transform: str | None) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if transform is None:
        return v
    if transform == "fisher":  # correlations in [-1, 1]: z = atanh(r)
        return np.arctanh(np.clip(v, -1 + _EPS, 1 - _EPS))
    if transform == "logit":  # shares in [0, 1]: z = log(p / (1 - p))
        p = np.clip(v, _EPS, 1 - _EPS)
        return np.log(p / (1 - p))
    raise ValueError(f"unknown transform {transform!r} (known: None, 'fisher', 'logit')")


def _back(z: float, transform: str | None) -> float:
    if transform == "fisher":
        return float(np.tanh(z))
    if transform == "logit":
        return float(1 / (1 + np.exp(-z)))
    return float(z)


def interval(values, level: float = 0.95, transform: str | None = None) -> tuple[float, float, float, float]:
    """Mean, standard deviation and Student-t interval of per-run values (NaN interval for one run).

    With a ``transform`` the interval is computed on the transformed values and mapped back, so it
    stays inside the values' range: ``"fisher"`` for correlations (z = atanh r, back with tanh),
    ``"logit"`` for shares in [0, 1]. The mean and standard deviation are of the raw values.

    Args:
        values: (S,) one value per run (seed).
        level: the interval's coverage (0.95; 0.90 for an equivalence test).
        transform: None, ``"fisher"`` or ``"logit"``.

    Returns:
        ``(mean, std, lo, hi)``.
    """
    from scipy import stats  # deferred: scipy.stats takes about 1.5 s to import and only the intervals need it

    m = np.asarray(values, dtype=float)
    mean = float(m.mean())
    if len(m) < 2:
        return mean, math.nan, math.nan, math.nan
    z = _forward(m, transform)
    # T(mean) +- t_{(1 + level) / 2, n-1} sd_T / sqrt(n), mapped back by the inverse transform
    half = float(stats.t.ppf((1 + level) / 2, len(m) - 1)) * float(z.std(ddof=1)) / math.sqrt(len(m))
    return mean, float(m.std(ddof=1)), _back(z.mean() - half, transform), _back(z.mean() + half, transform)


def seeds_needed(values, bar: float = 0.0, transform: str | None = None, cap: int = SEEDS_CAP) -> int | None:
    """How many runs would decide a superiority test at the observed mean and standard deviation.

    The smallest n with t_{0.975, n-1} sd / sqrt(n) < |mean - bar| (on the transformed scale when
    ``transform`` is given), or None when it is over ``cap`` (or the mean sits on the bar).
    """
    from scipy import stats  # deferred: see interval

    z = _forward(values, transform)
    gap, sd = abs(float(z.mean()) - float(_forward([bar], transform)[0])), float(z.std(ddof=1))
    for n in range(2, cap + 1):
        if float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) < gap:
            return n
    return None


def _against(lo: float, hi: float, effect: float) -> str:
    """Where the paper's effect stands against an interval: "" when the paper gives none."""
    if not math.isfinite(effect):
        return ""
    if hi < effect:
        return "excludes the paper's effect"
    if lo > effect:
        return "excludes the paper's effect (lies above it)"
    return "consistent with the paper's effect"


def superiority(values, bar: float = 0.0, effect: float = math.nan, transform: str | None = None) -> tuple[str, str]:
    """The verdict of a superiority claim (value - bar > 0) over runs, and its qualifier.

    With fewer than :data:`MIN_RUNS` runs: ``"one run"`` / ``"two runs"`` and no verdict. Else the
    95% interval of value - bar (:func:`interval`, in ``transform``) decides: ``reproduced`` above 0,
    ``contradicted`` below 0, ``not decided`` across it. The qualifier places the paper's
    ``effect`` (in the margin's units; NaN: not reported) against the interval and, when the
    interval excludes neither 0 nor the effect, says how many seeds would decide it
    (:func:`seeds_needed`).

    Args:
        values: (S,) per-run values; the margins themselves when ``bar`` is 0.
        bar: what the value must clear (a fixed number: with a ``transform`` the bar must be one).
        effect: the paper's margin.
        transform: None, ``"fisher"`` or ``"logit"`` (see :func:`interval`).

    Returns:
        ``(verdict, qualifier)``.
    """
    n = len(values)
    if n < MIN_RUNS:
        return RUN_WORDS.get(n, "not testable"), ""
    _, _, lo, hi = interval(values, transform=transform)
    lo, hi = lo - bar, hi - bar
    against = _against(lo, hi, effect)
    if lo > 0:
        return "reproduced", against
    if hi < 0:
        return "contradicted", against
    if against.startswith("excludes"):
        return "not decided", against
    need = seeds_needed(values, bar=bar, transform=transform)
    seeds = f"about {need} seeds would decide it" if need else f"> {SEEDS_CAP} seeds would decide it"
    return "not decided", "; ".join(q for q in (against, seeds) if q)


def equivalence(values, bound: float, center: float = 0.0, transform: str | None = None) -> tuple[str, str]:
    """The verdict of an "as good as" claim: two one-sided tests (TOST) of value - center within +-bound.

    ``reproduced`` when the 90% interval of value - center lies inside [-bound, +bound] (both
    one-sided t-tests reject at 5%); ``contradicted`` when the 95% interval lies entirely outside
    it; else ``not decided``. Fewer than :data:`MIN_RUNS` runs: ``"one run"`` / ``"two runs"``.

    Returns:
        ``(verdict, qualifier)``.
    """
    n = len(values)
    if n < MIN_RUNS:
        return RUN_WORDS.get(n, "not testable"), ""
    _, _, lo90, hi90 = interval(values, level=0.90, transform=transform)
    _, _, lo95, hi95 = interval(values, transform=transform)
    lo90, hi90, lo95, hi95 = lo90 - center, hi90 - center, lo95 - center, hi95 - center
    if -bound <= lo90 and hi90 <= bound:
        return "reproduced", f"90% interval inside +-{bound:g}"
    if hi95 < -bound or lo95 > bound:
        return "contradicted", f"95% interval outside +-{bound:g}"
    if hi90 < -bound or lo90 > bound:  # outside at 90%, not yet at 95%: say both, neither alone decides
        return "not decided", (
            f"90% interval [{lo90:+.3f}, {hi90:+.3f}] outside +-{bound:g}, 95% [{lo95:+.3f}, {hi95:+.3f}] reaches it"
        )
    return "not decided", f"90% interval [{lo90:+.3f}, {hi90:+.3f}] reaches beyond +-{bound:g}"
