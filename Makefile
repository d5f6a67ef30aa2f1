# The two quick-start commands: `make demo` (the end-to-end simulated demo) and `make test`.
# Both install what is missing first (scripts/bootstrap.sh), so they work on a fresh machine.
export MUJOCO_GL ?= egl
export LP_NUM_THREADS ?= 1

.PHONY: bootstrap demo test test-all lint bench bench-7b

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/fanvla demo --out runs/demo

test: bootstrap
	.venv/bin/python -m pytest -m "not slow"

test-all: bootstrap
	.venv/bin/python -m pytest

lint: bootstrap
	.venv/bin/ruff check .

bench: bootstrap
	.venv/bin/python bench/run_all.py

# The full-size OpenVLA-7B path on random weights (slow, about an hour on 2 CPU cores; ~35 GB of disk in runs/).
bench-7b: bootstrap
	.venv/bin/python bench/run_all.py scale_7b
