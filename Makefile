# make demo | make test | make test-fast | make bench | make lint
# Each target creates .venv with python3 -m venv, installs torch==2.13.0 first (the CPU
# wheel on this machine's disk), then the package with the extras the job needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
EXTRAS_DEMO := tflite
EXTRAS_TEST := dev,tflite,litert,onnx,openvino,keras,coco,serve,plot,train

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

# The demo photo and, for machines without internet, Google's float 0.25_224 file.
IMAGE      ?= ../shared/data/images/grace_hopper.bmp
OFFLINE_WEIGHTS ?= ../shared/data/models/mobilenet_v1_0.25_224_1_default_1.tflite

demo: $(VENV)/.installed-$(EXTRAS_DEMO)
	$(BIN)/mobilenets table
	@echo
	@echo '$$ mobilenets classify $(IMAGE)    # default model, official weights (downloaded once)'
	@$(BIN)/mobilenets classify $(IMAGE) || { \
	  if [ -f $(OFFLINE_WEIGHTS) ]; then \
	    echo '(no download possible; classifying with a local Google file instead:)'; \
	    echo '$$ mobilenets classify $(IMAGE) --weights $(OFFLINE_WEIGHTS)'; \
	    $(BIN)/mobilenets classify $(IMAGE) --weights $(OFFLINE_WEIGHTS); \
	  else exit 1; fi; }

test: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/python benchmarks/deploy_accuracy.py
	$(BIN)/python benchmarks/deploy_speed.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/torch_speed.py
	$(BIN)/python benchmarks/detect_speed.py
	$(BIN)/python benchmarks/segment_speed.py

lint: $(VENV)/.installed-$(EXTRAS_TEST)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
