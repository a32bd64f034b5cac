"""Runs every fault case (`scripts/faults/`) and prints ``N/N faults held``.

    python scripts/fault_injection.py            # every case
    python scripts/fault_injection.py --fast     # the CI subset
    python scripts/fault_injection.py --only lock_held_by_a_live_trainer sigint_saves

Each case breaks something for real (files, signals, a second trainer, bad records) and runs
the real binaries; a case that is not handled as the README promises prints why. Exit code 0
when every case held, 1 otherwise.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faults  # noqa: E402
from faults.common import NotHeld, Scratch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="only the CI subset")
    parser.add_argument("--only", nargs="*", default=(), help="case names to run")
    parser.add_argument("--keep", default="", help="keep scratch folders under this path")
    args = parser.parse_args()
    cases = [c for c in faults.all_cases() if (not args.fast or c.fast)
             and (not args.only or c.name in args.only)]
    unknown = set(args.only) - {c.name for c in faults.all_cases()}
    if unknown:
        print(f"error: --only: no case {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    root = args.keep or tempfile.mkdtemp(prefix="faults_")
    held = 0
    for case in cases:
        start = time.perf_counter()
        try:
            case.run(Scratch(root, case.name))
        except NotHeld as e:
            print(f"NOT HELD  {case.name}: {e}", flush=True)
        else:
            held += 1
            print(f"held      {case.name} ({time.perf_counter() - start:.0f} s): {case.expect}",
                  flush=True)
    print(f"{held}/{len(cases)} faults held")
    return 0 if held == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
