"""The claims scorecard on fabricated results folders (no training): reading the tables, the columns,
the not-testable reasons, seeds and files. The verdict rules themselves: tests/test_verdicts.py."""

import math

import numpy as np
import pandas as pd
import pytest

from dynamicdet import metrics
from dynamicdet.evaluation import claims, evidence

ROUTER_ROWS = ["learned", "paper's router", "random", "confidence escalation", "oracle (L1-L2)", "oracle (AP gain)"]


def write(folder, stem, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / f"{stem}.csv", index=False)


def results(folder, ap1=0.60, ap2=0.64, c50=0.80, rand=0.50, esc=0.60, statics=2, share=0.5, rho=0.9, ts_ap=0.6):
    """A results folder in the formats the notebooks write; ``statics``: 1 (yolov8n), 2 (+ yolov8s), 3 (+ yolov8ns)."""
    write(
        folder, "joint_training", {"detector": ["detector 1 (B1 + H1)", "detector 2 (B1 -> B2 + H2)"], "AP": [ap1, ap2]}
    )
    static = ["yolov8n (static)", "yolov8s (static)", "yolov8ns (static)"][:statics]
    vs = {
        "model": ["Dy /0", "Dy /50", "Dy /90", "Dy /100", *static],
        "GFLOPs": [0.73, 0.88, 1.00, 1.03, 0.728, 2.56, 1.10][: 4 + statics],
        "latency_ms_b1": [20.0, 25.0, 29.0, 30.0, 19.5, 40.0, 31.0][: 4 + statics],
        "AP": [ap1, ap1 + c50 * (ap2 - ap1), ap1 + 0.95 * (ap2 - ap1), ap2, 0.61, 0.70, 0.63][: 4 + statics],
    }
    write(folder, "variable_speed", vs)
    c = [c50, c50, rand, esc, 0.9, 0.95]
    cr = {"router": ROUTER_ROWS, "c(0)": [0.0] * 6, "c(0.1)": [0.2] * 6, "c(0.5)": c, "c(0.9)": [0.9] * 6}
    write(folder, "capture_ratio", {**cr, "c(1)": [1.0] * 6})
    write(
        folder,
        "router_variants",
        {"router": ["default", "paper"], "overrides": ["{}", "{...}"], "val phi > 0.5": share},
    )
    write(
        folder,
        "difficulty_correlation",
        {
            "attribute": ["difficulty", "n_objects"],
            "Spearman corr. with phi": [rho, 0.5],
            "Spearman corr. with phi (paper's router)": [rho, 0.5],
        },
    )
    for kind in ("faster_rcnn", "mask_rcnn"):
        models = ["static resnet18", "static resnet34", "Dy /0", "Dy /50", "Dy /90", "Dy /100"]
        aps = [ts_ap, ts_ap + 0.01, ts_ap + 0.005, ts_ap + 0.012, ts_ap + 0.015, ts_ap + 0.016]
        write(folder, f"two_stage_{kind}", {"model": models, "AP": aps})
    return folder


def by_claim(df):
    return df.set_index("claim")


def test_one_run_carries_its_margins_and_no_verdict(tmp_path):
    df = by_claim(claims.claims_table(results(tmp_path / "standard")))
    assert list(df.reset_index().columns) == evidence.COLUMNS
    assert len(df) == len(claims.CLAIMS) and df.index.is_unique
    row = df.loc["detector 2 beats detector 1"]
    assert row["margin"] == pytest.approx(0.04) and row["verdict"] == "one run" and row["qualifier"] == ""
    assert row["paper effect"] == "+0.025 (2.5 AP)" and row["evidence"] == "results/standard/joint_training.csv"
    # in AP: (c 0.80 - random 0.50) x detector 2's lead 0.04
    random = df.loc["the router beats random routing at /50"]
    assert random["margin"] == pytest.approx(0.012) and random["this run"] == pytest.approx(0.60 + 0.80 * 0.04)
    assert random["paper effect"] == "+0.0065 (0.65 AP)"  # (0.76 - 0.5) x 2.5 AP
    # c(0.5) 0.80 against the paper's 0.76 (bar 0.71)
    assert df.loc["/50 keeps about three quarters of detector 2's gain", "margin"] == pytest.approx(
        0.80 - (claims.PAPER_C50 - claims.C50_TOLERANCE)
    )
    same = df.loc["joint training leaves detector 1 as good as a static model of its architecture"]
    assert same["margin"] == pytest.approx(-0.01) and same["verdict"] == "one run"  # detector 1 0.60, yolov8n 0.61
    assert set(df["verdict"]) <= {"one run", "not testable"} and (df["runs"] == 1).all()
    assert df["ci95 lo"].isna().all()


