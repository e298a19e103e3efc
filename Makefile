# make demo | make test | make test-fast | make bench | make lint
# Each target creates .venv with python3 -m venv, installs torch==2.13.0 first (the CPU
# wheel on this machine's disk), then the package with the extras the job needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
EXTRAS_DEMO := tflite
EXTRAS_TEST := dev,tflite,onnx,keras,plot

.PHONY: demo test test-fast bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	touch $@

$(VENV)/.installed-%: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[$*]" $(TORCH)
	touch $@

demo: $(VENV)/.installed-$(EXTRAS_DEMO)
	$(BIN)/mobilenets table
	$(BIN)/mobilenets profile --alpha 0.6 --resolution 200

test: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/python benchmarks/run_all.py

lint: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
