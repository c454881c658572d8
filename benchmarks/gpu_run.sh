#!/usr/bin/env bash
# benchmarks/gpu_step.py on a GPU machine that has Python 3.12 with torch, transformers, peft, accelerate, pluggy,
# pyyaml, rich, pyarrow, numpy, safetensors and tokenizers, but no network: installs the wheels carried in .whl/
# (pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, setuptools) and this
# repository itself, without dependencies, into $VCRD_SITE (so the `vcrd` entry points of the built-in plugins
# exist), then runs the benchmark; its log and JSON go to $OUT (the device tool's output folder; default out/).
#
# From the repository root:  bash benchmarks/gpu_run.sh [gpu_step.py arguments, e.g. --full-finetune]
#
# The wheels, fetched beforehand on a machine with a package index (Python 3.12, x86-64; a GPU machine whose
# Python has pydantic >= 2.14 and setuptools >= 77 needs none of them):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 typing-extensions==4.16.0 setuptools==78.1.1 [liger-kernel==0.8.5]
set -euo pipefail

SITE=${VCRD_SITE:-/tmp/site}
OUT=${OUT:-out}
mkdir -p "$OUT" "$SITE"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
fi
# the carried setuptools (>= 77: pyproject's SPDX license) builds the repository; nothing is downloaded
PYTHONPATH="$SITE" python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --upgrade --target "$SITE" .
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c "import importlib.metadata as m; print('vcrd entry points:', sorted(e.name for e in m.entry_points(group='vcrd')))"
python3 benchmarks/gpu_step.py --json "$OUT/gpu_step.json" "$@" 2>&1 | tee "$OUT/gpu_step.log"
