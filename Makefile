# Two commands: `make train` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test bench clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

train: $(VENV)/.runtime  ## train the default model, test it, export a SavedModel
	$(PY) -m keras_adder.train $(ARGS)

test: $(VENV)/.dev  ## run the whole test suite (trains small models on real MNIST)
	$(PY) -m pytest $(ARGS)

bench: $(VENV)/.runtime  ## training/pipeline/serving benchmark, writes bench.json
	$(PY) -m keras_adder.bench $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
