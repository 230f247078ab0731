# make demo: create .venv if needed, install, run the embedded demo sweep, print where results are.
# make test: create .venv if needed, install with test extras, lint (ruff), run the suite (all but the
#            multi-node tests and the end-to-end fault tests marked `faults`, which `make cluster-test`
#            runs; .ci/run runs both). Tests marked gpu are skipped where there is no CUDA device.
# make test-gpu: on a GPU machine, the tests that need CUDA (marked gpu: the CUDA-graph steps).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stablesweep-installed
DEMO_OUT ?= demo-out
# test files run in this many processes (pytest-xdist; a file's tests stay together, sharing its
# module fixtures): most of the suite waits on Ray, subprocesses and sqlite (2 processes kept 2 cores
# under half busy), so 3 on 2 cores (4 were slower: a fresh clone 12m36s against 11m43s). A fresh
# clone, idle 2-core machine: 8m04s in all, the suite 6m14s, 725 tests (2026-12-05)
TEST_WORKERS ?= 3

.PHONY: demo test test-gpu lint cluster-test install clean stable-template

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO_OUT)/demo
	$(BIN)/stablesweep sweep configs/demo.yaml --space search_spaces/quick.yaml --out $(DEMO_OUT) --name demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not faults"

test-gpu: $(STAMP)
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: no CUDA device here')"
	$(BIN)/python -m pytest -m gpu

# The multi-node tests: a second (and third) Ray node by `ray start` on loopback (~8 min), and Ray's
# own launcher end to end (ray up of a head and a worker through a test sshd, ~5 min); the end-to-end
# fault tests (marked faults: a driver SIGKILLed, or sent Ctrl-C or SIGTERM mid-run, while its MLflow
# store is made, while Ray starts or shuts down; a full or read-only --out, a failed data-parallel
# worker, two sweeps into one --out; each then resumed or run again once; ~7 min); then a
# fixed-seed sample of bench/chaos.py: one round of each fault, each resumed once and checked
# exactly once (~8 min on 2 cores; the disk faults need root, for their tmpfs mounts)
cluster-test: $(STAMP)
	STABLESWEEP_CLUSTER_TEST=1 $(BIN)/python -m pytest tests/cluster/test_two_node.py tests/cluster/test_launcher.py
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m faults
	$(BIN)/python bench/chaos.py --rounds 6 --seed 0

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(DEMO_OUT) runs .pytest_cache

stable-template: $(STAMP)
	$(BIN)/python scripts/make_stable_template.py
