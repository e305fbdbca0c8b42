"""The tuning table's row bookkeeping (no training: the rows' training is the ordinary pipeline's)."""

import pandas as pd
import pytest

from dynamicdet.config import load_config
from studies.recipe_tuning import QUICK_ROWS, TABLES, WORKER_ROWS, apply, main, seed_summary, with_seeds


def test_with_seeds_adds_the_seed_to_each_rows_overrides_without_changing_the_row():
    rows = with_seeds(WORKER_ROWS, [0, 2])
    assert list(rows) == ["workers0 seed0", "workers0 seed2", "workers2 seed0", "workers2 seed2"]
    assert rows["workers2 seed2"][1] == {"data": {"img_size": 160}, "train": {"epochs": 12, "workers": 2, "seed": 2}}
    assert rows["workers0 seed0"][1] == {"data": {"img_size": 160}, "train": {"epochs": 12, "seed": 0}}
    # the table's own rows are untouched
    assert WORKER_ROWS["workers2"][1] == {"data": {"img_size": 160}, "train": {"epochs": 12, "workers": 2}}
    cfg = apply(load_config("quick"), rows["workers2 seed2"][1])
    assert (cfg.train.workers, cfg.train.seed, cfg.data.img_size) == (2, 2, 160)
    assert cfg.train.optimizer == load_config("quick").train.optimizer


def test_every_quick_row_applies_to_the_quick_config():
    for _, overrides in QUICK_ROWS.values():
        apply(load_config("quick"), overrides)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_row_names_its_image_size_and_epochs(table):
    """A committed table must reproduce whatever quick.yaml holds later: no row inherits the size or budget."""
    for name, (_, overrides) in TABLES[table][1].items():
        cfg = apply(load_config("quick"), overrides)
        assert "img_size" in overrides.get("data", {}), name
        assert "epochs" in overrides.get("train", {}), name
        assert cfg.data.img_size in (128, 160), name
    with pytest.raises(ValueError, match="train.worker is not a config field"):
        apply(load_config("quick"), {"train": {"worker": 2}})


def test_seed_summary_is_the_mean_and_std_per_row_and_the_paired_difference_from_the_first():
    df = pd.DataFrame(
        {
            "row": ["a seed0", "a seed1", "a seed2", "b seed0", "b seed1", "b seed2"],
            "change": ["x"] * 6,
            "AP det1": [0.2, 0.4, 0.3, 0.3, 0.5, 0.4],  # b = a + 0.1 on every seed
            "AP det2": [0.3, 0.3, 0.3, 0.2, 0.4, 0.3],  # b - a: -0.1, +0.1, 0
        }
    )
    s = seed_summary(df).set_index(["row", "statistic"])
    assert s.loc[("a", "mean"), "AP det1"] == pytest.approx(0.3)
    assert s.loc[("a", "std"), "AP det1"] == pytest.approx(0.1)
    assert s.loc[("b", "mean"), "seeds"] == 3
    # the same change on every seed: a zero-width interval at +0.1 (paired by seed, not pooled)
    assert s.loc[("b - a", "mean"), "AP det1"] == pytest.approx(0.1)
    assert s.loc[("b - a", "ci95 lo"), "AP det1"] == pytest.approx(0.1)
    assert s.loc[("b - a", "ci95 lo"), "AP det2"] < 0 < s.loc[("b - a", "ci95 hi"), "AP det2"]
    assert ("a - a", "mean") not in s.index
    with pytest.raises(ValueError, match="seed<k>"):
        seed_summary(pd.DataFrame({"row": ["a"], "AP det1": [0.1]}))


def test_unknown_rows_are_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["--table", "workers", "--rows", "workers9"])
    assert "workers9" in capsys.readouterr().err


def test_tuning_table_writes_one_table_named_after_the_table_not_its_rows(monkeypatch, tmp_path):
    import json

    import studies.recipe_tuning as rt

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    seen = []

    def fake_row(cfg, progress=False):
        seen.append((cfg.train.workers, cfg.train.seed))
        return {"AP det1": 0.1 * len(seen), "run": "x"}

    monkeypatch.setattr(rt, "recipe_row", fake_row)
    df = rt.tuning_table("quick", with_seeds(WORKER_ROWS, [0, 1]), out="t", progress=False, name="workers_seeds")
    quick_workers = load_config("quick").train.workers
    assert seen == [(quick_workers, 0), (quick_workers, 1), (2, 0), (2, 1)]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "provenance.json",
        "workers_seeds.csv",
        "workers_seeds.md",
    ]
    assert len(pd.read_csv(tmp_path / "t" / "workers_seeds.csv")) == len(df) == 4
    record = json.loads((tmp_path / "t" / "provenance.json").read_text())["workers_seeds"]
    assert set(record["rows"]) == set(df["row"]) and record["wall_min"] >= 0


