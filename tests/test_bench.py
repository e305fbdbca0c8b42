"""The benchmark script runs end to end at the smoke size (figures themselves are not asserted)."""

import json
import os
import subprocess
import sys

from dynamicdet import paths


def test_bench_smoke_writes_report(smoke_cfg):
    r = subprocess.run(
        [sys.executable, "-m", "dynamicdet.bench", "--config", "smoke", "--fast"],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((paths.results_dir() / "bench.json").read_text())["smoke"]
    items = {row["item"].split(".")[0] for row in rec["rows"]}
    assert items == {"1", "2", "3", "4", "5", "6", "7"}
    assert all(row["mark"] in {"PASS", "MISS", "-"} for row in rec["rows"])
    assert all(isinstance(row["value"], float) and row["value"] > 0 for row in rec["rows"])
    md = (paths.results_dir() / "bench.md").read_text()
    assert "## smoke" in md and md.count("| 2. route()") == 10
    assert rec["env"]["torch"].startswith("2.14.1")
