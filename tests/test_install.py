"""The package as a user gets it: a wheel, installed without the repository, used from another folder.

The wheel is built from a copy of the files a clone would hold (tracked and untracked but not
git-ignored), installed with ``pip install --no-deps --target`` into a temporary folder (its
dependencies, torch and the rest, come from this venv), and run with only that folder on
``PYTHONPATH`` and the working folder outside the checkout, so that nothing resolves to the
repository: no configs folder beside the package, no notebooks, no ``runs/`` or ``data/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
SHIPPED = sorted(p.name for p in (REPO / "dynamicdet" / "configs").glob("*.yaml"))
TIMEOUT = 900


def _copy_source(dest: Path) -> None:
    """Copy what a clone of the checkout would hold (plus uncommitted files) to ``dest``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        files = [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]  # not deleted in the tree
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the tree without caches and venvs
        skip = {".git", ".venv", "runs", "data", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
        files = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)
        ]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the checkout, offline (no build isolation: this venv's setuptools)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    _copy_source(src)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src))
    (whl,) = (tmp / "dist").glob("dynamicdet-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed into ``<tmp>/site``, and how to run it from ``<tmp>/work`` (outside the checkout)."""
    tmp = tmp_path_factory.mktemp("installed")
    site, work = tmp / "site", tmp / "work"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO)
    # a newcomer's shell: none of the project's folders moved, nothing of the checkout on the path;
    # ultralytics' config dir in a cache folder of this test (XDG_CACHE_HOME)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DYNAMICDET_") and k not in ("PYTHONPATH", "YOLO_CONFIG_DIR", "PYTHONSAFEPATH")
    }
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp / "cache"), PYTHONNOUSERSITE="1", TQDM_DISABLE="1")

    def call(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)

    def run(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:  # the console script pip installed
        return call([str(site / "bin" / "dynamicdet"), *args], cwd)

    def python(code: str, cwd: Path = work) -> subprocess.CompletedProcess:
        return call([sys.executable, "-c", code], cwd)

    return site, work, run, python


@pytest.fixture(scope="module")
def smoke_data(installed):
    """``dynamicdet data --config smoke`` run once from the installed package (its result)."""
    _, _, run, _ = installed
    return run("data", "--config", "smoke")


def test_the_wheel_holds_the_package_and_its_configs_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"dynamicdet", f"dynamicdet-{VERSION}.dist-info"}, sorted(names)[:20]
    assert {f"dynamicdet/configs/{c}" for c in SHIPPED} <= set(names), "the shipped configs are not package data"
    assert len(SHIPPED) >= 5 and "smoke.yaml" in SHIPPED and "quick.yaml" in SHIPPED
    unwanted = [
        n
        for n in names
        if n.split("/")[1:2] in (["tests"], ["results"], ["data"], ["notebooks"], ["runs"], ["bench"], ["docs"])
        or n.endswith((".ipynb", ".pt", ".png", ".jpg", ".onnx", ".pyc"))
        or "/__pycache__/" in n
    ]
    # dynamicdet/data/ is the dataset code (a Python package), not datasets
    unwanted = [n for n in unwanted if not (n.startswith("dynamicdet/data/") and n.endswith(".py"))]
    assert not unwanted, f"files that do not belong in the wheel: {unwanted}"
    meta = zipfile.ZipFile(wheel).read(f"dynamicdet-{VERSION}.dist-info/entry_points.txt").decode()
    assert "dynamicdet = dynamicdet.cli:main" in meta


