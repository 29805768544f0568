# Two commands do all the set-up on a fresh machine:
#   make demo   -> installs into .venv, then compares learning rules on MNIST
#   make test   -> installs into .venv, then runs the test suite
#   make docs   -> builds the API reference (docs/api/*.md) from the docstrings
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Shared datasets beside the checkout are used when present (see README, "Data").
export BIOPLAUSIBLE_DATA ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),)

.PHONY: install demo test docs examples bench gpu-check lint clean

$(BIN)/bioplausible: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build first: a pinned torch keeps pip from fetching a multi-GB CUDA wheel.
	$(BIN)/pip install -q "torch==$${TORCH_VERSION:-2.13.0}" || $(BIN)/pip install -q "torch>=2.2"
	# [sweep] (Ray, Optuna) too, so that the tests exercise the Ray executor and tune for real.
	$(BIN)/pip install -q -e ".[test,sweep]"
	touch $(BIN)/bioplausible

install: $(BIN)/bioplausible

demo: install
	$(BIN)/bioplausible compare --dataset mnist --model mlp:784-500-10 --loss cross_entropy \
		--lr 0.05 --rules bp,fa,dfa,kp,usf --epochs 3 --batch-size 100 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

docs: install
	$(BIN)/python docs/build_api.py --out docs/api

examples: install
	BIOPLAUSIBLE_EXAMPLE_TINY=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/test_examples.py

bench: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_bp.py

# On a machine with CUDA: the CUDA tests and one epoch of each paper-scale row on the GPU, in
# under ten minutes -> benchmarks/results/gpu_check.{json,md}. Without CUDA: one line, status 2.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

lint: install
	$(BIN)/pip install -q ruff && $(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
