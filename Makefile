# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second environment with every direct dependency at its declared floor (constraints-lowest.txt).
LOWVENV := .venv-lowest
LOWBIN := $(LOWVENV)/bin
LOWSTAMP := $(LOWVENV)/.installed

.PHONY: venv demo test test-lowest test-all lint format typecheck bench reproduce docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 -c constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

$(LOWSTAMP): pyproject.toml constraints-lowest.txt
	$(PY) -m venv $(LOWVENV)
	$(LOWBIN)/python -m pip install --quiet --upgrade pip
	$(LOWBIN)/python -m pip install --quiet torch==2.13.0 -c constraints-lowest.txt
	$(LOWBIN)/python -m pip install --quiet -c constraints-lowest.txt -e ".[all,dev,hf]"
	touch $(LOWSTAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/subspaces analyze --out runs/demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The test suite on the lowest versions that pyproject.toml declares.
test-lowest: $(LOWSTAMP)
	$(LOWBIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	bash benchmarks/setup_anchors.sh
	$(BIN)/python benchmarks/linalg_eigs.py
	$(BIN)/python benchmarks/linalg_trace.py
	$(BIN)/python benchmarks/curvature_eigs.py
	$(BIN)/python benchmarks/curvature_hvp.py
	$(BIN)/python benchmarks/curvature_trace_density.py
	$(BIN)/python benchmarks/similarity_cka.py
	$(BIN)/python benchmarks/sketch_leverage.py
	$(BIN)/python benchmarks/recovery_completion.py
	$(BIN)/python benchmarks/recovery_sensing.py
	$(BIN)/python benchmarks/recovery_robust.py
	$(BIN)/python benchmarks/similarity_layer_matrix.py
	$(BIN)/python benchmarks/optim_refresh.py
	$(BIN)/python benchmarks/optim_lm.py
	$(BIN)/python benchmarks/steering_extraction.py

# The documentation site with the API reference generated from the docstrings (mkdocstrings).
docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	$(BIN)/mkdocs build -d site

reproduce: $(STAMP)
	$(BIN)/subspaces reproduce --all --out runs/reproduce

clean:
	rm -rf $(VENV) $(LOWVENV) build dist site .pytest_cache .mypy_cache .ruff_cache
