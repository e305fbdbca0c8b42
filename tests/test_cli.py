"""The command line: data, speed, clear errors for bad configs and arguments; predict's output names and pictures."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ultralytics.engine.results import Results

from dynamicdet.deploy.outputs import annotate, output_names


def _run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "dynamicdet.cli", *args],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_data_command_prints_split_statistics(smoke_cfg):
    r = _run("data", "--config", "smoke")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "n_images" in r.stdout and "difficulty_mean" in r.stdout
    assert "train" in r.stdout and "val" in r.stdout


@pytest.mark.slow
def test_speed_command_reports_routes_and_environment(smoke_cfg):
    r = _run("speed", "--config", "smoke", "--batch", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout[r.stdout.index("{") :])
    for b in ("batch1", "batch2"):
        assert out[b]["hard"] > out[b]["router"] > 0 and out[b]["easy"] > 0
    assert out["env"]["threads"] >= 1 and out["env"]["torch"].startswith("2.14.1")


@pytest.mark.slow
def test_bad_config_is_a_clear_error(tmp_path):
    r = _run("data", "--config", "nope")
    assert r.returncode == 2 and "config file not found" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  img_sise: 64\n")
    r = _run("train", "--config", str(bad), "--step", "1")
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "img_sise" in r.stderr


def test_predict_and_export_refuse_both_config_and_weights(tmp_path):
    for cmd in ("predict", "export"):
        extra = ["x.jpg"] if cmd == "predict" else []
        r = _run(cmd, *extra, "--config", "smoke", "--weights", str(tmp_path / "w.pt"))
        assert r.returncode == 2 and "give --config or --weights, not both" in r.stderr and "Traceback" not in r.stderr


def test_output_names_are_distinct_and_video_frames_become_images():
    paths = ["a/bus.jpg", "b/bus.jpg", "a/zidane.png", "v/clip.mp4", "v/clip.mp4", "w/clip.mp4", "a/bus.jpg"]
    names = output_names([SimpleNamespace(path=p) for p in paths])
    assert names == [
        "bus.jpg",
        "bus_2.jpg",
        "zidane.png",
        "clip_000001.jpg",
        "clip_000002.jpg",
        "clip_000001_2.jpg",
        "bus_3.jpg",
    ]


def test_annotate_enlarges_small_pictures_with_their_boxes_and_writes_the_route():
    small = np.full((96, 128, 3), 255, np.uint8)
    r = Results(small, path="x.jpg", names={0: "circle"}, boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0, 0.9, 0.0]]))
    r.route, r.phi = "hard", 0.8
    im = annotate(r)
    assert im.shape == (480, 640, 3)  # long side 640, aspect kept
    assert r.boxes.xyxy[0, 0].item() == 10.0  # the caller's result is left as it was
    # the box's left edge is drawn at 10 * 5 = 50 px in the enlarged picture (ultralytics' box colour, not white)
    assert (im[200:280, 48:53] != 255).any() and (im[200:280, 300:400] == 255).all()
    assert (im[:10, :40] != 255).any()  # the route label's background in the top-left corner
    big = np.full((720, 1280, 3), 255, np.uint8)
    r = Results(big, path="y.jpg", names={0: "circle"}, boxes=torch.zeros((0, 6)))
    r.route, r.phi = "easy", 0.1
    assert annotate(r).shape == big.shape  # large pictures keep their size


def test_version_prints_the_installed_version_or_the_packages(capsys, monkeypatch):
    from importlib.metadata import PackageNotFoundError, version

    import dynamicdet
    from dynamicdet import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"dynamicdet {version('dynamicdet')}\n"

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(cli, "version", not_installed)
    assert cli._version() == dynamicdet.__version__


def test_reproduce_outside_a_checkout_says_where_the_notebooks_are(capsys, monkeypatch, tmp_path):
    from dynamicdet import cli, paths

    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    assert cli.main(["reproduce", "--config", "smoke"]) == 2  # before anything runs
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "notebooks are part of the repository" in err and "--no-notebooks" in err


def test_export_check_compares_both_kinds_of_predictions():
    """The export's printed check: YOLO's raw tensors, or two-stage per-image dicts (rows matched by score)."""
    from dynamicdet.cli import _max_diff

    assert _max_diff(torch.zeros(2, 5, 3), torch.full((2, 5, 3), 0.25)) == 0.25
    a = [{"boxes": torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]]), "scores": torch.tensor([0.9, 0.5])}]
    b = [{"boxes": torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2.5]]), "scores": torch.tensor([0.5, 0.9])}]
    assert _max_diff(a, b) == 0.5  # rows swapped: matched by score, the box differs by 0.5
    assert _max_diff(a, [{"boxes": b[0]["boxes"][:1], "scores": b[0]["scores"][:1]}]) == float("inf")
