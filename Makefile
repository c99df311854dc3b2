# `make demo` and `make test` each create .venv on a fresh machine (pip only), then run.
# torch is pinned to the CPU wheel on this path; on a GPU machine install torch + the `cu120` extra yourself.
# The `rtx` extra (TensorRT-RTX) builds real engines without a GPU: the engine stage of `make demo` uses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# TensorRT's Python bindings, 10.x and 11.x: downloaded, never installed (`import tensorrt` would half-work without
# the libraries); tests/runtime/test_trt_bindings_real.py loads them against stand-in libraries, or skips
TRT_BINDINGS := tensorrt-cu12-bindings==10.16.1.11 tensorrt-cu13-bindings==11.4.0.106

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[cpu,test,rtx,nuscenes]"
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d $(VENV)/trt-bindings \
		$(TRT_BINDINGS) || echo "could not download $(TRT_BINDINGS): the test that loads them will skip"
	touch $(STAMP)

# two test processes (pytest-xdist; a file's tests stay in one process, so its fixtures are built once) of one
# thread each: one thread is as fast as two on an idle 2-core machine, and several times faster when other jobs
# share the cores (BENCHMARKS.md); tests that need more threads set them themselves
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 TRT_CENTERPOINT_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/trt-centerpoint build --out build

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_spconv_threads.py

clean:
	rm -rf build .pytest_cache
