# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv (once), installs torch==2.13.0 first, then crosslens. Which
# build of torch comes is the index's choice: the project's machines serve the CPU
# wheel; on a stock machine PyPI's is the CUDA build (gigabytes), which
# `make TORCH_INDEX=https://download.pytorch.org/whl/cpu demo` avoids.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/crosslens demo

# Two workers, one per core of the project's machines; each
# file stays on one worker, so that its module-scoped fixtures are built once; the
# longest files go first, and each worker's torch keeps to its share of the cores
# (both in tests/conftest.py).
test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# ruff's lint and format checks over the checkout (pyproject.toml's [tool.ruff]); CI runs it
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info
