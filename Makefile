# SIGMA monitor. Quick start: `make run` (set-up, build, start sigmad) and
# `make test` (set-up, build, every test). See README.md.
BUILD_DIR   ?= build
BUILD_TYPE  ?= RelWithDebInfo
SIGMA_WITH_CUDA ?= AUTO
JOBS        ?= $(shell nproc)
VENV        ?= .venv
CMAKE_FLAGS ?=
SIGMAD_ARGS ?=

PYTHON := $(abspath $(VENV))/bin/python
SIGMAD := $(abspath $(BUILD_DIR))/server/sigmad
SHARED_DIR ?= $(abspath ../shared)

.PHONY: all deps configure build test check test-cpp test-python run bench demo clean help

all: build

help:
	@echo "make deps      install missing Debian packages and the Python venv ($(VENV))"
	@echo "make build     configure and build into $(BUILD_DIR) (SIGMA_WITH_CUDA=$(SIGMA_WITH_CUDA))"
	@echo "make test      build, then every test (ctest, pytest); CI runs this"
	@echo "make check     build, then the fast tier: C++ unit, server and emulated tests (no slow/fuzz, no pytest)"
	@echo "make run       build, then sigmad in the foreground on the defaults"
	@echo "make bench     build, then the benchmarks (see docs/benchmarks.md)"
	@echo "make demo      simulated S1/S2 recursion streamed through the Python client"

deps:
	@SIGMA_VENV=$(VENV) bash scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DSIGMA_WITH_CUDA=$(SIGMA_WITH_CUDA) -DSIGMA_SHARED_DIR=$(SHARED_DIR) \
	  -DSIGMA_TEST_PYTHON=$(PYTHON) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	@$(MAKE) --no-print-directory test-cpp test-python

# The edit-compile-test loop: every ctest case except the slow crash loop and
# the fuzzers (about a third of `make test`'s time). CI runs `make test`.
check: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 600 -LE "slow|fuzz"

test-cpp:
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 600

PYTEST_DIRS := $(wildcard tests/python tests/experiments tests/deploy tests/e2e tests/load)

test-python:
	@SIGMA_VENV=$(VENV) bash scripts/deps.sh --test-extras
	@if [ -d client/python ]; then \
	  $(PYTHON) -m pip install -q --disable-pip-version-check --no-build-isolation -e client/python >/dev/null; fi
	@SIGMAD=$(SIGMAD) SIGMACTL=$(abspath $(BUILD_DIR))/client/cli/sigmactl \
	  SIGMA_SHARED_DIR=$(SHARED_DIR) $(PYTHON) -m pytest -q $(PYTEST_DIRS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

run: build
	@mkdir -p var
	@echo "sigmad: clients connect to 127.0.0.1:50051 (gRPC); Prometheus scrapes http://127.0.0.1:9464/metrics"
	$(SIGMAD) $(SIGMAD_ARGS)

bench: build
	@bash bench/run.sh $(BUILD_DIR)

demo: build
	@$(PYTHON) -m pip install -q --disable-pip-version-check --no-build-isolation -e client/python >/dev/null
	@SIGMAD=$(SIGMAD) $(PYTHON) -m sigma_client.demo

clean:
	rm -rf $(BUILD_DIR)
