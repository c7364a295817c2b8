"""Three disjoint evaluation prompt sets per task: ``fit`` (the laws), ``select`` (choices made from measurements)
and ``confirm`` (reporting the choice). A law fitted, a configuration chosen and the choice reported on the same
prompts would each flatter the next.

Set k draws its task's problems from its own seed (HELD_OUT_SEED + k) and keeps a problem only when a hash of its
text falls in bucket k of 3, so the sets are disjoint by construction whatever their sizes, and the same set at a
larger size extends the smaller one. ``check_disjoint`` verifies it by content hash, for these sets and against the
training prompts (train/pretrain_draft.py calls it too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from scylla.data.tasks import ANSWER_FORMAT, EVAL_SEEDS, HELD_OUT_SEED, Problem, get_task
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


def problem_set(task: str, name: str, n: int) -> list[Problem]:
    """The first n problems of ``task`` in prompt set ``name`` (one of PROMPT_SETS)."""
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {name!r}: use one of {', '.join(PROMPT_SETS)}")
    k = PROMPT_SETS.index(name)
    source, pool = get_task(task), 4 * n
    while True:
        problems = source.problems(pool, seed=HELD_OUT_SEED + k)
        chosen = [p for p in problems if _bucket(p.prompt) == k][:n]
        if len(chosen) == n:
            return chosen
        if len(problems) < pool:  # a fixed set (HumanEval, a jsonl file) has run out
            raise ConfigError(f"task {task} has only {len(chosen)} prompts in prompt set {name!r} (about a third of "
                              f"its {len(problems)}): ask for fewer")
        pool *= 4


def check_disjoint(sets: Mapping[str, Sequence[str]]) -> None:
    """Raise an InputError naming the first two named prompt lists that share a question (by ``question_id``)."""
    seen: dict[str, set[str]] = {}
    for name, texts in sets.items():
        ids = {question_id(t) for t in texts}
        for other, other_ids in seen.items():
            shared = ids & other_ids
            if shared:
                raise InputError(f"prompt sets {other!r} and {name!r} share {len(shared)} question(s) "
                                 f"(e.g. {sorted(shared)[0]}): a law, a choice and its report need disjoint prompts")
        seen[name] = ids
