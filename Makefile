# Two entry points, each working on a fresh machine: `make demo` and `make test`.
# The virtual environment is created and filled once; later runs skip straight to the work.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean-demo docs-images

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check .

clean-demo:
	rm -rf data/synthetic data/cache runs/demo

# Refresh the README's pictures from the demo's runs (after `make demo`).
docs-images: $(STAMP)
	$(PY) scripts/docs_images.py
