#!/usr/bin/env bash
# Refresh the lock: requirements/lock.txt pins every transitive dependency of the project and its
# `dev` extra (torch's CPU build included) for the platform CI tests, Python 3.11 on Linux x86-64;
# requirements/lock-without-torch.txt is the same resolution without the torch line, for a CUDA
# build of torch installed beforehand. Both come from one uv resolution (`uv pip compile`).
#
#   tox -e lock                       # or: bash scripts/lock.sh, with uv on PATH
#
# torch's CPU wheels are not on PyPI: TORCH_WHEELS names a folder (or a page of links) holding
# them. Left unset, pip's configured find-links is used when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${TORCH_WHEELS:-$(python -m pip config get global.find-links 2>/dev/null || true)}
if [ -z "$wheels" ]; then
    echo "scripts/lock.sh: set TORCH_WHEELS to a folder holding torch's CPU wheel, e.g. one filled by" >&2
    echo "  pip download --no-deps -d wheels 'torch==2.13.0' --index-url <PyTorch's CPU wheel index>" >&2
    exit 2
fi
compile() {
    UV_CUSTOM_COMPILE_COMMAND="tox -e lock" uv pip compile pyproject.toml requirements/lock.in \
        --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --find-links "$wheels" --quiet "$@"
}
compile -o requirements/lock.txt
compile --no-emit-package torch -o requirements/lock-without-torch.txt
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins) and requirements/lock-without-torch.txt"
