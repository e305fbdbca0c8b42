"""The scorecard's standard of evidence, one rule per test, on tiny fabricated seed folders.

Each test writes only the tables its claim reads (the formats the notebooks write: see
``dynamicdet.evaluation.claims``) into ``tmp_path/seed<k>/`` and scores that one claim.
"""

import math

import numpy as np
import pandas as pd
import pytest

from dynamicdet.evaluation import claims

GAIN = "detector 2 beats detector 1"
SAME = "joint training leaves detector 1 as good as a static model of its architecture"
HARD = "hard images are the crowded, small, occluded, cluttered ones"
BALANCE = "the adaptive offset balances the routes without a tuned hyperparameter"
FRONTIER = "Dy /50 on or above the static frontier, by GFLOPs"
HEADLINE = "Dy /50 has more AP at less cost than yolov8ns (static), by GFLOPs"
RANDOM = "the router beats random routing at /50"


def seeds(tmp_path, stem, tables):
    """One folder per table in ``tables`` (a list of column dicts), ``stem.csv`` in each."""
    out = []
    for k, rows in enumerate(tables):
        folder = tmp_path / f"seed{k}"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(folder / f"{stem}.csv", index=False)
        out.append(folder)
    return out


def score(folders, name):
    return claims.claims_table(folders, [c for c in claims.CLAIMS if c.name == name]).iloc[0]


def gains(tmp_path, values):
    tables = [
        {"detector": ["detector 1 (B1 + H1)", "detector 2 (B1 -> B2 + H2)"], "AP": [0.5, 0.5 + g]} for g in values
    ]
    return seeds(tmp_path, "joint_training", tables)


def speed(tmp_path, rows_per_seed):
    """``variable_speed.csv`` per seed from ``{model: (GFLOPs, AP)}``."""
    tables = [
        {"model": list(rows), "GFLOPs": [c for c, _ in rows.values()], "AP": [a for _, a in rows.values()]}
        for rows in rows_per_seed
    ]
    return seeds(tmp_path, "variable_speed", tables)


def test_one_or_two_runs_carry_their_margin_and_no_verdict(tmp_path):
    one = score(gains(tmp_path / "a", [0.05]), GAIN)
    assert one["verdict"] == "one run" and one["margin"] == pytest.approx(0.05) and one["qualifier"] == ""
    two = score(gains(tmp_path / "b", [0.05, 0.06]), GAIN)
    assert two["verdict"] == "two runs" and two["margin"] == pytest.approx(0.055) and two["runs"] == 2
    same = score(speed(tmp_path / "c", [{"Dy /0": (0.73, 0.6), "yolov8n (static)": (0.73, 0.6)}] * 2), SAME)
    assert same["verdict"] == "two runs"  # an equivalence claim needs three runs too
    md = claims.to_markdown(claims.claims_table(gains(tmp_path / "d", [0.05, 0.06]), claims.CLAIMS[:1]))
    assert "two runs" in md and not any(w in md for w in ("reproduced", "contradicted", "not decided"))


def test_superiority_reproduced_above_zero_contradicted_below(tmp_path):
    up = score(gains(tmp_path / "up", [0.03, 0.04, 0.05]), GAIN)
    assert up["verdict"] == "reproduced" and up["ci95 lo"] > 0
    assert up["qualifier"] == "consistent with the paper's effect"  # the paper's +0.025 lies in [0.015, 0.065]
    down = score(gains(tmp_path / "down", [-0.03, -0.04, -0.05]), GAIN)
    assert down["verdict"] == "contradicted" and down["ci95 hi"] < 0


def test_not_decided_but_excluding_the_papers_effect(tmp_path):
    # mean 0.001, sd 0.003: [-0.0065, +0.0085] straddles 0 and lies below the paper's +0.025
    row = score(gains(tmp_path, [-0.002, 0.004, 0.001]), GAIN)
    assert row["verdict"] == "not decided" and row["qualifier"] == "excludes the paper's effect"
    assert row["ci95 hi"] < 0.025 and row["paper effect"] == "+0.025 (2.5 AP)"


def test_not_decided_consistent_with_the_paper_says_how_many_seeds_would_decide(tmp_path):
    # mean 0.01, sd 0.02, [-0.040, +0.060] holds 0 and +0.025. Seeds: t_{0.975, n-1} 0.02 / sqrt(n) < 0.01, i.e.
    # t / sqrt(n) < 0.5: n = 17 gives 2.1199 / 4.1231 = 0.514, n = 18 gives 2.1098 / 4.2426 = 0.497
    row = score(gains(tmp_path / "a", [0.01, -0.01, 0.03]), GAIN)
    assert row["verdict"] == "not decided"
    assert row["qualifier"] == "consistent with the paper's effect; about 18 seeds would decide it"
    wide = score(gains(tmp_path / "b", [0.001, -0.05, 0.052]), GAIN)  # mean 0.001, sd 0.051: beyond the cap
    assert wide["qualifier"].endswith("> 100 seeds would decide it")
    text = claims.to_markdown(claims.claims_table(gains(tmp_path / "c", [0.01, -0.01, 0.03]), claims.CLAIMS[:1]))
    assert "not decided: consistent with the paper's effect; about 18 seeds would decide it" in text


