# Two commands matter (see README.md):
#   make reproduce [CONFIG=quick|standard|smoke|coco]   the main job (ARGS=... more options of
#                                                       `python -m dynamicdet.cli reproduce`, e.g. ARGS=--no-two-stage)
#   make test                                           the test suite (everything)
# and one for the inner loop:
#   make test-fast                                      the tests not marked slow (under 2 min)
CONFIG ?= quick
ARGS ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The lint checks live in tools/lint (its header lists them); the pre-commit hooks run the same.
# `make lint` runs them all, `make test` all but the format check, before pytest.
LINT := PY=$(PY) bash tools/lint
TEST_LINT := ruff notebooks workflows citation

.PHONY: reproduce test test-fast bench ablation two-stage-tuning lint data venv notebooks lab docs nbval

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

reproduce: $(STAMP)
	$(PY) -m dynamicdet.cli reproduce --config $(CONFIG) $(ARGS)

data: $(STAMP)
	$(PY) -m dynamicdet.cli data --config $(CONFIG)

test: $(STAMP)
	$(LINT) $(TEST_LINT)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(LINT) $(TEST_LINT)
	$(PY) -m pytest -q -m "not slow"

# The step-1 ablation (notebook 09, not part of the default main job): every recipe row on the
# `ablation` config, each a cached, resumable run, and rows a-e again at the standard size
# (about 4 h on 2 CPU cores, docs/reproducing.md).
ablation: $(STAMP)
	$(PY) -m dynamicdet.cli reproduce --config ablation --no-stages --notebooks 09_step1_ablation

# The two-stage from-scratch recipe study (notebook 08's tuning table; not part of the main job):
# static ResNet-18 rows, one change each, each a cached, resumable run (about 3 h at standard).
two-stage-tuning: $(STAMP)
	$(PY) -m studies.two_stage_tuning --config $(CONFIG)

bench: $(STAMP)
	$(PY) bench/suite.py --config $(CONFIG)

# Copy the notebooks executed by `make reproduce CONFIG=standard` (09: by `make ablation`) over notebooks/,
# so that the committed notebooks show the reference results.
notebooks: $(STAMP)
	$(PY) -c "from dynamicdet.pipeline import publish_notebooks as p; print(p('standard'))"

# Regenerate the tables of README.md and docs/*.md from results/ (also run by `make reproduce CONFIG=standard`).
docs: $(STAMP)
	$(PY) -m dynamicdet.evaluation.docs

# Strict nbval on the notebooks a run executed (results/<config>/notebooks/): every output must match
# again, but for the volatile ones tools/nbval_sanitize.cfg names (live timings, temporary paths).
# The second execution writes into a scratch copy of results/, so the run's tables stay its own.
nbval: $(STAMP)
	$(PY) -c "import sys; from dynamicdet.pipeline import check_notebooks as c; sys.exit(c('$(CONFIG)'))"

# JupyterLab on notebooks/ with the project's kernel (python3 = this venv, installed by `make venv`).
lab: $(STAMP)
	$(PY) -m jupyterlab --notebook-dir=notebooks

lint: $(STAMP)
	$(LINT)
