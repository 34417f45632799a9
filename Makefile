# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv (once), installs torch==2.13.0 first (a CPU wheel; an
# unpinned torch would pull gigabytes of CUDA packages), then crosslens.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/crosslens demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info
