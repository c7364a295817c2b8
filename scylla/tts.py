"""Test-time-scaling protocols (SpecTTS-Bench): Best-of-N and multi-round thinking, run through the engine.

Both decode one problem with a ``SpeculativeDecoder`` and return the texts, tokens, merged decode statistics,
accuracy and a repetition measure of the traces.

Drafter hooks (declared on scylla.drafters.base.Drafter, with defaults that do nothing):
- ``drafter.pool.add(tokens)``: a drafter with a shared ``pool`` receives every finished sample (Best-of-N) or round
  (multi-round) as a list of generated token ids, so later samples and rounds can draft from earlier ones.
- ``drafter.share_rows``: a bool; batched Best-of-N sets it to True for its call (the rows are samples of one
  problem and may draft from each other) and restores it afterwards.
- ``drafter.side_counts()``: cumulative drafted tokens per source (e.g. {"suffix": 120, "head": 300}) for hybrids;
  the protocols report how many each side drafted during their calls.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from scylla.data.tasks import Problem, Task
from scylla.engine import DecodeOutput, SpeculativeDecoder
from scylla.errors import ConfigError
from scylla.metrics import DecodeStats
from scylla.prompts import encode_prompts

# The round-2 prompt of SpecTTS-Bench (multi-round thinking): the question again, then the previous answer.
DEFAULT_ROUND2_TEMPLATE = (
    "{question}\n\nPreviously I tried to solve the problem. Now I need to double check and verify my previous answer "
    "and re-answer the question. My previous answer is: <answer> {previous} </answer>, and please re-answer."
)
REPETITION_NGRAM = 4


def repetition_share(
    tokens: Sequence[int], earlier_texts: Sequence[Sequence[int]] = (), n: int = REPETITION_NGRAM,
    prefix: Sequence[int] = (),
) -> float:
    """Share of ``tokens`` (a generated sequence) whose n-gram ending at that token already occurred earlier: in
    ``prefix`` (the request's prompt) followed by the tokens before it, or anywhere in ``earlier_texts`` (token
    sequences of sibling samples or earlier rounds, prompts included). Such a token is one an n-gram drafter matching the n - 1
    tokens before it could have proposed. 0.0 for an empty sequence."""
    if n < 1:
        raise ConfigError(f"repetition n-gram length must be >= 1, got {n}")
    if not tokens:
        return 0.0
    seen = {tuple(seq[i : i + n]) for seq in earlier_texts for i in range(len(seq) - n + 1)}
    context = list(prefix) + list(tokens)
    seen.update(tuple(context[i : i + n]) for i in range(len(prefix) - n + 1))
    repeated = 0
    for end in range(len(prefix), len(context)):
        if end + 1 < n:
            continue
        gram = tuple(context[end + 1 - n : end + 1])
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(tokens)


@dataclass
class TTSResult:
    """One problem under one protocol. texts / tokens / answers / scores: per sample (Best-of-N) or per round.
    accuracy: Best-of-N {"majority", "best_of", "mean"}; multi-round {"round_1", ...}; values None when unscored.
    repetition / repetition_self: repetition_share with and without the earlier samples or rounds (prompt plus
    output; token-weighted over samples). sides: tokens drafted per side for drafters with side_counts(), else empty."""

    texts: list[str]
    tokens: list[list[int]]
    answers: list[str | None]
    scores: list[float | None]
    accuracy: dict[str, float | None]
    stats: DecodeStats
    repetition: float
    repetition_self: float
    sides: dict[str, int] = field(default_factory=dict)

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def check_template(template: str) -> str:
    """A round-2 template must place {previous} and may place {question}; nothing else in braces."""
    try:
        template.format(question="", previous="")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"bad round-2 template ({err!r}): use only {{question}} and {{previous}} "
                          "(double other braces: {{ }})") from None
    if "{previous}" not in template:
        raise ConfigError("the round-2 template must contain {previous} (the previous answer)")
    return template


def final_answer(text: str) -> str:
    """A response without its thinking: what follows the last </think>, else the whole response, stripped."""
    return re.split(r"</think>", text)[-1].strip() or text.strip()


def _side_counts(drafter) -> dict[str, int]:
    return {} if drafter is None else dict(drafter.side_counts())


def _feed_pool(drafter, sequences: list[list[int]]) -> None:
    if drafter is not None and drafter.pool is not None:
        for tokens in sequences:
            drafter.pool.add(list(tokens))


@contextmanager
def _rows_shared(drafter):
    if drafter is None:
        yield
        return
    before = drafter.share_rows
    drafter.share_rows = True
    try:
        yield
    finally:
        drafter.share_rows = before


def _generate(decoder: SpeculativeDecoder, tokenizer, texts: list[str], seed: int, **sampling) -> tuple[
        DecodeOutput, list[int]]:
    """Decode the prompts (chat template, left-padded); also return the first prompt's tokens without padding."""
    device = next(decoder.target.parameters()).device
    ids, mask = encode_prompts(tokenizer, texts, device=device)
    out = decoder.generate(ids, mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           seed=seed, **sampling)
    return out, ids[0][mask[0].bool()].tolist()


