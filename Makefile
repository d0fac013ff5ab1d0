# make demo   - the main job: train on a generated VOC-format dataset, evaluate, draw
# make test   - the test suite (TensorFlow), then the model/layer/loss tests on JAX and PyTorch
# Both create .venv on first use and install what they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo info test test-tf test-backends bench clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -e ".[test,jax,torch]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python ssd_training.py --demo

info: $(STAMP)
	$(BIN)/python -m ssd300 info

test: test-tf test-backends

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q

test-backends: $(STAMP)
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -m backend
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q -m backend

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
