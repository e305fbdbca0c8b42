"""``make reproduce``'s pipeline: every stage at smoke, reuse of finished stages, provenance."""

from __future__ import annotations

import json
import subprocess

import pytest

from dynamicdet import paths
from dynamicdet.config import load_config
from dynamicdet.engine import runs
from dynamicdet.evaluation import results
from dynamicdet.experiments import latency_table, static_baselines, tradeoff, trained, ultralytics_reference
from dynamicdet.pipeline import reproduce


@pytest.mark.slow
def test_reproduce_reuses_stages_and_keeps_their_wall_times(smoke_cfg):
    reproduce("smoke", run_notebooks=False, progress=False)
    prov_path = paths.results_dir("smoke") / "provenance.json"
    first = json.loads(prov_path.read_text())
    stages = ["train (step 1 + step 2)", "evaluation (trade-off)", "static baselines", "latency table"]
    stages += ["onnxruntime latency", "two-stage faster_rcnn", "two-stage mask_rcnn"]
    # every stage is now on disk; whether this run or an earlier test computed it, it is recorded once
    recorded = set(first["stage_wall_s"]) | set(first["cached_stages"])
    assert set(stages) <= recorded
    reproduce("smoke", run_notebooks=False, progress=False)
    second = json.loads(prov_path.read_text())
    assert second["cached_stages"] == stages  # nothing recomputed
    for name, seconds in first["stage_wall_s"].items():
        if name != "data":  # the data check always runs
            assert second["stage_wall_s"][name] == seconds  # the computing run's time survives
    assert "last_partial_run_wall_s" in second and second["git_sha"] and second["skipped"] == []
    # --no-two-stage: the YOLO stages only, and the provenance says what was left out
    reproduce("smoke", run_notebooks=False, progress=False, two_stage=False)
    third = json.loads(prov_path.read_text())
    assert third["cached_stages"] == stages[:5] and third["skipped"] == ["08_two_stage"]


@pytest.mark.slow
def test_an_eval_change_recomputes_the_stages_that_read_it_and_only_those(smoke_cfg):
    """After a full smoke run, a new eval.stream_images leaves every stage done but the latency table."""

    reproduce("smoke", run_notebooks=False, progress=False)
    changed = load_config("smoke", overrides={"eval": {"stream_images": 7}})
    stages = [runs.STEP1, runs.VIEW_CACHE, runs.VAL_CACHE, runs.STEP2, runs.VAL_DETS, runs.TRADEOFF, runs.LATENCY]
    assert [s.name for s in stages if not s.done(changed)] == ["latency table"]

    def mtimes():  # of each done stage's file (a folder stage: its marker file, not the folder)
        files = {s.name: s.path(changed) / s.marker if s.marker else s.path(changed) for s in stages if s.done(changed)}
        return {name: f.stat().st_mtime_ns for name, f in files.items()}

    before = mtimes()
    tr = trained(changed, progress=False)
    lat = latency_table(tr, tradeoff(tr, progress=False), static_baselines(changed, progress=False), progress=False)
    assert runs.LATENCY.done(changed) and runs.LATENCY.path(changed) != runs.LATENCY.path(smoke_cfg)
    assert list(lat["model"])[0] == "Dy /0" and (lat["latency_ms_b1"] > 0).all()
    # nothing else was recomputed
    after = mtimes()
    assert {name: t for name, t in after.items() if name in before} == before


