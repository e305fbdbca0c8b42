"""README.md and docs/*.md: their tables are the results files' (generated, never typed)."""

import shlex
from pathlib import Path

import pandas as pd
import pytest

from dynamicdet import paths
from dynamicdet.evaluation import docs


@pytest.mark.parametrize("doc", docs.documents(), ids=lambda p: p.name)
def test_committed_doc_tables_match_their_results_files(doc):
    assert not docs.stale(doc), f"{doc.name}: tables differ from their sources; run `make docs`"


def test_every_doc_table_block_has_a_source_that_exists():
    for doc in docs.documents():
        for m in docs.BLOCK.finditer(doc.read_text()):
            path = paths.REPO_ROOT / shlex.split(m.group("spec"))[0]
            assert path.is_file(), f"{doc.name}: table block names {path}, which does not exist"


def test_render_regenerates_a_block_and_detects_drift(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    pd.DataFrame({"model": ["a", "b"], "AP": [0.5, 0.25], "x": [1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- table: t.csv columns=model,AP -->\nold\n<!-- /table -->\nend\n")
    assert docs.stale(doc) == ["t.csv columns=model,AP"]
    assert docs.update([doc]) == [doc]
    text = doc.read_text()
    assert "| a       | 0.500 |" in text and "| x" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert docs.stale(doc) == [] and docs.update([doc]) == []
    doc.write_text(text.replace("0.500", "0.600"))  # a hand-edited number
    assert docs.stale(doc) == ["t.csv columns=model,AP"]


def test_a_quoted_column_list_picks_columns_whose_names_have_spaces(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    pd.DataFrame({"router": ["a"], "spearman val L1": [0.9], "c(0.5)": [0.8], "x": [1]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    out = docs.render_source('t.csv columns="router,spearman val L1,c(0.5)"')
    assert [c.strip() for c in out.splitlines()[0].split("|")[1:-1]] == ["router", "spearman val L1", "c(0.5)"]
    assert "0.900" in out and "| x" not in out


def test_bad_blocks_get_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        docs.render_source("missing.csv")
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="no column"):
        docs.render_source("t.csv columns=b")
    with pytest.raises(ValueError, match="unknown option"):
        docs.render_source("t.csv cols=a")


def test_the_scorecard_in_words_counts_verdicts_and_speaks_ap_in_points():
    import pandas as pd

    from dynamicdet.evaluation.docs import claims_in_words

    df = pd.DataFrame(
        {
            "claim": ["detector 2 beats detector 1", "the router beats random routing at /50", "hard images"],
            "paper": ["+2.5 AP", "implied", "qualitative"],
            "paper effect": ["+0.025 (2.5 AP)", "+0.26", "not reported"],
            "bar": ["AP2 - AP1 > 0", "c(0.5) > random", "Spearman >= 0.5"],
            "margin": [0.054, 0.286, float("nan")],
            "ci95 lo": [-0.051, 0.130, float("nan")],
            "ci95 hi": [0.159, 0.442, float("nan")],
            "runs": [3, 3, 3],
            "verdict": ["not decided", "reproduced", "not testable"],
            "qualifier": ["consistent with the paper's effect", float("nan"), float("nan")],
            "note": [float("nan"), float("nan"), "no generator difficulty (real data)"],
            "sign differs at 2x epochs": [True, False, False],
        }
    )
    text = claims_in_words(df)
    assert text.startswith("Of the 3 claims in scope: 1 reproduced, 1 not decided, 1 not testable.")
    assert "here +5.4 AP [-5.1, +15.9] (95%) over 3 runs" in text  # AP margins in AP points
    assert "here +0.286 [+0.130, +0.442] (95%) over 3 runs" in text  # a capture ratio stays a fraction
    assert "- **hard images**: paper qualitative; *not testable* (no generator difficulty (real data))." in text
    assert text.count("At twice the epochs (seed 0) the margin changes sign.") == 1


def test_a_claim_in_several_cost_measures_or_for_both_routers_is_one_line_of_the_scorecard():
    import pandas as pd

    from dynamicdet.evaluation.docs import PAPER_ROUTER, ROUTER_CLAIM, claims_in_words

    nan = float("nan")
    frontier = "Dy /50 on or above the static frontier"
    df = pd.DataFrame(
        {
            "claim": [ROUTER_CLAIM, ROUTER_CLAIM + PAPER_ROUTER, f"{frontier}, by GFLOPs", f"{frontier}, by latency"],
            "paper": ["c(0.5) 0.76", "c(0.5) 0.76", "53.3 at 143G", "53.3 at 96 FPS"],
            "paper effect": ["+0.0065 (0.65 AP)"] * 2 + ["+0.011 (1.1 AP)", "-0.018 (-1.8 AP)"],
            "bar": [""] * 4,
            "margin": [0.012, -0.004, 0.003, nan],
            "ci95 lo": [0.002, -0.009, -0.001, nan],
            "ci95 hi": [0.022, 0.001, 0.007, nan],
            "runs": [7, 7, 7, 7],
            "verdict": ["reproduced", "not decided", "not decided", "not testable"],
            "qualifier": [nan, "excludes the paper's effect", nan, nan],
            "note": [nan, nan, nan, "no latency"],
        }
    )
    text = claims_in_words(df)
    assert text.startswith("Of the 4 claims in scope: 1 reproduced, 2 not decided, 1 not testable.")
    bullets = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert len(bullets) == 2  # one line per claim
    routers, costs = bullets
    # one paper text for both routers: said once, then each router's margin and verdict
    assert routers.startswith(f"- **{ROUTER_CLAIM}**: paper c(0.5) 0.76, effect +0.0065 (0.65 AP). The default router:")
    assert routers.count("paper c(0.5)") == 1 and "The paper's router: here -0.4 AP [-0.9, +0.1] (95%)" in routers
    # a paper figure per cost measure: each measure's sentence keeps its own
    assert "By GFLOPs: paper 53.3 at 143G, effect +0.011 (1.1 AP); here +0.3 AP" in costs
    assert "By latency: paper 53.3 at 96 FPS, effect -0.018 (-1.8 AP); *not testable* (no latency)." in costs


def test_readme_is_a_project_page_not_a_run_log():
    """README: at most 150 lines; the figure, the two commands and the scorecard in its first 60; no run numbers,
    commit hashes or goal talk (those live in results/main_job.md and docs/benchmarks.md)."""
    import re

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    head = "\n".join(lines[:60])
    assert "![" in head and "make reproduce" in head and "make test" in head and "## Does it reproduce?" in head
    text = "\n".join(lines)
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text.replace("2304.05552", "")), "a commit hash in README"
    assert not re.search(r"\bgoals?\b|main job \d|\brun \d+\b", text, re.IGNORECASE)


def test_the_router_sentence_puts_both_routers_side_by_side_from_the_scorecard():
    base = {"paper": "", "paper effect": "", "bar": "", "std": None, "ci90 lo": None, "ci90 hi": None}
    rows = [
        {
            **base,
            "claim": docs.ROUTER_CLAIM,
            "this run": 0.672,
            "margin": 0.0081,
            "ci95 lo": 0.002,
            "ci95 hi": 0.0142,
            "runs": 7,
            "verdict": "reproduced",
        },
        {
            **base,
            "claim": docs.ROUTER_CLAIM + docs.PAPER_ROUTER,
            "this run": 0.668,
            "margin": 0.0049,
            "ci95 lo": None,
            "ci95 hi": None,
            "runs": 1,
            "verdict": "one run",
        },
    ]
    text = docs.routers_in_words(pd.DataFrame(rows))
    assert (
        "default router's Dy /50 reaches 0.672 AP, +0.81 AP points over random routing [+0.20, +1.42] "
        "(7 runs, reproduced)" in text
    )
    assert "paper's router's Dy /50 reaches 0.668 AP, +0.49 AP points over random routing (1 run)" in text
    assert "paper's router: not measured" in docs.routers_in_words(pd.DataFrame(rows[:1]))


def test_a_trainer_comparison_in_words_reads_its_interval():
    from dynamicdet.experiments.seeds.summary import gap_table

    def words(ours, theirs):
        rows = [
            {"seed": str(i), "our loop": a, "ultralytics": b} for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
        ]
        return docs.gap_in_words(gap_table(rows))

    assert "our loop is lower" in words([0.27, 0.28, 0.27, 0.28], [0.34, 0.35, 0.34, 0.35])
    spread = words([0.27, 0.33, 0.28, 0.30], [0.34, 0.25, 0.36, 0.31])
    assert "contains 0" in spread and "over 4 seeds" in spread
    assert "Too few runs" in words([0.3], [0.3])
