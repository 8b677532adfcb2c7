# Build and test targets for the NiN notebooks. Run `make help` for the list.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp is newer than requirements.txt once an install has finished, so make reinstalls only after an edit.
STAMP := $(VENV)/.installed

# The notebooks and tests import nin_helpers from the repository root.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

# ipywidgets 7.7.1, as Google Colab ships it, installed beside the venv's ipywidgets 8 for `make test-widgets-7`.
WIDGETS7_DIR := $(VENV)/ipywidgets7
WIDGETS7_STAMP := $(WIDGETS7_DIR)/.installed

TRAIN_NOTEBOOK := notebooks/05_training.ipynb
RUNS_DIR := runs

.DEFAULT_GOAL := help
.PHONY: help install test test-widgets-7 lint train lab clean

help:
	@echo "make install  create $(VENV) and install requirements.txt (other targets do this when needed)"
	@echo "make test     lint, run the unit and browser tests, then execute every notebook in its quick CPU profile"
	@echo "make test-widgets-7  run tests/test_widgets.py with ipywidgets 7.7.1, as on Colab (make test does too)"
	@echo "make lint     run ruff on the helpers, tests and notebooks"
	@echo "make train    execute $(TRAIN_NOTEBOOK) headless into $(RUNS_DIR)/ and print the test accuracy"
	@echo "make lab      open JupyterLab in notebooks/"
	@echo "make clean    remove $(VENV), $(RUNS_DIR)/ and caches"
	@echo "Set PYTHON to pick the interpreter for the venv, e.g. make test PYTHON=python3.12"

install: $(STAMP)

# A venv whose interpreter or pip no longer runs (for example after its Python was removed) is rebuilt.
$(STAMP): requirements.txt
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
		echo "Creating $(VENV) with $(PYTHON)"; \
		rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV) || { echo "Failed to create $(VENV) with '$(PYTHON) -m venv'; set PYTHON to a Python 3.10-3.13 that has venv"; exit 1; }; \
	fi
	@echo "Installing requirements.txt into $(VENV) (the first install takes a few minutes)"
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.txt
	@touch $@

lint: $(STAMP)
	@echo "Running ruff"
	$(BIN)/ruff check .

# --nbval compares every stored output; cells whose output varies (timings, training logs, widgets) are
# marked NBVAL_IGNORE_OUTPUT. NIN_QUICK=1 makes the training notebook run its short CPU profile.
# tests/test_browser.py needs Chromium (Debian's chromium package) and skips without it, except on CI.
test: lint test-widgets-7
	@echo "Running unit tests, browser tests and notebooks with NIN_QUICK=1"
	NIN_QUICK=1 NIN_EXPECTED_IPYWIDGETS_MAJOR=8 $(BIN)/python -m pytest --nbval --nbval-current-env tests notebooks

# pip --target puts ipywidgets 7.7.1 in its own folder, and PYTHONPATH puts that folder before the venv's
# ipywidgets 8. --no-deps keeps the venv's ipykernel, IPython and traitlets, because the file lists the rest.
$(WIDGETS7_STAMP): requirements-ipywidgets7.txt $(STAMP)
	@echo "Installing requirements-ipywidgets7.txt into $(WIDGETS7_DIR)"
	rm -rf $(WIDGETS7_DIR)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --no-deps --target $(WIDGETS7_DIR) \
		-r requirements-ipywidgets7.txt
	@touch $@

# ipywidgets 7.7.1 calls ipykernel functions that newer ipykernel releases deprecate, hence the -W option.
test-widgets-7: $(WIDGETS7_STAMP)
	@echo "Running tests/test_widgets.py with ipywidgets 7.7.1"
	NIN_EXPECTED_IPYWIDGETS_MAJOR=7 PYTHONPATH=$(CURDIR)/$(WIDGETS7_DIR):$(PYTHONPATH) \
		$(BIN)/python -m pytest -W ignore::DeprecationWarning tests/test_widgets.py

# The notebook writes $(RUNS_DIR)/metrics.json. NIN_RUNS_DIR gives it that folder as an absolute path,
# because nbconvert runs the notebook with notebooks/ as its working directory.
train: $(STAMP)
	@mkdir -p $(RUNS_DIR)
	@rm -f $(RUNS_DIR)/metrics.json
	@echo "Executing $(TRAIN_NOTEBOOK) into $(RUNS_DIR)/ (no cell timeout)"
	NIN_RUNS_DIR=$(CURDIR)/$(RUNS_DIR) $(BIN)/jupyter nbconvert --to notebook --execute \
		--ExecutePreprocessor.timeout=-1 --output-dir $(RUNS_DIR) --output $(notdir $(TRAIN_NOTEBOOK)) $(TRAIN_NOTEBOOK)
	@$(BIN)/python -c "$$PRINT_ACCURACY" $(RUNS_DIR)/metrics.json

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks

clean:
	rm -rf $(VENV) $(RUNS_DIR) .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +

# Reads the "test_accuracy" entry (a fraction from 0 to 1) of the metrics file named as the first argument.
define PRINT_ACCURACY
import json, sys
path = sys.argv[1]
try:
    with open(path) as file:
        metrics = json.load(file)
except FileNotFoundError:
    sys.exit(f"{path} not found: the training notebook must write its metrics there")
if "test_accuracy" not in metrics:
    sys.exit(f"{path} has no 'test_accuracy' entry; it contains {sorted(metrics)}")
profile = metrics.get("profile", "unknown")
recipe = metrics.get("recipe", "unknown")
print(f"Final test accuracy: {100 * metrics['test_accuracy']:.2f}% ({profile} profile, {recipe} recipe)")
endef
export PRINT_ACCURACY
