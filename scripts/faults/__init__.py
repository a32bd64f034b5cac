"""Fault injection: the faults a long cluster job meets, each set up for real and checked.

A case (`Case`) breaks something the way it breaks in practice (a truncated params file, a
second trainer on the same workdir, Ctrl-C, a NaN step, garbage bytes in a shard), runs the
real binaries as subprocesses, and raises `NotHeld` saying what went wrong when the run does
not behave as the README promises. `scripts/fault_injection.py` runs them and prints
``N/N faults held``; `tests/test_fault_injection.py` runs each as a test.

Cases live in the modules of this package (one per area), each listing its cases in
``CASES``; `all_cases()` collects them, so the runner keeps no list.
"""

import dataclasses
import importlib
import pkgutil
from typing import Callable

from faults.common import NotHeld, Scratch  # noqa: F401  (re-exported for case modules)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    fast: bool            # part of the CI subset (seconds, not minutes)
    run: Callable[[Scratch], None]
    expect: str           # one line: what the user should see after this fault


def all_cases() -> list[Case]:
    """Every case of every module of this package, in module then listing order."""
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "common":
            cases += importlib.import_module(f"faults.{info.name}").CASES
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise AssertionError(f"fault case names repeat: {names}")
    return cases