def test_as_good_as_is_an_equivalence_test(tmp_path):
    def runs(tmp, diffs):  # AP(Dy /0) - AP(yolov8n) per seed
        return speed(tmp, [{"Dy /0": (0.73, 0.6 + d), "yolov8n (static)": (0.728, 0.6)} for d in diffs])

    inside = score(runs(tmp_path / "in", [0.001, -0.002, 0.003]), SAME)
    # 90% interval: 0.00067 +- t_{0.95, 2} 0.00252 / sqrt(3) = +-0.0042, inside +-0.01
    assert inside["verdict"] == "reproduced" and -0.01 <= inside["ci90 lo"] < inside["ci90 hi"] <= 0.01
    assert inside["ci95 lo"] < inside["ci90 lo"]  # both intervals are kept
    below = score(runs(tmp_path / "out", [-0.03, -0.035, -0.04]), SAME)
    assert below["verdict"] == "contradicted" and below["ci95 hi"] < -0.01
    across = score(runs(tmp_path / "across", [0.0, -0.02, 0.01]), SAME)
    assert across["verdict"] == "not decided" and "beyond +-0.01" in across["qualifier"]
    assert "(90%)" in claims.to_markdown(claims.claims_table(runs(tmp_path / "md", [0.001, -0.002, 0.003])))


def test_a_spearman_interval_near_one_stays_at_most_one(tmp_path):
    def runs(tmp, rho):
        tables = [{"attribute": ["difficulty"], "Spearman corr. with phi": [r]} for r in rho]
        return seeds(tmp, "difficulty_correlation", tables)

    rho = [0.97, 0.98, 0.95]
    row = score(runs(tmp_path / "a", rho), HARD)
    # the plain t-interval would reach 0.967 + 4.303 0.0153 / sqrt(3) = 1.005; in Fisher z it stays inside [-1, 1]
    assert np.mean(rho) + 4.302653 * np.std(rho, ddof=1) / math.sqrt(3) > 1
    assert row["ci95 hi"] + claims.DIFFICULTY_BAR <= 1 and row["verdict"] == "reproduced"
    assert row["margin"] == pytest.approx(np.mean(rho) - claims.DIFFICULTY_BAR)
    # nearer 1, atanh spreads the values apart: the interval is wide, and still at most 1
    near = score(runs(tmp_path / "b", [0.99, 0.999, 0.95]), HARD)
    assert near["ci95 hi"] + claims.DIFFICULTY_BAR <= 1 and near["verdict"] == "not decided"


def test_a_share_interval_stays_in_zero_one(tmp_path):
    def runs(tmp, shares):
        tables = [{"router": ["default"], "overrides": ["{}"], "val phi > 0.5": [s]} for s in shares]
        return seeds(tmp, "router_variants", tables)

    low = score(runs(tmp_path / "low", [0.02, 0.3, 0.01]), BALANCE)  # the plain interval would go below 0
    assert 0 <= low["ci95 lo"] + 0.5 < low["ci95 hi"] + 0.5 <= 1 and 0 <= low["ci90 lo"] + 0.5
    assert low["verdict"] == "not decided"  # wide: neither inside 0.5 +- 0.1 nor wholly outside it
    even = score(runs(tmp_path / "even", [0.48, 0.52, 0.5]), BALANCE)
    assert even["verdict"] == "reproduced" and even["paper effect"] == "+0.00"


def test_frontier_linear_and_log_cost_must_agree(tmp_path):
    # statics at 1 and 4 GFLOPs (AP 0.6, 0.8), Dy /50 at 2: the line gives 0.667, the log-cost line 0.700
    rows = [
        {"Dy /50": (2.0, ap), "yolov8n (static)": (1.0, 0.6), "yolov8s (static)": (4.0, 0.8)}
        for ap in (0.68, 0.681, 0.679)
    ]
    row = score(speed(tmp_path, rows), FRONTIER)
    assert row["margin"] == pytest.approx(0.68 - (0.6 + 0.2 / 3))  # linear in cost: +0.013, reproduced
    assert row["verdict"] == "not decided"
    q = row["qualifier"]
    assert q.startswith("linear in cost +0.013 [") and "(reproduced), in log cost -0.020 [" in q
    assert q.endswith("(contradicted)")


