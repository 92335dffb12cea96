#!/usr/bin/env bash
# Run tools/gpu_check.py on a bare GPU machine that has python3 with torch (2.11 or later), torchvision,
# opencv-python and scikit-image, but not basicsr, lmdb, mmengine, addict or yapf, and no network.
#
# The missing packages come as wheels from .whl/ at the repository root (ignored by git). Fill it on a
# machine with this project's .venv and a network, from the repository root:
#
#   mkdir -p .whl
#   .venv/bin/pip wheel --no-deps --no-build-isolation -w .whl basicsr==1.4.2      # PyPI has only its sdist
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl lmdb mmengine==0.10.7 addict yapf
#
# (--python-version: the GPU machine's python3; lmdb is the one compiled wheel.) If the import check
# below names another module (rich, termcolor or platformdirs, which mmengine and yapf import), add its
# wheel the same way. Then copy the repository with .whl/ to the GPU machine and run, from its root:
#
#   tools/gpu_check.sh                      # into results/gpu_check, or into $OUT when set
#   tools/gpu_check.sh --budget-s 300       # any option of tools/gpu_check.py
#
# Exit status: tools/gpu_check.py's (0: every correctness and distributed check passed), or 3 when the
# wheels are missing or do not import.
set -euo pipefail
cd "$(dirname "$0")/.."

site=/tmp/site
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl
else
    echo "tools/gpu_check.sh: no wheels in .whl/ (see this script's header for how to fill it)" >&2
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! python3 -c "import basicsr, lmdb, mmengine.analysis, erl_plugin" 2>/tmp/gpu_check_import.txt; then
    echo "tools/gpu_check.sh: the packages do not import: $(tail -n 1 /tmp/gpu_check_import.txt)" >&2
    exit 3
fi
exec python3 tools/gpu_check.py --out "${OUT:-results/gpu_check}" "$@"
