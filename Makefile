# Every target creates .venv on first use: torch==2.13.0 first (a CPU build), then the package
# with the dev and app extras (neurode.app needs tqdm, matplotlib, scikit-learn).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.neurode-installed

.PHONY: setup demo test test-fast test-gpu lint format bench reproduce clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,app]"
	touch $(STAMP)

demo: setup  ## the main job: train a small ODE-ResNet with each gradient method and compare
	$(PY) -m neurode demo

test: setup  ## the whole suite, slow end-to-end checks included
	$(PY) -m pytest -q

test-gpu: setup  ## the checks that need a CUDA device (a few minutes on one GPU)
	$(PY) -m pytest -q -m cuda tests/test_cuda.py

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup  ## peers (torchdiffeq, torchode) are installed only here
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/memory.py

reproduce: setup
	$(PY) -m neurode reproduce --out reproduce-out

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info
