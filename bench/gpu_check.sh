#!/usr/bin/env bash
# The GPU check for a lent device: attention parity (flash-attn vs SDPA), `rollforge bench stream` at
# the Wan2.1-1.3B shape (rolling, block_ar; 30 s and 600 s of video under a wall-clock cap) and one
# DMD generator step's MFU. Prints ONE JSON object, the last line of stdout; about 8 minutes on one
# H100/H200. `--dry-run`: tiny shapes on CPU, seconds. Other flags: python bench/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
elif command -v python3 >/dev/null; then
    py=python3
else
    py=python
fi
export PYTHONUNBUFFERED=1
exec "$py" bench/gpu_check.py "$@"
