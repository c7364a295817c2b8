"""Every injected bug of tests/mutations.py still applies to the code as it is (its snippet occurs exactly once), and
tests/mutations.md lists each one: moving code without moving its mutation fails here, not silently later."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutations import MUTATIONS, ROOT, check


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_and_is_documented(mutation):
    assert check(mutation) != (ROOT / mutation.path).read_text()
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
    assert f"`{mutation.name}`" in (Path(__file__).parent / "mutations.md").read_text()
