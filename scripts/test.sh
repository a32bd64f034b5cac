#!/usr/bin/env bash
# The test suite on CPU (8 fake devices per process). Extra arguments go to pytest.
#   scripts/test.sh                  the fast tier: every test not marked slow (about 5 minutes)
#   TEST_TIER=slow scripts/test.sh   the slow tier: end-to-end runs, binaries, PyTorch parity
#   TEST_TIER=all scripts/test.sh    both
# TEST_WORKERS pytest processes (default 2, one per core; 0 = in this process) share the test
# files: each file stays in one process, so its module fixtures are built once. Compiled
# programs are cached in .pytest_cache/jax_compilation_cache (tests/conftest.py), shared by
# the processes, the binaries the tests start, and later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
case "${TEST_TIER:-fast}" in
  fast) tier=(-m "not slow") ;;
  slow) tier=(-m slow) ;;
  all) tier=(-m "") ;;
  *) echo "error: TEST_TIER=${TEST_TIER}: choose fast, slow or all" >&2; exit 2 ;;
esac
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "${tier[@]}" "$@"
