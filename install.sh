#!/usr/bin/env bash
# Create .venv with the exact versions CI uses. Idempotent: a second call takes seconds.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
stamp=.venv/.lungfusion-installed
if [ ! -f "$stamp" ] || [ requirements/ci.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    pip install --quiet --upgrade pip
    # The CPU build of torch from local disk; on a GPU machine install your CUDA build first.
    python -c "import torch" 2>/dev/null || pip install --quiet torch==2.13.0
    pip install --quiet -r requirements/ci.txt
    pip install --quiet --no-deps -e .
    touch "$stamp"
fi
echo "lungfusion environment ready in .venv"