def test_seed_claims_set_the_quick_seeds_verdicts_beside_the_standard_scorecard():
    from studies.recipe_tuning import seed_claims

    seeds = pd.DataFrame(
        {
            "row": ["r seed0", "r seed1", "r seed2", "other seed0"],
            "AP det2 - det1": [0.04, 0.05, 0.045, -1.0],
            "c(0.5) learned": [0.6, 0.1, 0.9, 0.0],
            "c(0.5) random": [0.5, 0.5, 0.5, 0.0],
            "c(0.5) conf. escalation": [0.3, -0.21, 0.58, 0.0],
        }
    )
    standard = pd.DataFrame(
        {
            "claim": [
                "detector 2 beats detector 1",
                "the router beats random routing at /50",
                "the router beats confidence escalation at /50",
                "/50 keeps about three quarters of detector 2's gain",
                "hard images are the crowded, small, occluded, cluttered ones",
            ],
            "margin": [0.05, 0.2, -0.3, float("nan"), 0.4],
            "ci95 lo": [-0.05, 0.1, -0.5, float("nan"), 0.3],
            "ci95 hi": [0.15, 0.3, -0.1, float("nan"), 0.5],
            "verdict": ["inconclusive", "reproduced", "not reproduced", "not testable: lead under 0.02", "reproduced"],
        }
    )
    runs = [
        {"claims": []},
        {
            "claims": [
                {"claim": "hard images are the crowded, small, occluded, cluttered ones", "verdict": "not reproduced"}
            ]
        },
    ]
    t = seed_claims(seeds, "r", standard, runs).set_index("claim")
    lead = t.loc["detector 2 beats detector 1"]
    assert lead["quick verdict"] == "reproduced" and lead["agree"] == "no"  # seeds' interval above 0; standard's across
    assert lead["quick seeds"].startswith("+0.045 [") and lead["standard"] == "+0.050 [-0.050, +0.150]"
    assert t.loc["the router beats random routing at /50", "quick verdict"] == "not decided"  # 0.1 -0.4 0.4
    assert t.loc["the router beats confidence escalation at /50", "quick verdict"] == "reproduced"
    c50 = t.loc["/50 keeps about three quarters of detector 2's gain"]
    assert c50["standard verdict"] == "not testable" and c50["agree"] == ""  # untestable on one side: no verdict
    assert "main job 1" not in t  # no scorecard recorded: no column
    hard = t.loc["hard images are the crowded, small, occluded, cluttered ones"]
    assert hard["quick verdict"] == "" and hard["main job 2"] == "not reproduced" and hard["agree"] == "no"
    with pytest.raises(ValueError, match="no rows 'missing seed"):
        seed_claims(seeds, "missing", standard, runs)


def test_merge_folds_side_by_side_parts_into_the_table_in_row_order(monkeypatch, tmp_path):
    import json

    import studies.recipe_tuning as rt
    from dynamicdet.evaluation.results import save_table

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    rows = {"a": ("first", {}), "b": ("second", {}), "c": ("third", {})}

    def table(names, ap):
        return pd.DataFrame({"row": names, "overrides": "{}", "run": "x", "AP det1": ap})

    save_table(table(["a seed0", "a seed1", "c seed0", "c seed1"], [0.1, 0.2, 0.5, 0.6]), "t", "out")
    save_table(table(["b seed1"], [0.4]), "t", "p1")
    (tmp_path / "p1" / "provenance.json").write_text(json.dumps({"git_sha": "abc"}))
    save_table(table(["b seed0", "a seed1"], [0.3, 0.25]), "t", "p2")  # a seed1 run again: replaced
    df = rt.merge_parts("out", ["p1", "p2"], "t", rows)
    assert list(df["row"]) == ["a seed0", "a seed1", "b seed0", "b seed1", "c seed0", "c seed1"]
    assert df.set_index("row").loc["a seed1", "AP det1"] == 0.25
    summary = pd.read_csv(tmp_path / "out" / "t_summary.csv").set_index(["row", "statistic"])
    assert summary.loc[("b - a", "mean"), "AP det1"] == pytest.approx(((0.3 - 0.1) + (0.4 - 0.25)) / 2)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["parts"]["t p1"] == {"git_sha": "abc"} and not (tmp_path / "p1").exists()
    save_table(table(["z seed0"], [0.1]), "t", "p3")
    with pytest.raises(ValueError, match="'z'"):
        rt.merge_parts("out", ["p3"], "t", rows)
    with pytest.raises(FileNotFoundError, match="p4"):
        rt.merge_parts("out", ["p4"], "t", rows)


def test_compare_writes_the_paired_difference_of_two_rows_over_their_seeds(monkeypatch, tmp_path, capsys):
    from dynamicdet.evaluation.results import save_table

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    rows = ["b seed0", "a seed0", "b seed1", "a seed1", "c seed0"]
    save_table(pd.DataFrame({"row": rows, "AP det1": [0.5, 0.1, 0.7, 0.2, 9.0]}), "budget_seeds", "t")
    main(["--table", "budget", "--out", "t", "--compare", "a", "b"])
    s = pd.read_csv(tmp_path / "t" / "budget_seeds_b_vs_a.csv").set_index(["row", "statistic"])
    assert s.loc[("b - a", "mean"), "AP det1"] == pytest.approx(0.45)  # paired by seed, row c left out
    assert s.loc[("a", "mean"), "AP det1"] == pytest.approx(0.15)
    with pytest.raises(SystemExit):
        main(["--table", "budget", "--out", "t", "--compare", "a", "zz"])
    assert "--compare" in capsys.readouterr().err
