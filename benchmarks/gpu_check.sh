#!/usr/bin/env bash
# The GPU check in one command, from a copy of the working tree on a machine without internet:
#   bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --out gpu_check.json]
# Without .venv it creates one from the wheels in $WHEELS (default wheels/; see
# benchmarks/README.md, "gpu_check.py", for how to download them), then runs
# benchmarks/gpu_check.py under a hard limit of $GPU_CHECK_TIMEOUT seconds (default 480); the JSON
# keeps every section finished before a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
wheels="${WHEELS:-wheels}"
if [ ! -x .venv/bin/python ]; then
  if [ ! -d "$wheels" ]; then
    echo "gpu_check.sh: no .venv and no $wheels/ folder (see benchmarks/README.md, gpu_check.py)" >&2
    exit 2
  fi
  echo "== offline install from $wheels/" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --no-index --find-links "$wheels" torch -e '.[test]'
fi
. .venv/bin/activate
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "available:", torch.cuda.is_available())' >&2
exec timeout --signal=TERM --kill-after=30 "${GPU_CHECK_TIMEOUT:-480}" \
  python benchmarks/gpu_check.py "$@"