def test_c50_needs_a_lead_beyond_noise(tmp_path):
    # the quick run: detector 2 ahead by 0.010 and c(0.5) = 1.30, a ratio of two small numbers
    df = by_claim(claims.claims_table(results(tmp_path / "q", ap1=0.346, ap2=0.356, c50=1.30, rand=0.38)))
    row = df.loc["/50 keeps about three quarters of detector 2's gain"]
    assert row["verdict"] == "not testable" and "0.010" in row["note"]
    assert df.loc["/50 keeps about three quarters of detector 2's gain (paper's router)", "verdict"] == "not testable"
    # in AP the comparison keeps its sign and scale: (1.30 - 0.38) x 0.010
    assert df.loc["the router beats random routing at /50", "margin"] == pytest.approx(0.0092)


def test_a_negative_lead_does_not_turn_the_router_comparisons_around(tmp_path):
    # the quick run: detector 2 trails by 0.005, so a higher c(0.5) is a lower AP
    df = by_claim(claims.claims_table(results(tmp_path / "q", ap1=0.300, ap2=0.295, c50=0.50, rand=0.54, esc=-0.35)))
    random, escalation = (df.loc[f"the router beats {b} at /50"] for b in ("random routing", "confidence escalation"))
    assert random["margin"] == pytest.approx(0.0002) and random["margin"] > 0  # AP 0.2975 against 0.2973
    assert escalation["margin"] == pytest.approx(-0.00425) and escalation["margin"] < 0  # against 0.30175


def test_a_router_worse_than_random_over_seeds_is_contradicted(tmp_path):
    seeds = [results(tmp_path / f"s{i}", c50=c, rand=0.53) for i, c in enumerate([0.46, 0.45, 0.47])]
    row = by_claim(claims.claims_table(seeds)).loc["the router beats random routing at /50"]
    assert row["verdict"] == "contradicted" and row["margin"] == pytest.approx(-0.07 * 0.04)
    assert row["qualifier"] == "excludes the paper's effect"  # the paper's c(0.5) beats random by about 0.26


def test_not_testable_rows_say_why(tmp_path):
    folder = results(tmp_path / "quick", statics=1, ts_ap=0.01)
    (folder / "difficulty_correlation.csv").unlink()
    df = by_claim(claims.claims_table(folder))
    front = df.loc["Dy /50 on or above the static frontier, by latency (batch 1)"]
    assert front["verdict"] == "not testable" and "needs two" in front["note"]
    assert math.isnan(front["margin"])
    assert "not written" in df.loc["hard images are the crowded, small, occluded, cluttered ones", "note"]
    two = df.loc["two-stage: Dy /90 at or above the deeper static trunk"]
    assert two["verdict"] == "not testable" and "learned" in two["note"]
    head = df.loc["Dy /50 has more AP at less cost than yolov8ns (static), by GFLOPs"]
    assert head["verdict"] == "not testable" and "'yolov8ns (static)'" in head["note"]
    assert "not testable" in claims.to_markdown(claims.claims_table(folder))
    # read back from its CSV, as README's table is rendered: empty notes and qualifiers stay empty
    claims.claims_table(results(tmp_path / "full")).to_csv(tmp_path / "claims.csv", index=False)
    md = claims.to_markdown(pd.read_csv(tmp_path / "claims.csv"))
    assert "nan" not in md and md.rstrip().endswith(evidence.INTERVALS)


def test_an_old_scorecard_must_be_regenerated(tmp_path):
    # results/<config>/claims.csv written before these rules (columns seeds, verdict, note, no qualifier)
    old = pd.DataFrame({"claim": ["a"], "paper": ["p"], "this run": [0.05], "margin": [0.05], "seeds": [3]})
    with pytest.raises(ValueError, match="written before these verdict rules .*regenerate it"):
        claims.to_markdown(old)


