"""The fit, select and confirm prompt sets are disjoint by content hash, from each other and from training prompts
(issue 14: reasoning-gym's seeded draws gave sets of different sizes a shared prefix, so 6 of the demo's 16 check
prompts were its 6 fitting prompts), and for gsm by template (issue 27: the sets shared many of the evaluation
templates, so "fresh" prompts were fresh numbers in familiar question shapes)."""

import pytest

from pipeline.demo import FIT_PROMPTS, demo_prompt_sets
from scylla.data.prompt_sets import PROMPT_SETS, check_disjoint, problem_set, question_id, set_templates
from scylla.data.tasks import ANSWER_FORMAT, SET_TEMPLATES, Problem
from scylla.errors import ConfigError, InputError


def test_demo_sets_are_disjoint_from_each_other_and_from_training():
    sets = demo_prompt_sets("experiments/demo.yaml")
    assert list(sets) == ["train", *PROMPT_SETS]
    assert len(sets["fit"]) == FIT_PROMPTS >= 16
    check_disjoint(sets)  # raises on any shared question or template
    ids = [{question_id(t if isinstance(t, str) else t.prompt) for t in texts} for texts in sets.values()]
    assert sum(map(len, ids)) == len(set().union(*ids))
    templates = [{p.template for p in sets[name]} for name in PROMPT_SETS]
    assert all(len(t) >= 8 for t in templates) and sum(map(len, templates)) == len(set().union(*templates))


def test_each_gsm_set_asks_its_own_templates_in_turn():
    """A template (question shape) belongs to one prompt set, so "fresh prompts" are fresh templates; 16 prompts of
    a set span its 8 templates twice (tests/mutations.md: prompt-sets-share-templates)."""
    sets = {name: problem_set("gsm", name, 16) for name in PROMPT_SETS}
    asked = {name: [p.template for p in problems] for name, problems in sets.items()}
    for name in PROMPT_SETS:
        own = set_templates("gsm", name)
        assert len(own) == 8 and asked[name] == own + own
        assert own == [f"gsm_symbolic:{t}" for t in SET_TEMPLATES["gsm_symbolic"][PROMPT_SETS.index(name)]]
    assert not set(asked["fit"]) & set(asked["select"]) and not set(asked["select"]) & set(asked["confirm"])
    assert not set(asked["fit"]) & set(asked["confirm"])
    check_disjoint(sets)
    assert set_templates("code", "fit") is None and set_templates("rg:basic_arithmetic", "fit") is None


def test_a_shared_template_is_named():
    fit, select = Problem("Ann has 3 apples.", "3", template="gsm_symbolic:4"), Problem("Bo has 5 pears.", "5",
                                                                                       template="gsm_symbolic:4")
    with pytest.raises(InputError, match="prompt sets 'fit' and 'select' share 1 template"):
        check_disjoint({"train": ["Other"], "fit": [fit], "select": [select]})
    check_disjoint({"fit": [fit], "select": [Problem(select.prompt, "5", template="gsm_symbolic:8")]})


@pytest.mark.parametrize("task", ["gsm", "code", "rg:basic_arithmetic"])
def test_sets_are_disjoint_and_a_larger_set_extends_a_smaller_one(task):
    problems = {name: problem_set(task, name, 12) for name in PROMPT_SETS}
    sets = {name: [p.prompt for p in ps] for name, ps in problems.items()}
    check_disjoint(sets)
    check_disjoint(problems)  # and by template, where the task has them
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
