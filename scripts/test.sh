#!/usr/bin/env bash
# The test command: installs what the tests need, then runs them (real Mosquitto processes, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PATH:/usr/sbin"
.venv/bin/python -m ruff check gateway tests bench
.venv/bin/python -m mypy gateway
.venv/bin/python -m pytest "$@"
