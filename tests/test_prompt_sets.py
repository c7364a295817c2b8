"""The fit, select and confirm prompt sets are disjoint by content hash, from each other and from training prompts
(issue 14: reasoning-gym's seeded draws gave sets of different sizes a shared prefix, so 6 of the demo's 16 check
prompts were its 6 fitting prompts)."""

import pytest

from pipeline.demo import FIT_PROMPTS, demo_prompt_sets
from scylla.data.prompt_sets import PROMPT_SETS, check_disjoint, problem_set, question_id
from scylla.data.tasks import ANSWER_FORMAT
from scylla.errors import ConfigError, InputError


def test_demo_sets_are_disjoint_from_each_other_and_from_training():
    sets = demo_prompt_sets("experiments/demo.yaml")
    assert list(sets) == ["train", *PROMPT_SETS]
    assert len(sets["fit"]) == FIT_PROMPTS >= 16
    check_disjoint(sets)  # raises on any shared question
    ids = [{question_id(t) for t in texts} for texts in sets.values()]
    assert sum(map(len, ids)) == len(set().union(*ids))


@pytest.mark.parametrize("task", ["gsm", "code", "rg:basic_arithmetic"])
def test_sets_are_disjoint_and_a_larger_set_extends_a_smaller_one(task):
    sets = {name: [p.prompt for p in problem_set(task, name, 12)] for name in PROMPT_SETS}
    check_disjoint(sets)
    assert all(len(set(texts)) == 12 for texts in sets.values())
    assert [p.prompt for p in problem_set(task, "fit", 5)] == sets["fit"][:5]


def test_a_shared_question_is_named():
    question = "What is 2 + 2?"
    assert question_id(question) == question_id(f"  {question}{ANSWER_FORMAT}")  # training vs evaluation form
    with pytest.raises(InputError, match="prompt sets 'train' and 'fit' share 1 question"):
        check_disjoint({"train": [question, "Other"], "fit": [question + ANSWER_FORMAT]})


def test_bad_set_names_and_sizes_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown prompt set 'test'"):
        problem_set("gsm", "test", 4)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"prompt": "question {i}"}}\n' for i in range(6)))
    with pytest.raises(ConfigError, match="prompts in prompt set 'fit'"):
        problem_set(f"jsonl:{path}", "fit", 6)
