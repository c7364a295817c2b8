"""Scored tasks: held-out problems, answer extraction and each task's scorer, offline."""

from __future__ import annotations

import json

import pytest

from train.data import load_corpus
from scylla.data.tasks import get_task
from scylla.errors import ScyllaError


def test_unknown_tasks_list_the_valid_ones():
    with pytest.raises(ScyllaError, match="gsm, rg:<dataset>, code, copy, jsonl:PATH"):
        get_task("math")
    with pytest.raises(ScyllaError, match="did you mean rg:chain_sum"):
        get_task("rg:chainsum")
    with pytest.raises(ScyllaError, match="does not exist"):
        get_task("jsonl:/nonexistent.jsonl")


def test_gsm_is_held_out_and_scored_by_reasoning_gym():
    task = get_task("gsm")
    problems = task.problems(5)
    assert [p.prompt for p in problems] == [p.prompt for p in task.problems(5)]
    training = set(load_corpus("gsm", n=200, seed=0)["prompt"])
    assert not any(p.prompt.split("\n\n")[0] in training for p in problems)
    p = problems[0]
    assert task.score(f"Some steps.\n<answer>{p.reference}</answer>", p) == 1.0
    assert task.score(f"so the answer is {int(p.reference):,}.", p) == 1.0  # thousands separators, cue words
    assert task.score("<answer>-1</answer>", p) < 1.0
    assert task.score("no number here", p) == 0.0
    assert task.extract("first 3, then 4,500.0 apples") == "4500"


def test_other_reasoning_gym_tasks_use_their_own_scorer():
    for name in ("rg:chain_sum", "rg:leg_counting"):
        task = get_task(name)
        p = task.problems(2, seed=1)[1]
        assert task.score(f"<answer>{p.reference}</answer>", p) == 1.0
        assert task.score(f"working...\nAnswer: {p.reference}", p) == 1.0
        assert task.score("<answer>wrong</answer>", p) == 0.0


def test_code_runs_the_humaneval_tests():
    task = get_task("code")
    p = task.problems(1)[0]
    spec = p.meta["humaneval"]
    assert spec["prompt"] in p.prompt and p.reference == spec["task_id"]
    whole = f"Here it is:\n```python\n{spec['prompt']}{spec['canonical_solution']}```\nDone."
    assert task.score(whole, p) == 1.0
    assert task.score(spec["canonical_solution"], p) == 1.0  # a bare body continues the signature
    assert task.score("```python\ndef nothing():\n    pass\n```", p) == 0.0
    assert task.score("", p) == 0.0


def test_copy_is_scored_by_overlap():
    task = get_task("copy")
    p = task.problems(1)[0]
    assert p.reference in p.prompt
    assert task.score(p.reference, p) == 1.0
    assert 0.0 < task.score(" ".join(p.reference.split()[: len(p.reference.split()) // 2]), p) < 1.0


def test_jsonl_prompts_with_optional_answers(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"prompt": "2 + 2?", "answer": 4}) + "\n\n" + json.dumps({"prompt": "Say hi"}) + "\n")
    task = get_task(f"jsonl:{path}")
    first, second = task.problems(5)
    assert (first.prompt, first.reference, second.reference) == ("2 + 2?", "4", None)
    assert task.score("<answer> 4 </answer>", first) == 1.0 and task.score("It is\n5", first) == 0.0
    assert task.score("hi", second) is None
    assert len(task.problems(1)) == 1
    path.write_text('{"question": "no prompt"}\n')
    with pytest.raises(ScyllaError, match=r"q.jsonl:1: .*prompt"):
        task.problems(1)
