# Two commands: `make train` and `make test`; `make demo` is optional. Each creates .venv
# and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The oldest TensorFlow the docs promise to load the SavedModel (docs/serving-versions.md).
COMPAT_VENV := .venv-serving-compat
ARGS ?=

.PHONY: train test system-tools bench demo serving-compat clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# LiteRT and ONNX exports (python -m keras_adder.export --format litert|onnx): optional.
$(VENV)/.export: $(VENV)/.runtime requirements-export.txt
	$(PY) -m pip install --quiet -r requirements-export.txt
	touch $@

$(COMPAT_VENV)/.installed: requirements-serving-compat.txt
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install --quiet -r requirements-serving-compat.txt
	touch $@

train: $(VENV)/.runtime  ## train the default model, test it, export a SavedModel
	$(PY) -m keras_adder.train $(ARGS)

# The optional browser demo (Gradio) and Playwright for its browser test.
$(VENV)/.demo: $(VENV)/.runtime requirements-demo.txt
	$(PY) -m pip install --quiet -r requirements-demo.txt
	touch $@

# What the tests need from outside pip (Python 3.11, Graphviz's dot, a Chromium for
# Playwright), checked before the installs below: installed with apt-get as root on
# Debian/Ubuntu (Ubuntu: Graphviz only), else named one line each. `make train` needs none.
system-tools:
	@sh tests/system_tools.sh "$(PYTHON)" "$(VENV)" "$(COMPAT_VENV)"

test: system-tools $(VENV)/.dev $(VENV)/.export $(VENV)/.demo $(COMPAT_VENV)/.installed  ## run the whole test suite (trains small models on real MNIST)
	$(PY) -m pytest $(ARGS)

# Handwritten digits that are not MNIST, for serving_image's accuracy in the bench:
# tests/handwriting.py makes them from the digits that pyclustering and scikit-learn ship
# (requirements-dev.txt, hence .dev); the bench itself imports neither. Written once, again
# when the script changes; labels.csv comes last, so a broken build is redone.
PICTURES := build/handwriting
$(PICTURES)/labels.csv: tests/handwriting.py $(VENV)/.dev
	rm -rf $(PICTURES)
	$(PY) tests/handwriting.py $(PICTURES)

bench: $(VENV)/.export $(PICTURES)/labels.csv  ## training/recipes/pipeline/serving benchmark, writes bench.json
	$(PY) -m keras_adder.bench --pictures $(PICTURES) $(ARGS)

serving-compat: $(VENV)/.runtime  ## SavedModel vs TensorFlow 2.12-2.21 (TF Serving's loader)
	$(PY) serving_compat/matrix.py $(ARGS)

demo: $(VENV)/.demo  ## the browser demo over the newest SavedModel: http://127.0.0.1:7860
	$(PY) -m keras_adder.demo $(ARGS)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build runs .pytest_cache
