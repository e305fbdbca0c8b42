"""The repository's promises: pinned dependencies agree, README commands exist."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from dynamicdet import paths


def _pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["dev"]
    return dict(r.split("==") for r in reqs)


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((paths.REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = dict(r.split("==") for r in pip if "==" in r)
    assert conda_pins == _pyproject_pins()


def test_torch_pair_and_ultralytics_pins():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert re.fullmatch(r"8\.4\.\d+", pins["ultralytics"])


def test_readme_commands_and_ci():
    readme = (paths.REPO_ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    makefile = (paths.REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^reproduce:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (paths.REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci


def test_licence_is_agpl():
    assert "GNU AFFERO GENERAL PUBLIC LICENSE" in (paths.REPO_ROOT / "LICENSE").read_text()


@pytest.mark.parametrize("keep", ["0", "1"])
def test_test_session_folder_is_removed_at_exit_unless_kept(keep):
    """The suite's temporary folder (runs, data, results: ~2 GB) must not pile up in /tmp."""
    env = {**os.environ, "DYNAMICDET_KEEP_TEST_FILES": keep}
    code = "import conftest; (conftest._TMP / 'home' / 'x.pt').parent.mkdir(parents=True); print(conftest._TMP)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = Path(out.split()[0])
    try:
        assert folder.name.startswith("dynamicdet-tests-")
        assert folder.exists() == (keep == "1")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