def test_frontier_agreeing_in_both_costs_decides(tmp_path):
    rows = [
        {"Dy /50": (2.0, ap), "yolov8n (static)": (1.0, 0.6), "yolov8s (static)": (4.0, 0.8)}
        for ap in (0.72, 0.721, 0.719)
    ]
    row = score(speed(tmp_path, rows), FRONTIER)
    assert row["verdict"] == "reproduced" and "gap in log cost +0.020" in row["note"]
    assert row["qualifier"] == "excludes the paper's effect (lies above it)"  # above the paper's +0.011 in both


def test_a_frontier_gap_is_never_extrapolated_past_the_static_models(tmp_path):
    # statics at 1 and 1.5 GFLOPs, Dy /50 at 2: a gap would extend the last segment past yolov8ns
    rows = [
        {"Dy /50": (2.0, ap), "yolov8n (static)": (1.0, 0.6), "yolov8ns (static)": (1.5, 0.65)}
        for ap in (0.70, 0.71, 0.69)
    ]
    row = score(speed(tmp_path / "past", rows), FRONTIER)
    assert row["verdict"] == "not testable" and "is not within the static models' GFLOPs (1-1.5)" in row["note"]
    # dominated needs no line: a cheaper, better static model decides even out of range
    worse = [{**r, "Dy /50": (2.0, 0.62)} for r in rows]
    assert score(speed(tmp_path / "dominated", worse), FRONTIER)["verdict"] == "contradicted"
    # cheaper than every static model and more accurate than the cheapest: above any rising frontier
    cheap = [{**r, "Dy /50": (0.8, ap)} for r, ap in zip(rows, (0.62, 0.63, 0.61), strict=True)]
    row = score(speed(tmp_path / "cheap", cheap), FRONTIER)
    assert row["verdict"] == "reproduced" and "dominates yolov8n (static)" in row["note"]


def test_dominance_with_one_static_model(tmp_path):
    # yolov8n is cheaper than Dy /50 and better in every run: below any frontier, no line needed
    rows = [{"Dy /50": (0.88, ap), "yolov8n (static)": (0.73, 0.70)} for ap in (0.65, 0.66, 0.64)]
    row = score(speed(tmp_path / "all", rows), FRONTIER)
    assert row["verdict"] == "contradicted" and row["qualifier"] == "dominated by yolov8n (static) in 3 of 3 runs"
    assert "contradicted: dominated by yolov8n (static) in 3 of 3 runs" in claims.to_markdown(
        claims.claims_table(speed(tmp_path / "md", rows), [c for c in claims.CLAIMS if c.name == FRONTIER])
    )
    one = score(speed(tmp_path / "one", rows[:1]), FRONTIER)
    assert one["verdict"] == "one run" and one["qualifier"] == "dominated by yolov8n (static) in 1 of 1 runs"
    # dominated in two runs of three: no verdict without a line, and the row says what the runs show
    some = score(
        speed(tmp_path / "some", [*rows[:2], {"Dy /50": (0.88, 0.75), "yolov8n (static)": (0.73, 0.7)}]), FRONTIER
    )
    assert some["verdict"] == "not testable"
    assert "frontier needs two" in some["note"] and "dominated by yolov8n (static) in 2 of 3 runs" in some["note"]
    # a Dy point cheaper and better than a static model dominates it
    beats = [{"Dy /50": (0.88, 0.75), "yolov8s (static)": (2.56, 0.70)}] * 3
    assert "dominates yolov8s (static) in 3 of 3 runs" in score(speed(tmp_path / "beats", beats), FRONTIER)["note"]


def test_the_papers_router_row_present_and_missing(tmp_path):
    def runs(tmp, rows):
        tables = [{"router": list(r), "c(0.5)": list(r.values())} for r in rows]
        folders = seeds(tmp, "capture_ratio", tables)
        for f in folders:  # detector 2 leads by 0.04
            pd.DataFrame({"detector": ["detector 1", "detector 2"], "AP": [0.60, 0.64]}).to_csv(
                f / "joint_training.csv", index=False
            )
        return folders

    paper = f"{RANDOM} (paper's router)"
    present = runs(
        tmp_path / "a", [{"learned": c, "paper's router": c + 0.1, "random": 0.5} for c in (0.7, 0.72, 0.74)]
    )
    df = claims.claims_table(present, [c for c in claims.CLAIMS if c.name in (RANDOM, paper)]).set_index("claim")
    # in AP: c(0.5) over random's, times detector 2's lead
    lead = 0.04
    assert df.loc[RANDOM, "margin"] == pytest.approx(0.22 * lead) and df.loc[paper, "margin"] == pytest.approx(
        0.32 * lead
    )
    assert (df["verdict"] == "reproduced").all() and (df["paper effect"] == "+0.0065 (0.65 AP)").all()
    missing = runs(tmp_path / "b", [{"learned": c, "random": 0.5} for c in (0.7, 0.72, 0.74)])
    row = score(missing, paper)
    assert row["verdict"] == "not testable" and 'has no row router = "paper\'s router"' in row["note"]
    assert score(missing, RANDOM)["verdict"] == "reproduced"


