#!/usr/bin/env bash
# mgen GPU check (issue 15): one command, under 8 minutes on one H100/H200.
#   bash benchmarks/gpu/run.sh            # on the GPU machine; writes benchmarks/gpu/results/results.{json,md}
#   bash benchmarks/gpu/run.sh --dry-run  # on a CPU: tiny shapes, same code path (tests/test_gpu_check.py)
# Extra arguments go to benchmarks/gpu/gpu_check.py (--out DIR, --budget-s S, --sections a,b,...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
cd "$root"
if [ "${1:-}" != "--dry-run" ]; then
  "$py" - <<'PY' || { echo "run.sh: no CUDA device visible (use --dry-run on a CPU)"; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout 470 "$py" "$here/gpu_check.py" "$@"
