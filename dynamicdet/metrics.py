"""Small numeric helpers at the bottom of the library (numpy, scipy and pandas only, nothing from dynamicdet).

- :func:`spearman`: rank correlation (router scores against losses, gains, difficulty);
- :func:`mix`: the cost of a dynamic model at hard fraction k, (1 - k) cost_easy + k cost_hard;
- :func:`static_frontier`: each point's AP gap to the static models' frontier along one cost;
- :func:`latency_checks`: the consistency rules a latency table must pass (same network, monotone, linear mix);
- :func:`interval` / :func:`verdict`: per-seed margins as a mean, a Student-t interval and a verdict.
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


def static_frontier(points: pd.DataFrame, static: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Where each point stands against the static models' accuracy-cost frontier.

    The frontier is the piecewise-linear curve through the static models in (cost, AP), sorted by
    cost and extended along its first and last segment beyond the ends (the paper's claim: a
    dynamic point beats the static models of the same cost). With fewer than two static models
    there is no line and ``AP_frontier`` is NaN.

    Args:
        points: one row per dynamic point, columns ``model``, ``cost``, ``AP``.
        static: the static models, columns ``model``, ``cost``, ``AP``.
        cost: the cost column (lower is cheaper): ``GFLOPs``, ``latency_ms_b1``, ...

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
        # segment i joins static models i and i+1; points left of the first (right of the last) use the end segments
        i = np.clip(np.searchsorted(x, c) - 1, 0, len(x) - 2)
        # AP_frontier = y_i + (c - x_i) (y_{i+1} - y_i) / (x_{i+1} - x_i)
        out["AP_frontier"] = y[i] + (c - x[i]) * (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    out["gap"] = out["AP"] - out["AP_frontier"]
    return out


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


def interval(margins: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, standard deviation and 95% interval of per-seed margins (Student's t; NaN for one seed).

    Args:
        margins: (S,) one value per seed.

    Returns:
        ``(mean, std, ci95 lo, ci95 hi)``.
    """
    from scipy import stats  # deferred: scipy.stats takes about 1.5 s to import and only the intervals need it

    m = np.asarray(margins, dtype=float)
    mean = float(m.mean())
    if len(m) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(m.std(ddof=1))
    # mean +- t_{0.975, n-1} sd / sqrt(n)
    half = float(stats.t.ppf(0.975, len(m) - 1)) * sd / math.sqrt(len(m))
    return mean, sd, mean - half, mean + half


def verdict(margins: np.ndarray) -> str:
    """The verdict of per-seed margins (value - bar, >= 0: the claim holds in that seed).

    ``reproduced`` when the 95% interval lies above 0, ``not reproduced`` when it lies below 0,
    ``inconclusive`` when it straddles 0; with one seed, the sign of its margin decides.
    """
    mean, _, lo, hi = interval(margins)
    if len(margins) < 2:
        return "reproduced" if mean >= 0 else "not reproduced"
    if lo > 0:
        return "reproduced"
    return "not reproduced" if hi < 0 else "inconclusive"