def _result(tokenizer, task: Task | None, problem: Problem, tokens: list[list[int]], prompts: list[list[int]],
            parts: list[DecodeStats], sides_before: dict[str, int], drafter, ngram: int) -> TTSResult:
    """Texts, answers, scores and repetition of a protocol's sequences (in protocol order)."""
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    answers = [task.extract(t) if task else None for t in texts]
    scores = [task.score(t, problem) if task else None for t in texts]
    total = max(1, sum(len(t) for t in tokens))
    whole = [p + t for p, t in zip(prompts, tokens)]  # an earlier sample's n-grams include those at its start
    rep = sum(len(t) * repetition_share(t, whole[:i], ngram, p) for i, (t, p) in enumerate(zip(tokens, prompts)))
    rep_self = sum(len(t) * repetition_share(t, (), ngram, p) for t, p in zip(tokens, prompts))
    after = _side_counts(drafter)
    sides = {k: v - sides_before.get(k, 0) for k, v in after.items()}
    return TTSResult(texts, tokens, answers, scores, {}, DecodeStats.merge(parts), rep / total, rep_self / total,
                     sides)


def best_of_n(
    decoder: SpeculativeDecoder, tokenizer, problem: Problem, task: Task | None = None, n: int = 4,
    temperature: float = 0.6, batched: bool = True, max_new_tokens: int = 256, seed: int = 0, top_k: int = 0,
    top_p: float = 1.0, ngram: int = REPETITION_NGRAM,
) -> TTSResult:
    """N samples of one problem: one batch of N rows (batched) or N batch-1 calls one after another (the
    reference protocol; sample i uses seed + i). Accuracy: the majority answer's score (ties: the earliest
    answer), the best score, and the mean score."""
    if n < 1:
        raise ConfigError(f"Best-of-N needs n >= 1, got {n}")
    drafter = decoder.drafter
    sides = _side_counts(drafter)
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    if batched:
        with _rows_shared(drafter):
            out, prompt = _generate(decoder, tokenizer, [problem.prompt] * n, seed, **sampling)
        tokens, parts = out.generated, [out.stats]
        _feed_pool(drafter, tokens)
    else:
        tokens, parts = [], []
        for i in range(n):
            out, prompt = _generate(decoder, tokenizer, [problem.prompt], seed + i, **sampling)
            tokens.append(out.generated[0])
            parts.append(out.stats)
            _feed_pool(drafter, out.generated)
    result = _result(tokenizer, task, problem, tokens, [prompt] * n, parts, sides, drafter, ngram)
    if task is not None and problem.reference is not None:
        votes = Counter(" ".join(a.split()) for a in result.answers if a is not None)
        majority = votes.most_common(1)[0][0] if votes else None
        majority_score = next((s for a, s in zip(result.answers, result.scores)
                               if a is not None and " ".join(a.split()) == majority), 0.0)
        result.accuracy = dict(majority=majority_score, best_of=max(result.scores),
                               mean=sum(result.scores) / n)
    else:
        result.accuracy = dict(majority=None, best_of=None, mean=None)
    return result


def multi_round(
    decoder: SpeculativeDecoder, tokenizer, problem: Problem, task: Task | None = None, rounds: int = 2,
    temperature: float = 0.0, template: str = DEFAULT_ROUND2_TEMPLATE, max_new_tokens: int = 256, seed: int = 0,
    top_k: int = 0, top_p: float = 1.0, ngram: int = REPETITION_NGRAM,
) -> TTSResult:
    """Multi-round thinking: round 1 asks the problem; each later round asks ``template`` filled with the question
    and the previous round's final answer (``final_answer``), as a fresh single user turn. Round r uses seed + r.
    Accuracy: the score after each round."""
    if rounds < 1:
        raise ConfigError(f"multi-round thinking needs rounds >= 1, got {rounds}")
    check_template(template)
    drafter = decoder.drafter
    sides = _side_counts(drafter)
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens, prompts, parts = [], [], []
    text = problem.prompt
    for r in range(rounds):
        if r:
            previous = final_answer(tokenizer.decode(tokens[-1], skip_special_tokens=True))
            text = template.format(question=problem.prompt, previous=previous)
        out, prompt = _generate(decoder, tokenizer, [text], seed + r, **sampling)
        tokens.append(out.generated[0])
        prompts.append(prompt)
        parts.append(out.stats)
        _feed_pool(drafter, out.generated)
    result = _result(tokenizer, task, problem, tokens, prompts, parts, sides, drafter, ngram)
    result.accuracy = {f"round_{r + 1}": s for r, s in enumerate(result.scores)}
    return result