def test_a_latency_verdict_needs_a_consistent_latency_table(tmp_path):
    folder = results(tmp_path / "q")
    vs = pd.read_csv(folder / "variable_speed.csv")
    vs["consistent"] = [False, True, True, False, False, True]  # Dy /0 timed under its own network
    vs.to_csv(folder / "variable_speed.csv", index=False)
    df = by_claim(claims.claims_table(folder))
    assert "consistency" in df.loc["Dy /50 on or above the static frontier, by latency (batch 1)", "note"]
    assert df.loc["Dy /50 on or above the static frontier, by GFLOPs", "verdict"] != "not testable"


def test_a_table_without_the_column_is_not_testable(tmp_path):
    # smoke: both detectors tie, c(k) is NaN everywhere and the pivot drops the column
    folder = results(tmp_path / "smoke")
    pd.DataFrame({"router": ["learned", "random"], "c(0)": [0.0, 0.0]}).to_csv(
        folder / "capture_ratio.csv", index=False
    )
    df = by_claim(claims.claims_table(folder))
    row = df.loc["the router beats random routing at /50"]
    assert row["verdict"] == "not testable" and "c(0.5)" in row["note"]


def test_balance_is_an_equivalence_test_around_half(tmp_path):
    seeds = [results(tmp_path / f"s{i}", share=s) for i, s in enumerate([0.68, 0.70, 0.69])]
    row = by_claim(claims.claims_table(seeds)).loc[
        "the adaptive offset balances the routes without a tuned hyperparameter"
    ]
    assert row["this run"] == pytest.approx(0.69) and row["margin"] == pytest.approx(0.19)
    assert row["ci95 lo"] > claims.BALANCE_TOLERANCE  # the 95% interval of the share lies above 0.6
    assert row["verdict"] == "contradicted" and np.isfinite(row["ci90 lo"])


def test_seeds_give_intervals_and_interval_verdicts(tmp_path):
    seeds = [
        results(tmp_path / f"s{i}", ap2=0.60 + d, c50=c)
        for i, (d, c) in enumerate([(0.03, 0.8), (0.04, 0.5), (0.05, 0.2)])
    ]
    df = by_claim(claims.claims_table(seeds))
    gain = df.loc["detector 2 beats detector 1"]
    assert gain["runs"] == 3 and gain["margin"] == pytest.approx(0.04)
    assert gain["std"] == pytest.approx(0.01)
    assert 0 < gain["ci95 lo"] < 0.04 < gain["ci95 hi"]
    assert gain["verdict"] == "reproduced"
    # c(0.5) 0.8 / 0.5 / 0.2 against random 0.5: mean margin 0, an interval across 0
    assert df.loc["the router beats random routing at /50", "verdict"] == "not decided"
    assert "[" in claims.to_markdown(claims.claims_table(seeds))


def test_interval_is_students_t():
    mean, sd, lo, hi = metrics.interval(np.array([1.0, 2.0, 3.0]))
    assert (mean, sd) == (2.0, 1.0)
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t_{0.975, 2}
    assert math.isnan(metrics.interval(np.array([1.0]))[2])
    assert metrics.superiority(np.array([-0.1, -0.2, -0.15]))[0] == "contradicted"