@pytest.mark.slow
def test_the_installed_package_works_outside_the_checkout(installed, smoke_data, tmp_path):
    site, work, run, python = installed
    # the command and the API in a folder of their own: importing the package writes nothing into it
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    r = run("--help", cwd=fresh)
    assert r.returncode == 0 and "reproduce" in r.stdout and "predict" in r.stdout, r.stderr[-2000:]
    r = run("--version", cwd=fresh)
    assert r.returncode == 0 and r.stdout.strip() == f"dynamicdet {VERSION}", (r.stdout, r.stderr[-2000:])
    # the Python API, with a shipped config and a config of the user's own, by path
    raw = yaml.safe_load((REPO / "dynamicdet" / "configs" / "smoke.yaml").read_text())
    raw["train"]["epochs"] = 1
    (fresh / "mine.yaml").write_text(yaml.safe_dump(raw))
    code = (
        "import json, sys\n"
        "import dynamicdet\n"
        "from dynamicdet import load_config, paths\n"
        "smoke, mine = load_config('smoke'), load_config('mine.yaml')\n"
        "try:\n"
        "    load_config('nope')\n"
        "except ValueError as e:\n"
        "    unknown = str(e)\n"
        "print(json.dumps({'file': dynamicdet.__file__, 'in_checkout': paths.IN_CHECKOUT,\n"
        "  'data': str(paths.data_dir()), 'home': str(paths.home_dir()), 'results': str(paths.results_dir()),\n"
        "  'smoke': [smoke.name, smoke.source], 'mine': [mine.name, mine.train.epochs], 'unknown': unknown,\n"
        "  'modules': sorted({m.__file__ for n, m in sys.modules.items()\n"
        "                     if n.split('.')[0] == 'dynamicdet' and getattr(m, '__file__', None)}),\n"
        "  'path': sys.path}))\n"
    )
    r = python(code, cwd=fresh)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).is_relative_to(site) and not got["in_checkout"]
    assert got["modules"] and all(Path(f).is_relative_to(site) for f in got["modules"]), got["modules"]
    assert not any(p and Path(p).resolve() == REPO for p in got["path"]), "the checkout is on sys.path"
    assert (got["data"], got["home"], got["results"]) == (
        str(fresh / "data"),
        str(fresh / "runs"),
        str(fresh / "results"),
    )
    assert got["smoke"][0] == "smoke" and Path(got["smoke"][1]).is_relative_to(site / "dynamicdet" / "configs")
    assert got["mine"] == ["mine", 1]
    # an unknown name lists the shipped configs (read from the installed package's data)
    assert "'nope' is not a shipped config" in got["unknown"] and "'quick_mask_rcnn'" in got["unknown"]
    assert {p.name for p in fresh.iterdir()} == {"mine.yaml"}, "importing the package wrote into the current folder"
    # the dataset, generated under the current folder (the smoke_data fixture's `dynamicdet data --config smoke`)
    assert smoke_data.returncode == 0, smoke_data.stderr[-3000:]
    assert "train" in smoke_data.stdout and "val" in smoke_data.stdout
    assert (work / "data" / "smoke" / "annotations").is_dir() and (work / "data" / "smoke" / "images").is_dir()
    # a clear error: the notebooks are in the repository only
    r = run("reproduce", "--config", "smoke")
    assert r.returncode == 2 and "notebooks are part of the repository" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_installed_package_trains_and_predicts_a_bundled_photo(installed, smoke_data):
    """The issue's goal at smoke size: train, then ``dynamicdet predict`` on ultralytics' bundled bus.jpg."""
    site, work, run, _ = installed
    assert smoke_data.returncode == 0, smoke_data.stderr[-3000:]
    photo = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets" / "bus.jpg"
    assert photo.is_file(), photo
    r = run("train", "--config", "smoke", "--step", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    step2 = Path(r.stdout.strip().splitlines()[-1])
    assert step2.name == "step2.pt" and step2.is_relative_to(work / "runs" / "runs"), step2
    r = run("predict", str(photo), "--config", "smoke", "--hard-fraction", "0.5", "--save", "pred")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "pred" / "bus.jpg").is_file() and (work / "pred" / "predictions.json").is_file()
    summary = json.loads((work / "pred" / "summary.json").read_text())
    assert summary["images"] == 1 and summary["easy"] + summary["hard"] == 1 and not summary["failures"]
