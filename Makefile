# Common jobs. `make demo` and `make test` do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed
LINT_PATHS := $(wildcard detcon tests scripts benchmarks)

.PHONY: install test lint format demo figures bench bench-gpu slurm-up slurm-down clean-venv

# The package needs Python >= 3.11 (pyproject.toml); an older interpreter is refused by name.
NEED_PY := import sys; sys.exit(sys.version_info < (3, 11))

# A venv that failed half-way (Debian without python3-venv: no pip) is removed, not reused.
$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: no $(PYTHON) on PATH; detcon needs" \
	  "Python >= 3.11: make PYTHON=python3.11 ..." >&2; exit 1; }
	@$(PYTHON) -c '$(NEED_PY)' || { echo "make: $(PYTHON) is Python" \
	  "$$($(PYTHON) -c 'import platform; print(platform.python_version())'); detcon needs" \
	  ">= 3.11: make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# Re-install when the package metadata or the pins change.
$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	@$(BIN)/python -c '$(NEED_PY)' || { echo "make: $(VENV) was made with Python" \
	  "$$($(BIN)/python -c 'import platform; print(platform.python_version())'); detcon needs" \
	  ">= 3.11: make clean-venv, then make PYTHON=python3.11 ..." >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name detcon-venv --display-name "detcon (.venv)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

format: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

test: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The demo writes only under runs/ (ignored): its figures go to runs/demo/figures/, its index page
# is runs/demo/index.html, so a fresh clone stays clean.
DEMO_FIGURES := runs/demo/figures
demo: $(STAMP)
	$(BIN)/detcon masks quality --profile cpu --quiet --out $(DEMO_FIGURES)/mask_quality.csv
	$(BIN)/detcon run ablations/demo.yaml --profile cpu --executor local --lanes 3
	$(BIN)/detcon report ablations/demo.yaml --profile cpu --figures-dir $(DEMO_FIGURES)

# Figures of the committed study: every ablation exported to results/ (`detcon export`), drawn
# from results/ alone into figures/, index pages and executed report notebooks in
# results/<ablation>/; then the claims table of RESULTS.md from results/<ablation>.csv.
figures: $(STAMP)
	$(BIN)/detcon figures --notebooks
	$(BIN)/detcon claims

# Benchmarks print their figures (docs/performance.md); the bench extra adds lightly, the loss
# benchmark's peer (benchmark-only, never a runtime dependency).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@for b in loss step augment masks ddp; do $(BIN)/python benchmarks/bench_$$b.py || exit 1; done

# A GPU machine often has its own torch build and no package index: without a venv here the
# script runs on the machine's python3 (it needs torch, torchvision, scikit-image, PyYAML, tqdm).
bench-gpu:
	@if [ -x $(BIN)/python ]; then py=$(BIN)/python; else py=python3; \
	  $$py -c 'import torch' 2>/dev/null || { echo "bench-gpu: no $(VENV) and no torch in" \
	    "python3: run make install first" >&2; exit 1; }; \
	  echo "bench-gpu: no $(VENV) here; running on $$(command -v python3)"; fi; \
	  PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $$py benchmarks/bench_gpu.py

slurm-up:
	bash scripts/slurm-up.sh

slurm-down:
	bash scripts/slurm-down.sh

clean-venv:
	rm -rf $(VENV)
