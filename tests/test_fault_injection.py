"""Every fault case of `scripts/faults/` as a test: the CI subset in the slow tier."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))

import faults  # noqa: E402
from faults.common import Scratch  # noqa: E402

CASES = faults.all_cases()


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("faults"))


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.fast], ids=lambda c: c.name)
def test_fault_holds(case, fault_root):
    case.run(Scratch(fault_root, case.name))


def test_case_names_are_unique_and_described():
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(c.expect and "\n" not in c.expect for c in CASES)
