"""The notebooks as users run them: notebook 00 executed through JupyterLab's UI in a real browser.

JupyterLab is started on 127.0.0.1 with a token; Debian's ``chromium`` (headless, driven by
Playwright's Python API through ``executable_path``; Playwright downloads nothing) opens
notebook 00 at the smoke config, runs every cell from the *Run* menu, waits for the kernel
to finish and saves. The saved notebook must hold an output for every code cell and no error;
a screenshot of the executed notebook is kept in ``test-artifacts/``.

Without a browser the test is skipped on a developer's machine and fails under CI
(``.ci/run`` installs ``chromium`` with apt-get).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from dynamicdet.paths import NOTEBOOKS_DIR, REPO_ROOT

pytestmark = pytest.mark.slow
ARTIFACTS = REPO_ROOT / "test-artifacts"
NOTEBOOK = "00_dataset.ipynb"
# notebook 00 at the smoke config takes about 20 s on 2 idle cores
RUN_TIMEOUT_S = int(os.environ.get("DYNAMICDET_LAB_TIMEOUT", 900))


def _browser() -> str:
    found = os.environ.get("DYNAMICDET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("CI is set but no chromium is installed: .ci/run installs it with `apt-get install chromium`")
    pytest.skip("no chromium on this machine (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(smoke_cfg, tmp_path):
    """A JupyterLab server on 127.0.0.1 serving notebook 00 parameterised to the smoke config."""
    root = tmp_path / "lab"
    root.mkdir()
    # as a user would: open the notebook and set `config = "smoke"` in its parameters cell, outputs cleared
    nb = nbformat.read(NOTEBOOKS_DIR / NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "a notebook has one parameters cell"
    assert re.search(r'^config = "\w+"', params[0].source, flags=re.M)
    params[0].source = re.sub(r'^config = "\w+"', 'config = "smoke"', params[0].source, flags=re.M)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(nb, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
    }
    # every cell in the page (JupyterLab 4 renders only the visible ones by default)
    tracker = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    # and the notebook's own kernel (python3, the project's venv) started without asking
    tracker.write_text(json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "get Jupyter news?" prompt, no fetch
    log = tmp_path / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI machines run as root
        cmd.append("--allow-root")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield {"url": f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}", "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# JavaScript run in the page: the prompt of every code cell ("[ ]:", "[*]:", "[3]:")
PROMPTS_JS = "() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')).map(e => e.textContent)"


def test_notebook_00_runs_in_jupyterlab_in_a_real_browser(lab):
    browser_path = _browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab_00_dataset.png"
    saved = lab["root"] / NOTEBOOK
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab["url"])
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
            # the kernel must be up before "Run All": a kernel picker, if JupyterLab shows one, is answered
            # with the notebook's own kernel (the preselected one); then the status bar reads "| Idle"
            deadline = time.monotonic() + 120
            while not page.get_by_text(re.compile(r"\| Idle$")).count():
                if page.locator(".jp-Dialog .jp-mod-accept").count():
                    page.locator(".jp-Dialog .jp-mod-accept").first.click()
                assert time.monotonic() < deadline, "the kernel did not start within 120 s"
                time.sleep(0.5)
            n_code = sum(c["cell_type"] == "code" for c in json.loads(saved.read_text())["cells"])
            page.wait_for_function(f"() => ({PROMPTS_JS})().length === {n_code}", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # done when no cell is queued or running and the kernel has been idle for 3 polls in a row
            deadline, idle, prompts = time.monotonic() + RUN_TIMEOUT_S, 0, []
            while idle < 3:
                if time.monotonic() > deadline:
                    page.screenshot(path=str(shot), full_page=True)
                    pytest.fail(f"cells still running after {RUN_TIMEOUT_S} s: {prompts}; screenshot {shot}")
                time.sleep(1)
                prompts = page.evaluate(PROMPTS_JS)
                busy = (
                    any("*" in t for t in prompts)
                    or page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
                )
                idle = 0 if busy or not any(any(c.isdigit() for c in t) for t in prompts) else idle + 1
            page.screenshot(path=str(shot), full_page=True)
            before = saved.stat().st_mtime_ns
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 60
            while saved.stat().st_mtime_ns == before:
                if time.monotonic() > deadline:
                    page.screenshot(path=str(shot), full_page=True)
                    pytest.fail(f"JupyterLab did not save the notebook; screenshot {shot}")
                time.sleep(0.5)
            time.sleep(1)  # let the save finish writing
        finally:
            browser.close()
    nb = nbformat.read(saved, as_version=4)  # joins the multi-line strings JupyterLab may save as lists
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors)
    not_run = [i for i, c in enumerate(code) if c["execution_count"] is None]
    assert not not_run, f"code cells {not_run} never ran (an earlier cell failed?); screenshot in {shot}"
    assert len(code) == n_code
    # the last cell is the checks cell: it ran, in order, after every other cell
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts) and counts[-1] == max(counts)
    assert "checks passed" in "".join(o.get("text", "") for o in code[-1]["outputs"])
    assert shot.stat().st_size > 10_000
