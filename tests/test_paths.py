"""Where the folders go: in a checkout the repository's, installed the current folder's; the
shipped configs are package data; a config of the user's own is read by path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dynamicdet import paths
from dynamicdet.config import ConfigError, config_path, load_config, shipped_config_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    for var in ("DYNAMICDET_HOME", "DYNAMICDET_DATA", "DYNAMICDET_RESULTS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def test_this_checkout_is_a_checkout():
    assert paths.IN_CHECKOUT and paths.REPO_ROOT == REPO and paths.PACKAGE_DIR == REPO / "dynamicdet"
    assert paths.require_notebooks() == REPO / "notebooks"


def test_in_a_checkout_the_folders_are_the_repositorys(no_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the current folder does not matter in a checkout
    assert paths.home_dir() == REPO / "runs" and paths.data_dir() == REPO / "data"
    assert paths.results_dir("quick") == REPO / "results" / "quick"
    assert paths.ultralytics_config_dir() == REPO / "runs" / "ultralytics"


def test_installed_the_folders_are_the_current_folders(no_env, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "IN_CHECKOUT", False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert paths.home_dir() == tmp_path / "runs" and paths.runs_dir() == tmp_path / "runs" / "runs"
    assert paths.data_dir() == tmp_path / "data" and paths.dataset_dir("smoke") == tmp_path / "data" / "smoke"
    assert paths.results_dir() == tmp_path / "results"
    # ultralytics' config dir: a per-user cache, so that importing writes nothing here
    assert paths.ultralytics_config_dir() == tmp_path / "user" / ".cache" / "dynamicdet" / "ultralytics"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.ultralytics_config_dir() == tmp_path / "cache" / "dynamicdet" / "ultralytics"
    # the environment moves them, as in a checkout
    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path / "r"))
    assert (paths.home_dir(), paths.data_dir(), paths.results_dir("x")) == (
        tmp_path / "h",
        tmp_path / "d",
        tmp_path / "r" / "x",
    )
    assert paths.ultralytics_config_dir() == tmp_path / "h" / "ultralytics"


def test_without_a_checkout_the_notebooks_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", tmp_path / "site-packages" / "notebooks")
    with pytest.raises(FileNotFoundError, match=r"notebooks are part of the repository.*--no-notebooks"):
        paths.require_notebooks()


def test_the_shipped_configs_are_package_data():
    names = shipped_config_names()
    assert {"smoke", "quick", "standard", "ablation", "coco", "quick_faster_rcnn", "smoke_mask_rcnn"} <= set(names)
    assert names == sorted(p.stem for p in (REPO / "dynamicdet" / "configs").glob("*.yaml"))
    assert not (REPO / "configs").exists(), "configs/ moved into the package: dynamicdet/configs/"
    assert Path(str(config_path("quick"))) == REPO / "dynamicdet" / "configs" / "quick.yaml"
    cfg = load_config("smoke")
    assert cfg.name == "smoke" and Path(cfg.source) == REPO / "dynamicdet" / "configs" / "smoke.yaml"


def test_a_config_of_ones_own_is_read_by_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    shutil.copy(REPO / "dynamicdet" / "configs" / "smoke.yaml", tmp_path / "mine" / "tiny.yml")
    shutil.copy(REPO / "dynamicdet" / "configs" / "smoke.yaml", tmp_path / "smoke.yaml")
    assert load_config("mine/tiny.yml").name == "tiny"  # a .yml suffix, relative to the current folder
    assert load_config(tmp_path / "smoke.yaml").source == str(tmp_path / "smoke.yaml")
    # a bare name is a shipped config even when a file of that name is here
    assert Path(load_config("smoke").source).is_relative_to(REPO / "dynamicdet" / "configs")


def test_config_errors_say_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found: 'nope' is not a shipped config .*'smoke'.*own"):
        load_config("nope")
    with pytest.raises(ConfigError, match=r"config file not found: mine/missing\.yaml \(or give a shipped config"):
        load_config("mine/missing.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: configs/quick\.yaml"):  # the old place
        load_config("configs/quick.yaml")


def test_a_config_given_by_its_file_names_its_results_folder_by_the_files_stem(tmp_path):
    from dynamicdet.experiments.generality import two_stage_config

    mine = tmp_path / "mydata.yaml"
    assert paths.results_dir(str(mine)) == paths.results_dir("mydata")
    assert paths.config_name("quick") == "quick" and paths.config_name("a/b/c.yml") == "c"
    with pytest.raises(ConfigError, match=r"mydata_faster_rcnn.yaml: no faster_rcnn config beside .*--no-two-stage"):
        two_stage_config(str(mine), "faster_rcnn")
    (tmp_path / "mydata_faster_rcnn.yaml").write_text("model:\n  kind: faster_rcnn\n")
    assert two_stage_config(str(mine), "faster_rcnn").model.kind == "faster_rcnn"
