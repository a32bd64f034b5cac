#!/usr/bin/env bash
# The test suite (CPU only; 8 fake devices). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