def test_headline_cost_ratio_and_runs_where_dy_costs_more(tmp_path):
    rows = [
        {"Dy /50": (0.88, 0.65 + d), "yolov8ns (static)": (c, 0.64)}
        for d, c in ((0.01, 0.96), (0.012, 0.96), (0.011, 0.80))
    ]
    row = score(speed(tmp_path, rows), HEADLINE)
    assert row["verdict"] == "reproduced" and row["margin"] == pytest.approx(0.021)
    ratio = np.mean([0.88 / 0.96, 0.88 / 0.96, 0.88 / 0.80])
    assert row["note"] == f"cost Dy / static {ratio:.2f}x (mean of 3 runs); costs more in 1 of 3 runs"
    assert row["paper effect"] == "+0.002 (0.2 AP)" and "0.75x the cost" in row["paper"]
    cheap = score(speed(tmp_path / "cheap", rows[:1]), HEADLINE)
    assert cheap["verdict"] == "one run" and "costs more" not in cheap["note"]


def test_a_headline_where_dy_costs_more_in_every_run_is_contradicted_whatever_its_ap(tmp_path):
    # "more AP at less cost": Dy /50 1.2x yolov8ns's cost in every run, with more AP in every run
    rows = [{"Dy /50": (1.2, 0.65 + d), "yolov8ns (static)": (1.0, 0.64)} for d in (0.01, 0.012, 0.011)]
    row = score(speed(tmp_path, rows), HEADLINE)
    assert row["verdict"] == "contradicted" and row["margin"] == pytest.approx(0.021)
    # the paper's Dy /50 costs less than YOLOv7-X in GFLOPs (0.75x); by latency at batch 1 it costs more (1.09x);
    # at batch 8 the paper reports no cost: the qualifier says which
    assert row["qualifier"].startswith(
        "Dy costs more in every run (1.20x), the paper's less (0.75x); its AP margin alone: reproduced"
    )
    by = {
        "latency (batch 1)": "as the paper's does (1.09x)",
        "latency (batch 8)": "at a cost the paper does not report",
    }
    for cost, words in by.items():
        timed = [
            {"model": list(r), "GFLOPs": [1.0, 1.0], f"latency_ms_b{cost[-2]}": [c for c, _ in r.values()],
             "AP": [a for _, a in r.values()]}
            for r in rows
        ]  # fmt: skip
        q = score(seeds(tmp_path / cost, "variable_speed", timed), HEADLINE.replace("GFLOPs", cost))["qualifier"]
        assert q.startswith(f"Dy costs more in every run (1.20x), {words}; its AP margin alone: reproduced"), q
    # 1.5% more: GFLOPs are counted exactly (it costs more); a latency within its +-2% timing precision is a tie,
    # where the AP decides and the note says it costs more
    tie = [{"Dy /50": (1.015, 0.65 + d), "yolov8ns (static)": (1.0, 0.64)} for d in (0.01, 0.012, 0.011)]
    assert score(speed(tmp_path / "tie", tie), HEADLINE)["verdict"] == "contradicted"
    timed = [
        {
            "model": list(r),
            "GFLOPs": [1.0, 1.0],
            "latency_ms_b1": [c for c, _ in r.values()],
            "AP": [a for _, a in r.values()],
        }
        for r in tie
    ]
    row = score(
        seeds(tmp_path / "timed", "variable_speed", timed), HEADLINE.replace("by GFLOPs", "by latency (batch 1)")
    )
    assert row["verdict"] == "reproduced" and "costs more in 3 of 3 runs" in row["note"]
    # one run that costs more: a margin, no verdict
    assert score(speed(tmp_path / "one", rows[:1]), HEADLINE)["verdict"] == "one run"


def test_a_cost_measured_on_no_row_makes_its_claims_not_testable(tmp_path):
    # `seeds tables --no-timing` writes the latency columns empty: no verdict, no "nan" cost ratio
    rows = [
        {"model": ["Dy /50", "yolov8n (static)", "yolov8ns (static)"], "GFLOPs": [0.88, 0.73, 1.09],
         "latency_ms_b1": [math.nan] * 3, "AP": [0.67, 0.65, 0.68]}
        for _ in range(3)
    ]  # fmt: skip
    folders = seeds(tmp_path, "variable_speed", rows)
    for name in (
        HEADLINE.replace("by GFLOPs", "by latency (batch 1)"),
        "Dy /50 on or above the static frontier, by latency (batch 1)",
    ):
        row = score(folders, name)
        assert row["verdict"] == "not testable" and "has no figures in column latency_ms_b1" in row["note"], name
    assert score(folders, HEADLINE)["verdict"] != "not testable"  # GFLOPs are counted
