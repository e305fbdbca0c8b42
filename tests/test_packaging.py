"""The repository's promises: pinned dependencies agree, README commands exist, the lint checks
(`make lint`, pre-commit, the workflows, CITATION.cff) are what they say."""

import importlib.util
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


# ------------------------------------------------------------------ lint checks, workflows, citation

LINT = paths.REPO_ROOT / "tools" / "lint"


def _lint_checks() -> list[str]:
    """The checks ``tools/lint`` knows (its ``ALL`` list)."""
    return re.search(r'^ALL="([^"]+)"$', LINT.read_text(), re.M).group(1).split()


def _make_recipe(target: str) -> str:
    """The recipe lines of one Makefile target."""
    makefile = (paths.REPO_ROOT / "Makefile").read_text()
    return re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", makefile, re.M).group(1)


def test_make_lint_and_the_pre_commit_hooks_run_the_same_checks():
    checks = _lint_checks()
    assert {"ruff", "format", "notebooks", "workflows", "citation"} <= set(checks)
    makefile = (paths.REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^LINT := PY=\$\(PY\) bash tools/lint$", makefile, re.M)
    assert _make_recipe("lint").split() == ["$(LINT)"]  # every check
    test_lint = re.search(r"^TEST_LINT := (.+)$", makefile, re.M).group(1).split()
    assert {"workflows", "citation", "ruff"} <= set(test_lint) <= set(checks)
    for target in ("test", "test-fast"):  # the checks run before pytest
        lines = _make_recipe(target).split("\n")
        assert lines[0].strip() == "$(LINT) $(TEST_LINT)" and "pytest" in lines[1], (target, lines)
    config = yaml.safe_load((paths.REPO_ROOT / ".pre-commit-config.yaml").read_text())
    (repo,) = config["repos"]
    assert repo["repo"] == "local"
    hooked = []
    for hook in repo["hooks"]:
        assert hook["language"] == "system" and hook["pass_filenames"] is False, hook["id"]
        m = re.fullmatch(r"bash tools/lint (\w+)", hook["entry"])
        assert m, f"hook {hook['id']}: entry {hook['entry']!r} is not one check of tools/lint"
        hooked.append(m.group(1))
    assert sorted(hooked) == sorted(checks), "a check of `make lint` without its hook, or the reverse"


def test_tools_lint_names_an_unknown_check():
    r = subprocess.run(["bash", str(LINT), "spelling"], capture_output=True, text=True, cwd=paths.REPO_ROOT)
    assert r.returncode == 2 and "unknown check 'spelling'" in r.stderr and "workflows" in r.stderr


def _workflow(name: str) -> dict:
    wf = yaml.safe_load((paths.REPO_ROOT / ".github" / "workflows" / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as true
    return wf


def _steps(wf: dict) -> list[dict]:
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] > 0
    return job["steps"]


def _setup_python(steps: list[dict]) -> dict:
    (setup,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    return setup["with"]


def test_ci_workflow_runs_ci_run_on_push_and_pull_request():
    wf = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    steps = _steps(wf)
    assert _setup_python(steps) == {
        "python-version": "3.11",
        "cache": "pip",
        "cache-dependency-path": "pyproject.toml",
    }
    (run,) = [s for s in steps if "run" in s]
    assert run["run"].strip() == "bash .ci/run" and run["env"]["CI"] == "true"


def test_reproduce_workflow_dispatch_and_weekly_with_scorecard_and_artifact():
    wf = _workflow("reproduce.yml")
    config = wf["on"]["workflow_dispatch"]["inputs"]["config"]
    assert config["default"] == "quick" and "quick" in config["options"]
    for name in config["options"]:
        assert (paths.REPO_ROOT / "dynamicdet" / "configs" / f"{name}.yaml").is_file(), name
    (cron,) = wf["on"]["schedule"]
    assert len(cron["cron"].split()) == 5 and cron["cron"].split()[-1] != "*", "not weekly"
    (job,) = wf["jobs"].values()
    assert job["env"]["CONFIG"] == "${{ inputs.config || 'quick' }}"
    steps = _steps(wf)
    assert _setup_python(steps)["cache-dependency-path"] == "pyproject.toml"
    scripts = [s["run"] for s in steps if "run" in s]
    # the input reaches the scripts through the environment only, never pasted into them
    assert not [s for s in scripts if "${{" in s], "an expression inside a run: script"
    assert any('make reproduce CONFIG="$CONFIG"' in s for s in scripts)
    assert any("results/$CONFIG/claims.md" in s and "$GITHUB_STEP_SUMMARY" in s for s in scripts)
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["with"]["path"] == "results/${{ env.CONFIG }}/" and upload["if"] == "always()"


def test_actionlint_runs_offline_and_catches_a_script_injection(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.head_commit.message }}"\n'
    )
    actionlint = Path(sys.executable).parent / "actionlint"
    r = subprocess.run([str(actionlint), str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "potentially untrusted" in r.stdout, r.stdout + r.stderr
    ours = sorted(str(p) for p in (paths.REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    r = subprocess.run([str(actionlint), *ours], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and len(ours) == 2, r.stdout + r.stderr


def _check_citation():
    spec = importlib.util.spec_from_file_location("check_citation", paths.REPO_ROOT / "tools" / "check_citation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CFF = paths.REPO_ROOT / "CITATION.cff"


def test_citation_cff_is_valid_and_cites_this_version_and_the_paper():
    assert _check_citation().problems(CFF) == []
    cff = yaml.safe_load(CFF.read_text())
    project = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["title"] == "DynamicDet, a Jupyter-first replication"
    assert str(cff["version"]) == project["version"] and cff["license"] == "AGPL-3.0-only"
    assert cff["authors"] == [{"name": "The DynamicDet replication contributors"}]
    (paper,) = cff["references"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2023
    assert paper["title"] == "DynamicDet: A Unified Dynamic Architecture for Object Detection"
    assert [(a["given-names"], a["family-names"]) for a in paper["authors"]] == [
        ("Zhihao", "Lin"),
        ("Yongtao", "Wang"),
        ("Jinhe", "Zhang"),
        ("Xiaojie", "Chu"),
    ]
    assert "CVPR" in paper["conference"]["name"]
    ids = {i["type"]: str(i["value"]) for i in paper["identifiers"]}
    assert ids["doi"] == "10.48550/arXiv.2304.05552" and ids["other"] == "arXiv:2304.05552"


def test_the_citation_check_names_the_key_and_the_problem(tmp_path):
    bad = tmp_path / "CITATION.cff"
    text = CFF.read_text().replace("license: AGPL-3.0-only", "license: AGPL-3")
    bad.write_text(text.replace("type: conference-paper", "type: talk-ish") + "titel: typo\n")
    found = _check_citation().problems(bad)
    assert len(found) == 3, found
    assert found[0].startswith(f"{bad}: top level: Additional properties are not allowed ('titel'"), found
    assert found[1].startswith(f"{bad}: license: 'AGPL-3'"), found
    assert found[2].startswith(f"{bad}: references.0.type: 'talk-ish'"), found
    bad.write_text("cff-version: 1.2.0\ntitle: [unclosed\n")
    assert "invalid YAML" in _check_citation().problems(bad)[0]


def _readme_section(title: str) -> str:
    readme = (paths.REPO_ROOT / "README.md").read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def test_readme_cite_section_agrees_with_citation_cff():
    cite = " ".join(_readme_section("Cite").split())  # line breaks as spaces
    cff = yaml.safe_load(CFF.read_text())
    (paper,) = cff["references"]
    assert "[`CITATION.cff`](CITATION.cff)" in cite
    for text in (cff["title"], f"version {cff['version']}", cff["license"], cff["authors"][0]["name"], paper["title"]):
        assert text in cite, f"README's Cite section does not say {text!r} as CITATION.cff does"
    names = [(a["given-names"], a["family-names"]) for a in paper["authors"]]
    assert ", ".join(f"{g} {f}" for g, f in names) in cite, "the paper's authors, in CITATION.cff's order"
    arxiv = next(i["value"] for i in paper["identifiers"] if i["type"] == "other").removeprefix("arXiv:")
    doi = next(i["value"] for i in paper["identifiers"] if i["type"] == "doi")
    assert f"[arXiv {arxiv}](https://arxiv.org/abs/{arxiv})" in cite and f"doi {doi}" in cite
    assert f"CVPR {paper['year']}" in cite


def test_package_version_agrees_with_pyproject():
    import dynamicdet

    assert (
        dynamicdet.__version__ == tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    )
