# Two commands on a fresh machine:  make demo (the pruning job)  and  make test
# Both create the virtual environment .venv in the repository root on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-test demo test test-fast clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The library and its runtime dependencies.
$(VENV)/.base: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --editable .
	touch $@

# Plus the test and oracle stack (torch, torchvision, timm, zennit, lxt).
$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --editable '.[test]'
	touch $(VENV)/.base $@

setup: $(VENV)/.base
setup-test: $(VENV)/.test

demo: $(VENV)/.base
	$(VENV)/bin/pxp-prune --config=prune:model=resnet_digits --workdir=runs/resnet_digits

test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast subset: no oracle, job, wheel, notebook or multi-process test.
test-fast: $(VENV)/.test
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
