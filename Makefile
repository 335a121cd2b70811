# Two commands do all set-up on a fresh machine:
#   make demo   train configs/demo.yaml under torchrun (2 CPU processes)
#   make test   run the test suite
# Both create (or reuse) the virtual environment from requirements.txt first.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.linnaeus-installed
NPROC   ?= 2
DEMO_OPTS ?=
# Test files run on this many pytest-xdist workers (one file stays on one worker, so its module
# fixtures are shared): most tests wait on the training processes they start, one core each.
TEST_WORKERS ?= 2

.PHONY: venv demo test bench clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: venv
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) tools/train.py --cfg configs/demo.yaml $(if $(DEMO_OPTS),--opts $(DEMO_OPTS),)

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Every benchmark, one table of ratios against their targets, kept in benchmarks/results/ (BENCH_OPTS=--quick).
bench: venv
	$(PY) benchmarks/bench.py $(BENCH_OPTS)

clean-venv:
	rm -rf $(VENV)
