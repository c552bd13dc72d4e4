# Every target does its own set-up: a virtual environment in .venv with torch==2.13.0 installed
# first (the CPU wheel; any other resolution would pull a multi-GB CUDA build), then the project.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ckpthooks-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test crash-test lint typecheck check clean docs xla-venv xla-test bench bench-quick

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

DOCS_STAMP := $(VENV)/.ckpthooks-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

## Build the docs site into site/; any warning fails (the hook reference is generated during the build).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

DEMO_STAMP := $(VENV)/.ckpthooks-demo-installed

# The demo needs torch and ckpthooks only: a first `make demo` installs no test tools.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .
	touch $(DEMO_STAMP)

## Run the main job: train, get killed, resume from "last", compare with an uninterrupted run.
demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

PLUGINS := plugins/ckpthooks-safetensors plugins/ckpthooks-dcp plugins/ckpthooks-xla

## Run the default test suite: the core, then each plugin package's own tests.
test: $(STAMP)
	$(PY) -m pytest -q -n 2
	for plugin in $(PLUGINS); do $(PY) -m pytest -q $$plugin/tests || exit 1; done

## Crash consistency: 100 SIGKILL trials during saves, manifest writes and pruning
## (the default test run does 20).
crash-test: $(STAMP)
	CKPTHOOKS_CRASH_TRIALS=$${CKPTHOOKS_CRASH_TRIALS:-100} $(PY) -m pytest -q -s tests/test_crash_consistency.py -m crash

## The benchmark suite: ratios against torch.save, Lightning and safetensors (docs/performance.md).
bench: $(STAMP)
	$(PY) -m benchmarks.run --size full

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --size quick

XLA_VENV ?= .venv-xla
XLA_PY := $(XLA_VENV)/bin/python
XLA_STAMP := $(XLA_VENV)/.ckpthooks-xla-installed
XLA_TORCH_SPEC ?= torch==2.9.0
XLA_SPEC ?= torch-xla==2.9.0

## The XLA lane's environment (about 7 GB): torch and torch-xla 2.9.0, then ckpthooks and the plugin.
$(XLA_STAMP): pyproject.toml plugins/ckpthooks-xla/pyproject.toml
	test -x $(XLA_PY) || $(PYTHON) -m venv $(XLA_VENV)
	$(XLA_PY) -m pip install --quiet --upgrade pip "setuptools>=77"
	$(XLA_PY) -m pip install --quiet "$(XLA_TORCH_SPEC)" "$(XLA_SPEC)"
	$(XLA_PY) -m pip install --quiet pytest -e . -e plugins/ckpthooks-xla
	$(XLA_PY) -c "import torch, torch_xla; assert torch.__version__.split('+')[0] == '$(XLA_TORCH_SPEC)'.split('==')[1], torch.__version__"
	touch $(XLA_STAMP)

xla-venv: $(XLA_STAMP)

## The XLA lane: the ckpthooks-xla tests against real torch_xla on the CPU.
xla-test: $(XLA_STAMP)
	PJRT_DEVICE=CPU $(XLA_PY) -m pytest -q plugins/ckpthooks-xla/tests

lint: $(STAMP)
	$(PY) -m ruff check ckpthooks tests examples benchmarks docs/_gen_hooks.py $(PLUGINS)
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(PY) -m mypy
	for plugin in $(PLUGINS); do $(PY) -m mypy $$plugin/$$(basename $$plugin | tr - _) || exit 1; done
	$(PY) -m mypy examples/ckpthooks-example-storage/src/ckpthooks_example_storage

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
