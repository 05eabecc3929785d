# Two entry points, each working on a fresh machine: `make demo` and `make test`.
# The virtual environment is created and filled once; later runs skip straight to the work.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo evaluate test lint setup clean-demo docs-images gpu-check app

setup: $(STAMP)

# The installer: uv (from PyPI, a second) unpacks and byte-compiles the requirements in ~50 s, where make setup
# with pip took 103 s (the CUDA torch wheel unpacks to 5.5 GB; docs/results.md); plain pip is the fallback wherever
# uv cannot be installed or fails. uv does not read pip's config, so the folders where this project's build
# machines keep the pinned torch wheels are passed to it when they exist (elsewhere uv downloads them, as pip would).
WHEEL_DIRS := $(wildcard /opt/pypi-more/files /opt/pypi/files)
UV := $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(foreach d,$(WHEEL_DIRS),--find-links $(d))
PIP := $(PY) -m pip install --quiet

# facenet-pytorch is the face detector (MTCNN, its weights inside the wheel). --no-deps: its declared pins (torch<2.3,
# torchvision<0.18, numpy<2, Pillow<10.3) are stale and would replace ours; it runs with them (tests/test_align.py).
$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if $(PIP) uv==0.13.9 && $(UV) -r requirements.txt; then \
		$(UV) --no-deps facenet-pytorch==2.6.0 && $(UV) --no-deps -e .; \
	else \
		$(PIP) -r requirements.txt && $(PIP) --no-deps facenet-pytorch==2.6.0 && \
		{ $(PIP) --no-deps --no-build-isolation -e . || $(PIP) --no-deps -e .; }; \
	fi
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# The full evaluation of the demo's runs: scripts/evaluate.py's defaults are the three synthetic runs, judged by
# runs/predictor/synthetic-judge, into runs/evaluation (the demo runs a short one). Glow's pose as the demo edits it
# (its mean direction: at the demo's budget its cflow measured no closer to the rendered turn, docs/results.md);
# without --pose-method the evaluation would first fit that flow (minutes).
evaluate: $(STAMP)
	$(PY) scripts/evaluate.py --pose-method glow=mean

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check .

clean-demo:
	rm -rf data/synthetic data/cache runs/demo runs/evaluation runs/evaluation-short runs/predictor/synthetic \
		runs/predictor/synthetic-judge runs/vae/synthetic runs/glow/synthetic runs/pggan/synthetic

# Refresh the README's pictures from the demo's runs (after `make demo`).
docs-images: $(STAMP)
	$(PY) scripts/docs_images.py

# GPU readiness (docs/gpu.md): on a CUDA machine, at most 8 minutes; one JSON report and a printed table.
# Where pip cannot reach PyPI but a python with CUDA torch is installed: make gpu-check PY=python3 STAMP=
# Extra options go in GPU_CHECK_ARGS, e.g. GPU_CHECK_ARGS="--out /tmp/report.json" or "--device cpu --quick".
gpu-check: $(STAMP)
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY) scripts/gpu_check.py --out runs/gpu_check/report.json $(GPU_CHECK_ARGS)

# The interactive editor (docs/editor.md) on the demo's runs (after `make demo`), at http://127.0.0.1:7860.
# Extra options go in APP_ARGS, e.g. APP_ARGS="--port 8080" or "--host 0.0.0.0" (other machines can reach it).
app: $(STAMP)
	$(PY) scripts/app.py --runs runs/vae/synthetic runs/glow/synthetic runs/pggan/synthetic $(APP_ARGS)