def test_git_sha_is_dirty_for_code_changes_not_for_regenerated_results(tmp_path, monkeypatch):

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "table.csv").write_text("AP\n0.1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    clean = results.git_sha()
    assert len(clean) == 40
    (tmp_path / "results" / "table.csv").write_text("AP\n0.2\n")  # a re-run rewrote a committed result
    assert results.git_sha() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_sha() == clean + "+dirty"


def test_publish_copies_executed_notebooks_but_never_an_older_version(tmp_path, monkeypatch):
    import nbformat

    from dynamicdet import pipeline

    src, executed = tmp_path / "notebooks", tmp_path / "results" / "standard" / "notebooks"
    src.mkdir()
    executed.mkdir(parents=True)

    def notebook(code: str, output: str | None = None, injected: bool = False):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(code, execution_count=1 if output else None)
        if output:
            cell.outputs = [nbformat.v4.new_output("stream", text=output)]
        nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
        if injected:
            tags = {"tags": ["injected-parameters"]}
            nb.cells.insert(1, nbformat.v4.new_code_cell('config = "standard"', metadata=tags))
        return nb

    for name, code in (("00_a.ipynb", "x = 1"), ("01_b.ipynb", "y = 2")):
        nbformat.write(notebook(code), src / name)
    nbformat.write(notebook("x = 1", "1\n", injected=True), executed / "00_a.ipynb")
    nbformat.write(notebook("y = 1", "old\n"), executed / "01_b.ipynb")  # executed from an older version
    monkeypatch.setattr(pipeline, "notebook_paths", lambda: sorted(src.glob("*.ipynb")))
    monkeypatch.setattr(pipeline, "out_dir", lambda config: tmp_path / "results" / config)
    # an on-request notebook comes from its own reference run, and is skipped while that has not run
    monkeypatch.setattr(pipeline, "ON_REQUEST", ("09_c",))
    monkeypatch.setattr(pipeline, "REFERENCE_CONFIG", {"09_c": "ablation"})
    nbformat.write(notebook("z = 3"), src / "09_c.ipynb")
    assert pipeline.publish_notebooks("standard") == [src / "00_a.ipynb"]
    (tmp_path / "results" / "ablation" / "notebooks").mkdir(parents=True)
    nbformat.write(notebook("z = 3", "3\n"), tmp_path / "results" / "ablation" / "notebooks" / "09_c.ipynb")
    assert pipeline.publish_notebooks("standard") == [src / "00_a.ipynb", src / "09_c.ipynb"]
    assert nbformat.read(src / "09_c.ipynb", as_version=4).cells[1].outputs[0].text == "3\n"
    a = nbformat.read(src / "00_a.ipynb", as_version=4)
    # papermill's injected cell stays: the saved notebook says which config its outputs come from
    assert [c.source for c in a.cells] == ["# t", 'config = "standard"', "x = 1"]
    assert a.cells[2].outputs[0].text == "1\n"
    assert a.cells[1].metadata.tags == ["injected-parameters"]
    assert nbformat.read(src / "01_b.ipynb", as_version=4).cells[1].source == "y = 2"  # left as it was


def test_a_notebook_only_run_keeps_what_the_stage_run_left_out(smoke_cfg):
    from dynamicdet import pipeline

    prov_path = paths.results_dir("smoke") / "provenance.json"
    pipeline._record("smoke", smoke_cfg, None, {"data": 1.0}, [], {}, 0.0, ("08_two_stage",))
    assert json.loads(prov_path.read_text())["skipped"] == ["08_two_stage"]
    stage_run = json.loads(prov_path.read_text())
    stage_run.update(git_sha="the stage run's sha", environment={"torch": "the stage run's"})  # another commit
    prov_path.write_text(json.dumps(stage_run))
    pipeline._record("smoke", smoke_cfg, ["04_router_losses"], None, [], {"04_router_losses.ipynb": 1.0}, 0.0)
    prov = json.loads(prov_path.read_text())
    assert prov["skipped"] == ["08_two_stage"] and prov["notebook_wall_s"]["04_router_losses.ipynb"] == 1.0
    # the notebooks-only run records itself per notebook; the top level stays the stage run's
    assert prov["git_sha"] == "the stage run's sha" and prov["environment"] == {"torch": "the stage run's"}
    nb_run = prov["notebook_runs"]["04_router_losses.ipynb"]
    assert nb_run["git_sha"] == results.git_sha() and nb_run["wall_s"] == 1.0
    assert nb_run["environment"]["torch"].startswith("2.") and nb_run["config"]["name"] == "smoke"
    # a config no stage run has made (make ablation: the notebook makes the tables): the run stamps the top level
    prov_path.unlink()
    pipeline._record("smoke", smoke_cfg, ["09_step1_ablation"], None, [], {"09_step1_ablation.ipynb": 2.0}, 0.0)
    prov = json.loads(prov_path.read_text())
    assert prov["git_sha"] == results.git_sha() and prov["config"]["name"] == "smoke" and "notebook_runs" not in prov


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_static_training_resumes_instead_of_passing_for_finished(smoke_cfg, monkeypatch, tmp_path):
    """ultralytics writes last.pt every epoch: a run stopped after epoch 1 must resume, not be evaluated as done."""
    from ultralytics.engine.trainer import BaseTrainer

    from dynamicdet.experiments.static_models import finished

    # a seed no other test trains with: the run folder must not exist yet, whatever ran before in this session
    cfg = load_config("smoke", overrides={"eval": {"static_epochs": 2}, "train": {"seed": 11}})
    weights = runs.STATIC_MODELS.path(cfg) / "n" / "weights" / "last.pt"
    assert not runs.REFERENCE_ROW.path(cfg, model="yolov8n").exists() and not weights.exists()
    save = BaseTrainer.save_model

    def save_then_stop(self):  # the process dies right after epoch 1's checkpoint
        save(self)
        raise _Interrupted

    monkeypatch.setattr(BaseTrainer, "save_model", save_then_stop)
    with pytest.raises(_Interrupted):
        ultralytics_reference(cfg, ["n"], progress=False)
    assert weights.exists() and not finished(weights)
    monkeypatch.setattr(BaseTrainer, "save_model", save)
    row = ultralytics_reference(cfg, ["n"], progress=False).iloc[0]
    assert finished(weights) and bool(row["resumed"]) and row["epochs"] == 2
    assert 0 <= row["AP"] <= 1
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="last.pt: not a readable ultralytics checkpoint"):
        finished(bad)
