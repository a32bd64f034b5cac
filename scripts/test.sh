#!/usr/bin/env bash
# The test suite (CPU only; 8 fake devices per process). Extra arguments go to pytest.
# TEST_WORKERS pytest processes (default 2, one per core; 0 = in this process) share the test
# files: each file stays in one process, so its module fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
