"""Three disjoint evaluation prompt sets per task: ``fit`` (the laws), ``select`` (choices made from measurements)
and ``confirm`` (reporting the choice). A law fitted, a configuration chosen and the choice reported on the same
prompts would each flatter the next.

Set k draws its task's problems from its own seed (HELD_OUT_SEED + k). Where the task's questions come from a few
templates (gsm: reasoning-gym's gsm_symbolic), prompts of one template are alike, so the template is the unit: set k
asks only its own templates (scylla.data.tasks.SET_TEMPLATES, 8 per set for gsm; training has its own), taking them
in turn (the first problem of each, then the second of each, ...), so 16 prompts span all 8. Elsewhere set k keeps a
problem only when a hash of its text falls in bucket k of 3. Either way the sets are disjoint by construction
whatever their sizes, and the same set at a larger size extends the smaller one. ``check_disjoint`` verifies it by
content hash and by template; the demo calls it on its training prompts and its three sets before any work.
Training keeps evaluation questions and templates out by construction (scylla.data.tasks.rg_items; tests/test_data.py
checks it).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence

from scylla.data.tasks import ANSWER_FORMAT, EVAL_SEEDS, HELD_OUT_SEED, SET_TEMPLATES, Problem, get_task, template_id
from scylla.errors import ConfigError, InputError

PROMPT_SETS = ("fit", "select", "confirm")  # set k draws from seed HELD_OUT_SEED + k, which training avoids
assert len(PROMPT_SETS) == EVAL_SEEDS


def question_id(text: str) -> str:
    """A content hash of a prompt's question: the answer-format instruction evaluation appends and surrounding
    whitespace removed, so a training prompt and the same question asked at evaluation share an id."""
    core = " ".join(text.removesuffix(ANSWER_FORMAT).split())
    return hashlib.sha1(core.encode("utf-8")).hexdigest()[:12]


def _bucket(text: str) -> int:
    return int(question_id(text), 16) % len(PROMPT_SETS)


def set_templates(task: str, name: str) -> list[str] | None:
    """The templates (``template_id``) prompt set ``name`` of ``task`` asks, in turn; None for a task whose sets are
    split by question, not by template."""
    dataset = getattr(get_task(task), "dataset", None)
    groups = SET_TEMPLATES.get(dataset)
    return None if groups is None else [template_id(dataset, t) for t in groups[PROMPT_SETS.index(name)]]


def _in_turn(problems: list[Problem], templates: list[str]) -> list[Problem]:
    """The first problem of each template, then the second of each, ... (distinct questions), up to the first
    template that has no more: a prefix of the same sequence however many problems were drawn."""
    by_template: dict[str, list[Problem]] = {t: [] for t in templates}
    seen = set()
    for p in problems:
        if p.template in by_template and question_id(p.prompt) not in seen:
            seen.add(question_id(p.prompt))
            by_template[p.template].append(p)
    out = []
    for r in itertools.count():
        for t in templates:
            if r == len(by_template[t]):
                return out
            out.append(by_template[t][r])


def problem_set(task: str, name: str, n: int) -> list[Problem]:
    """The first n problems of ``task`` in prompt set ``name`` (one of PROMPT_SETS)."""
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {name!r}: use one of {', '.join(PROMPT_SETS)}")
    k = PROMPT_SETS.index(name)
    source, pool, templates = get_task(task), 4 * n, set_templates(task, name)
    while True:
        problems = source.problems(pool, seed=HELD_OUT_SEED + k)
        if templates:
            chosen = _in_turn(problems, templates)[:n]
        else:
            chosen = [p for p in problems if _bucket(p.prompt) == k][:n]
        if len(chosen) == n:
            return chosen
        if len(problems) < pool:  # a fixed set (HumanEval, a jsonl file) has run out
            raise ConfigError(f"task {task} has only {len(chosen)} prompts in prompt set {name!r} (about a third of "
                              f"its {len(problems)}): ask for fewer")
        pool *= 4


def check_disjoint(sets: Mapping[str, Sequence[str | Problem]]) -> None:
    """Raise an InputError naming the first two named prompt lists (texts, or Problems) that share a question (by
    ``question_id``) or a template (``Problem.template``, where known)."""
    seen: dict[str, tuple[set[str], set[str]]] = {}
    for name, prompts in sets.items():
        ids = {question_id(p if isinstance(p, str) else p.prompt) for p in prompts}
        templates = {p.template for p in prompts if not isinstance(p, str) and p.template is not None}
        for other, (other_ids, other_templates) in seen.items():
            if shared := ids & other_ids:
                raise InputError(f"prompt sets {other!r} and {name!r} share {len(shared)} question(s) "
                                 f"(e.g. {sorted(shared)[0]}): a law, a choice and its report need disjoint prompts")
            if shared := templates & other_templates:
                raise InputError(f"prompt sets {other!r} and {name!r} share {len(shared)} template(s) "
                                 f"(e.g. {sorted(shared)[0]}): fresh prompts need fresh templates")
        seen[name] = ids, templates
