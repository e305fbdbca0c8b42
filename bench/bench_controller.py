"""Bench items 6 and 10: the latency controller (``make bench``, parts ``controller`` and ``disturbance``).

6. threshold controller, open loop: achieved / target latency for k in {0.1, 0.5, 0.9}, and 6b,
   achieved / the latency model on the same few images moments apart;
10. closed- vs open-loop latency through a quiet / loaded / quiet stream of val images
    (``experiments.controller.disturbed_stream``; the choice of its duty and target below).
"""

from __future__ import annotations

from dynamicdet.config import Config
from dynamicdet.experiments import target_latency, trained
from dynamicdet.experiments.controller import TARGET_K, disturbed_stream

# item 6b interleaves the compared streams every SEGMENT images (batch 1): pairs of calls moments apart
SEGMENT = 6


def bench_controller(cfg: Config, rounds: int = 3) -> list[dict]:
    """Item 6: threshold from a target latency, then measured route() latency on val images.

    Figures are medians over ``rounds`` rounds of :func:`experiments.target_latency` (the
    shared machine's speed swings from minute to minute: docs/design.md, timing noise).
    """
    demo = target_latency(trained(cfg, progress=False), rounds=rounds, progress=False, segment=SEGMENT)
    rows = []
    for _, r in demo.iterrows():
        where = (
            f"batch 1, a stream of {int(r['images'])} val images spread over the router's scores "
            f"(hard fraction {r['timed fraction hard']:.2f})"
        )
        for item, col, how in (
            (
                "6. achieved / target latency",
                "achieved / target",
                f"target {r['target ms/img']:.2f} ms from a calibration pass, achieved {r['achieved ms/img']:.2f} ms "
                f"in the next (rounds {r['achieved / target_min']:.3f}-{r['achieved / target_max']:.3f}); "
                f"median of {rounds} rounds",
            ),
            (
                "6b. achieved / latency model (same pass)",
                "achieved / model",
                "lat_easy + k_s (lat_hard - lat_easy) from the easy/hard passes over the same segment s of "
                f"{SEGMENT} images, timed in alternation with route(); median of {int(r['achieved / model_n'])} "
                f"per-segment ratios (every segment of every timing round of {rounds} rounds)",
            ),
        ):
            # open loop: a threshold calibrated in one pass cannot hold its target if the machine's speed
            # changes before the next (a shared machine); the goal is item 10's closed loop, and 6b checks
            # the latency model itself within one pass
            goal = item.startswith("6b")
            rows.append(
                {
                    "item": f"{item}, k={r['target k']}",
                    "value": float(r[col]),
                    "goal": "0.95-1.05" if goal else "report (goal: 6b and item 10)",
                    "mark": ("PASS" if 0.95 <= r[col] <= 1.05 else "MISS") if goal else "-",
                    "detail": f"{how}; {where}",
                }
            )
    return rows


# The competing process of item 10 (``experiments.controller.start_competitor``) spins this fraction
# of every 10 ms. A closed loop can only hold a target the routes can still reach: under a
# slow-down s it needs s lat_easy <= target <= s lat_hard, so s must stay within
# [target / lat_hard, target / lat_easy] (reported per row). Measured on the 2-core VM at quick,
# batch 8, easy stream, medians of 3 (torch on both cores, so a competitor stalls parallel
# regions): duty 0.02 slowed it 1.05x, 0.1 1.13x, 1 (one core taken; notebook 05's default)
# 3.6x. Duty 0.1 is a slow-down the routes can absorb: at batch 8 the hard route costs 1.4-1.5x
# the easy one, so a target at k from the calibration is reachable for s within about
# [(1 + 0.45 k) / 1.45, 1 + 0.45 k]. The target sits above the middle (k = 0.7: about 0.92x-1.32x)
# because the machine only slows down here: at k = 0.5 (0.84x-1.24x) the closed loop missed the
# loaded phase in both configs at 924476d (1.085 and 1.051 of the target), where the routes'
# times it measured put the all-easy stream at 1.03 and 1.01 of the target (the loaded phase ran
# 1.25x the calibration's easy time at quick: the competitor's 1.16x on a machine already 1.08x
# slower than at calibration). Rescaled to a target at k = 0.7, the routes' times the closed loop
# measured in every phase of those runs and of the runs at 1815123 put the all-easy stream at
# 0.74-0.96 and the all-hard one at 1.13-1.95 of the target: inside, both ways.
DISTURBANCE_DUTY = 0.1
DISTURBANCE_TARGET_K = TARGET_K  # 0.7, the library's (experiments.controller)


def bench_disturbance(
    cfg: Config, passes: int = 3, duty: float = DISTURBANCE_DUTY, target_k: float = DISTURBANCE_TARGET_K
) -> list[dict]:
    """Item 10: closed- vs open-loop latency through a quiet / loaded / quiet stream of val images."""
    out = disturbed_stream(
        trained(cfg, progress=False), batch=8, passes=passes, target_k=target_k, duty=duty, progress=False
    )
    cal = out["calibration"].iloc[0]
    if cal["noisy"]:  # the hard route timed no slower than the easy one: nothing to hold, recorded as such
        return [
            {
                "item": "10. calibration hard / easy ms/img, batch 8 (inverted: the loops were not run)",
                "value": float(cal["lat_hard ms/img"] / cal["lat_easy ms/img"]),
                "goal": "report",
                "mark": "-",
                "detail": "machine noise above the routes' difference during the calibration",
            }
        ]
    ph = out["phases"].set_index(["loop", "phase"])
    quiet_open = ph.loc[("open loop", "quiet"), "ms/img"]
    # slow-downs s (against the calibration) under which some hard fraction meets the target:
    # s lat_easy <= target <= s lat_hard; the open loop's achieved / target estimates s (its hard
    # fraction on the stream is close to, not exactly, the calibrated one)
    target = cal["target ms/img"]
    reach = f"{target / cal['lat_hard ms/img']:.2f}-{target / cal['lat_easy ms/img']:.2f}"

    def out_of_reach(c) -> str:  # no hard fraction meets the target within 5%: the routes' own times say so
        if c["lat_easy now"] > 1.05 * target:
            return " (out of reach: the all-easy stream alone was slower than the target)"
        if c["lat_hard now"] < 0.95 * target:
            return " (out of reach: the all-hard stream was faster than the target)"
        return ""

    rows = []
    for phase in ph.loc["closed loop"].index:
        c, o = ph.loc[("closed loop", phase)], ph.loc[("open loop", phase)]
        rows.append(
            {
                "item": f"10. closed-loop achieved / target, batch 8, {phase} phase",
                "value": float(c["achieved / target"]),
                "goal": "0.95-1.05",
                "mark": "PASS" if 0.95 <= c["achieved / target"] <= 1.05 else "MISS",
                "detail": f"target {c['target ms/img']:.2f} ms/img; open loop {o['achieved / target']:.3f} "
                f"(machine {o['ms/img'] / quiet_open:.2f}x the quiet open-loop time; a closed loop can reach the "
                f"target while the open loop's ratio is within {reach}); routes as the closed loop measured them "
                f"in this phase: easy {c['lat_easy now'] / target:.2f}, hard {c['lat_hard now'] / target:.2f} x the "
                f"target{out_of_reach(c)}; hard fraction closed "
                f"{c['fraction hard']:.2f} vs open {o['fraction hard']:.2f}; AP closed {c['AP']:.3f} vs open "
                f"{o['AP']:.3f}; {int(c['images'])} images; competing process duty {duty}, target at k = {target_k}",
            }
        )
    return rows