def test_the_frontier_claims_read_their_own_cost_column(tmp_path):
    folder = results(tmp_path / "q")
    vs = pd.read_csv(folder / "variable_speed.csv")
    # batch 8: Dy /50 cheap (above the line); onnxruntime: Dy /50 slow (under it), and its table failed a check
    vs["latency_ms_b8"] = [7.0, 8.0, 11.0, 12.0, 7.0, 20.0]
    vs["latency_ms_onnx_b1"] = [12.0, 30.0, 19.0, 20.0, 12.0, 25.0]
    vs["consistent_onnx"] = True
    vs.to_csv(folder / "variable_speed.csv", index=False)
    df = by_claim(claims.claims_table(folder))
    b8 = df.loc["Dy /50 on or above the static frontier, by latency (batch 8)"]
    # frontier at 8 ms: 0.61 + (8 - 7) (0.70 - 0.61) / 13; Dy /50 AP 0.60 + 0.8 * 0.04
    assert b8["margin"] == pytest.approx(0.632 - (0.61 + 0.09 / 13))
    # in log cost: 0.61 + 0.09 log(8 / 7) / log(20 / 7)
    assert f"{0.632 - (0.61 + 0.09 * math.log(8 / 7) / math.log(20 / 7)):+.3f}" in b8["note"]
    onnx = df.loc["Dy /50 on or above the static frontier, by onnxruntime latency (batch 1)"]
    # 30 ms is past yolov8s (25 ms, AP 0.70): yolov8s is cheaper and better, Dy /50 is dominated
    assert onnx["margin"] == pytest.approx(0.632 - (0.61 + 18 * 0.09 / 13))
    assert onnx["verdict"] == "one run" and onnx["qualifier"] == "dominated by yolov8s (static) in 1 of 1 runs"
    vs["consistent_onnx"] = [False, True, True, False, False, True]
    vs.to_csv(folder / "variable_speed.csv", index=False)
    df = by_claim(claims.claims_table(folder))
    onnx_claim = "Dy /50 on or above the static frontier, by onnxruntime latency (batch 1)"
    assert "consistent_onnx" in df.loc[onnx_claim, "note"]
    assert df.loc["Dy /50 on or above the static frontier, by latency (batch 8)", "verdict"] != "not testable"
    # a table without the onnxruntime column (an older run): that row alone is not testable
    vs.drop(columns=["latency_ms_onnx_b1", "consistent_onnx"]).to_csv(folder / "variable_speed.csv", index=False)
    df = by_claim(claims.claims_table(folder))
    assert (
        "no figures in column"
        in df.loc["Dy /50 on or above the static frontier, by onnxruntime latency (batch 1)", "note"]
    )


def test_the_papers_frontier_gaps_are_derived_from_its_table():
    rules = {c.name: c.rule for c in claims.CLAIMS}
    rule = rules["Dy /50 on or above the static frontier, by GFLOPs"]
    # 53.3 - (51.4 + (143.2 - 104.7) (53.1 - 51.4) / (189.9 - 104.7)) = 1.13 AP
    assert rule.effect == pytest.approx((53.3 - (51.4 + 38.5 * 1.7 / 85.2)) / 100)
    assert evidence.effect_text(rule).startswith("+0.011 (1.1 AP)")
    assert rules["Dy /50 has more AP at less cost than yolov8ns (static), by GFLOPs"].effect == pytest.approx(0.002)
    assert math.isnan(rules["Dy /50 on or above the static frontier, by latency (batch 8)"].effect)  # not reported


def test_a_seed_that_cannot_test_a_claim_makes_it_not_testable_over_the_seeds(tmp_path):
    # quick seeds: detector 2 ahead in two seeds, behind in one; c(0.5) is a share only with a lead
    seeds = [results(tmp_path / f"s{i}", ap1=0.26, ap2=0.26 + d) for i, d in enumerate([0.05, -0.04, 0.03])]
    df = by_claim(claims.claims_table(seeds))
    row = df.loc["/50 keeps about three quarters of detector 2's gain"]
    assert row["verdict"] == "not testable" and row["note"].startswith("s1 (2 of 3):")  # names the seed's folder
    assert math.isnan(row["margin"]) and math.isnan(row["this run"])
    assert df.loc["detector 2 beats detector 1", "verdict"] == "not decided"


def test_two_stage_claims_over_seeds_read_the_configs_own_run(tmp_path):
    # the seeds' folders hold no two-stage tables: those models are trained once per config
    base = results(tmp_path / "standard", ts_ap=0.4)
    seeds = [results(tmp_path / "standard" / "seeds" / f"seed{i}", ap2=0.63 + 0.01 * i) for i in range(3)]
    for s in seeds:
        for kind in ("faster_rcnn", "mask_rcnn"):
            (s / f"two_stage_{kind}.csv").unlink()
    df = by_claim(claims.claims_table(seeds, base=base))
    ts = df.loc["two-stage: Dy /50 at or above the deeper static trunk"]
    assert ts["runs"] == 1 and ts["verdict"] == "one run" and ts["margin"] == pytest.approx(0.002)
    assert ts["note"] == "trained once per config, not per seed"
    assert ts["evidence"].endswith("standard/two_stage_faster_rcnn.csv") and ts["paper effect"] == "+0.001 (0.1 AP)"
    assert math.isnan(ts["ci95 lo"])
    assert df.loc["detector 2 beats detector 1", "runs"] == 3
    # without a base, the first seed's folder is read: no two-stage table there
    no_base = by_claim(claims.claims_table(seeds))
    assert no_base.loc["two-stage: Dy /50 at or above the deeper static trunk", "verdict"] == "not testable"
    assert "one run" in claims.to_markdown(claims.claims_table(seeds, base=base))


def test_write_claims_scores_over_the_seeds_a_results_folder_has(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    out = results(tmp_path / "standard")
    one = by_claim(claims.write_claims("standard"))
    assert (one["runs"] == 1).all()  # no seeds: the run's own tables
    for i, lead in enumerate([0.02, 0.03, 0.04]):
        results(out / "seeds" / f"seed{i}", ap2=0.60 + lead)
    (out / "seeds_provenance.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    df = by_claim(claims.write_claims("standard"))
    assert df.loc["detector 2 beats detector 1", "runs"] == 3
    assert df.loc["detector 2 beats detector 1", "margin"] == pytest.approx(0.03)
    assert df.loc["two-stage: detector 2 beats detector 1 (Faster R-CNN)", "runs"] == 1
    assert pd.read_csv(out / "claims.csv")["runs"].max() == 3
    assert (out / "claims.md").read_text().rstrip().endswith(evidence.INTERVALS)
    (out / "seeds_provenance.json").write_text(json.dumps({"seeds": [0, 1, 2, 3]}))
    with pytest.raises(FileNotFoundError, match="seeds_provenance.json: seed folders missing"):
        claims.write_claims("standard")


def test_notebook_claims_keep_their_notebooks_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    results(tmp_path / "quick")
    df = claims.notebook_claims("quick", "04")
    assert list(df["claim"]) == [c.name for c in claims.CLAIMS if c.notebook == "04"]
    assert {"paper effect", "verdict", "qualifier", "runs"} <= set(df.columns)


def test_notebook_claims_are_the_scorecards_rows_over_the_seeds_where_the_folder_has_seeds(tmp_path, monkeypatch):
    import json

    from dynamicdet.evaluation.results import over_seeds, verdict_text

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    out = results(tmp_path / "standard", ap2=0.70)  # this run (seed 0, the notebooks' own tables): lead +0.10
    for i, lead in enumerate((0.02, 0.03, 0.04)):
        results(out / "seeds" / f"seed{i}", ap2=0.60 + lead)
    (out / "seeds_provenance.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    claims.write_claims("standard")
    written = pd.read_csv(out / "claims.csv", dtype={"notebook": str})
    rows = claims.notebook_claims("standard", "02")
    assert rows["margin"].iloc[0] == pytest.approx(0.03) and rows["runs"].iloc[0] == 3  # the seeds', not this run's
    assert claims.to_markdown(rows) == claims.to_markdown(written[written["notebook"] == "02"])  # as claims.csv
    assert "over 3 seeds, margin +0.030 (95% interval" in verdict_text(rows.iloc[0])
    assert over_seeds(rows.iloc[0]) == " on average over 3 seeds"
    once = claims.notebook_claims("standard", "08").iloc[0]
    assert over_seeds(once) == ""  # trained once: this run's own
    # measured once is a status, not an outcome: the words say there is no verdict
    assert verdict_text(once) == "measured in *one run*, no verdict (a verdict needs 3 seeds)"
    equivalent = claims.notebook_claims("standard", "06").set_index("claim").iloc[0]
    assert "90% interval" in verdict_text(equivalent)  # an equivalence claim: TOST's 90% interval


def test_the_router_claims_read_a_notebooks_descriptive_row_labels(tmp_path):
    # notebook 04 and 06 name their rows at length; the seed tables use the short names
    folder = results(tmp_path / "run", share=0.52)
    write(
        folder,
        "router_variants",
        {
            "router": ["default: target L1, 1 un-augmented view", "paper: target L1 - L2, 2 augmented views"],
            "overrides": ["{}", "{...}"],
            "val phi > 0.5": [0.52, 0.77],
        },
    )
    cap = pd.read_csv(folder / "capture_ratio.csv")
    cap["router"] = cap["router"].replace({"paper's router": "learned, paper's router (L1 - L2, augmented views)"})
    cap.to_csv(folder / "capture_ratio.csv", index=False)
    df = by_claim(claims.claims_table(folder))
    balance = "the adaptive offset balances the routes without a tuned hyperparameter"
    assert df.loc[balance, "this run"] == pytest.approx(0.52)
    assert df.loc[f"{balance} (paper's router)", "this run"] == pytest.approx(0.77)
    assert df.loc["the router beats random routing at /50 (paper's router)", "verdict"] == "one run"


def test_routings_in_words_name_a_routes_fraction_and_quote_the_paper_only_where_c_means_something():
    # detector 2 leads by 0.10: c(0.5) 0.70 -> AP 0.470, random 0.50 -> 0.450
    text = claims.capture_in_words(
        {"the router": 0.70, "random routing": 0.50}, 0.40, 0.50, hard_fraction={"the router": 0.48}, paper_c50=0.76
    )
    assert "the router 0.4700" in text and "random routing 0.4500" in text
    assert "(The paper: c(0.5) = 0.76.)" in text
    # a fraction of 0.48 instead of 0.50: named, with what it can account for
    assert "sent 0.480 of images" in text and "sent 0.480 rather than 0.500" in text
    assert "The other routings split exactly half: an AP difference within |k - 0.5| times the lead" in text
    # one image of 200 off half is named, to the image
    assert "sent 0.495 of images" in claims.capture_in_words(
        {"the router": 0.70, "random routing": 0.50}, 0.40, 0.50, hard_fraction={"the router": 0.495}
    )
    assert "the router is above random routing (by +0.0200)" in text
    # a lead under MIN_LEAD: c(k) measures nothing, the paper's c is not quoted, fractions of exactly half not named
    small = claims.capture_in_words(
        {"the router": 0.2, "random routing": 0.6}, 0.40, 0.405, hard_fraction={"the router": 0.5}, paper_c50=0.76
    )
    assert "measures nothing" in small and "The paper" not in small and "sent" not in small
    assert "not above random routing (by -0.0020)" in small


def test_the_scorecard_says_where_a_margin_changes_sign_at_twice_the_epochs(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    out = results(tmp_path / "standard", ap2=0.70)
    for i in range(3):  # detector 2 ahead on every seed at the config's epochs
        results(out / "seeds" / f"seed{i}", ap1=0.60, ap2=0.64)
    (out / "seeds_provenance.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    written = by_claim(claims.write_claims("standard"))
    assert "sign differs at 2x epochs" not in written  # no seed0-2x tables: nothing to compare
    results(out / "seeds" / "seed0-2x", ap1=0.70, ap2=0.69)  # behind at twice the epochs
    written = by_claim(claims.write_claims("standard"))
    flags = written["sign differs at 2x epochs"]
    assert (
        flags["detector 2 beats detector 1"]
        and not flags["hard images are the crowded, small, occluded, cluttered ones"]
    )
    text = (out / "claims.md").read_text()
    assert text.count("at 2x epochs (first seed, one run) the margin changes sign") == flags.sum() >= 1
    # the notebooks' rows read the same, and a bool column read back from the CSV keeps its meaning
    rows = claims.notebook_claims("standard", "02")
    back = pd.read_csv(out / "claims.csv", dtype={"notebook": str})
    assert claims.to_markdown(rows) == claims.to_markdown(back[back["notebook"] == "02"])
    assert "margin changes sign" in claims.to_markdown(rows)


def test_the_evidence_column_names_the_file_under_results_wherever_the_results_root_is(tmp_path, monkeypatch):
    # `make nbval` executes the notebooks on a scratch copy of results/ outside the checkout: same evidence text
    import json

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path / "scratch" / "results"))
    out = results(tmp_path / "scratch" / "results" / "standard")
    for i in range(3):
        results(out / "seeds" / f"seed{i}")
    (out / "seeds_provenance.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    df = by_claim(claims.write_claims("standard"))
    assert df.loc["detector 2 beats detector 1", "evidence"] == "results/standard/seeds/seed0/joint_training.csv"
