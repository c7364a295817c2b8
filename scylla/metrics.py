"""Decoding statistics. Every formula the toolkit reports is defined here, once (the definitions of Leviathan et al.
2023 and of vLLM's spec-decode metrics).

- new_tokens: tokens emitted (EOS included, nothing after it, never more than max_new_tokens).
- target_calls: target forward passes a row took part in (the prefill counts: it yields the first token).
- drafted: draft tokens proposed; accepted: proposed tokens the target accepted. When an accepted draft token is
  EOS, the drafts after it count as neither (they are not part of the output).
- mean_accepted_length (MAT, tau) = new_tokens / target_calls. The bonus/correction token is included, so plain
  decoding gives exactly 1. Without an EOS, new_tokens = accepted + target_calls.
- acceptance_rate (alpha) = accepted / drafted. For a tree draft, drafted counts its nodes (tokens verified) and
  accepted the accepted path's length, so alpha is the share of verified draft tokens that were kept.
- per_position_acceptance[i] = (steps whose draft token i+1 was accepted) / drafting_steps (vLLM's convention):
  a step that drafted fewer than i+1 tokens counts as not accepted at i. For trees, position i is depth i+1.
- tokens_per_second = new_tokens / wall_seconds. For a row, wall_seconds runs from the start of generate to the
  step that finished the row; for a batch, to the end of generate (aggregate throughput).
A batch's counts are the sums over its rows, so its MAT weights rows by their target calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


@dataclass
class Counts:
    """Counters shared by a row and a batch, with the derived metrics."""

    new_tokens: int = 0
    target_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    drafting_steps: int = 0
    accepted_at: list[int] = field(default_factory=list)  # accepted_at[i]: steps whose draft token i+1 was accepted
    wall_seconds: float = 0.0

    @property
    def mean_accepted_length(self) -> float:
        return _ratio(self.new_tokens, self.target_calls)

    @property
    def acceptance_rate(self) -> float:
        return _ratio(self.accepted, self.drafted)

    @property
    def per_position_acceptance(self) -> list[float]:
        return [_ratio(a, self.drafting_steps) for a in self.accepted_at]

    @property
    def tokens_per_second(self) -> float:
        return _ratio(self.new_tokens, self.wall_seconds)

    def add_step(self, new_tokens: int, drafted: int, accepted: int, positions: int | None = None) -> None:
        """Account one target call of this row that drafted ``drafted`` tokens and emitted ``new_tokens``.
        positions: the draft's depth (a chain's is its length, the default)."""
        self.new_tokens += new_tokens
        self.target_calls += 1
        if drafted:
            positions = drafted if positions is None else positions
            self.drafted += drafted
            self.accepted += accepted
            self.drafting_steps += 1
            if len(self.accepted_at) < positions:
                self.accepted_at.extend([0] * (positions - len(self.accepted_at)))
            for i in range(accepted):
                self.accepted_at[i] += 1

    def absorb(self, other: "Counts") -> None:
        """Add another set of counts into this one (wall time is not summed: the caller sets it)."""
        self.new_tokens += other.new_tokens
        self.target_calls += other.target_calls
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.drafting_steps += other.drafting_steps
        if len(self.accepted_at) < len(other.accepted_at):
            self.accepted_at.extend([0] * (len(other.accepted_at) - len(self.accepted_at)))
        for i, a in enumerate(other.accepted_at):
            self.accepted_at[i] += a

    def summary(self) -> dict:
        """Counts and derived metrics as a flat JSON-ready dict."""
        out = {k: v for k, v in asdict(self).items() if k != "rows"}
        out.update(
            mean_accepted_length=self.mean_accepted_length,
            acceptance_rate=self.acceptance_rate,
            per_position_acceptance=self.per_position_acceptance,
            tokens_per_second=self.tokens_per_second,
        )
        return out


@dataclass
class RowStats(Counts):
    """Statistics of one row (one request) of a generate call."""


@dataclass
class DecodeStats(Counts):
    """Statistics of a whole generate call (or several, merged), plus time split and per-row stats."""

    forward_passes: int = 0  # batched target forwards (a row's target_calls counts those it took part in)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    prefill_seconds: float = 0.0  # of wall_seconds: the prompts' forward and the drafter's start
    generate_calls: int = 0  # generate calls merged here (each has one prefill forward)
    rows: list[RowStats] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: list["DecodeStats"]) -> "DecodeStats":
        """Stats of several generate calls run one after another (times add up)."""
        total = cls()
        for part in parts:
            total.absorb(part)
            total.forward_passes += part.forward_passes
            total.draft_seconds += part.draft_seconds
            total.verify_seconds += part.verify_seconds
            total.prefill_seconds += part.prefill_seconds
            total.generate_calls += part.generate_calls
            total.wall_seconds += part.wall_seconds
            total.rows.extend(part.rows)
        return total

    @property
    def decode_tokens_per_second(self) -> float:
        """new_tokens / (wall - prefill): the decoding phase's throughput."""
        return _ratio(self.new_tokens, self.wall_seconds - self.prefill_seconds)

    @property
    def step_seconds(self) -> float | None:
        """Seconds per decoding step after the prefill: (wall - prefill) / (batched forwards - prefills)."""
        steps = self.forward_passes - self.generate_calls
        return (self.wall_seconds - self.prefill_seconds) / steps if steps > 0 else None

    def per_prompt(self, prompt_ids: list[str]) -> dict:
        """Per-prompt counts as flat lists aligned with ``prompt_ids`` (one row per prompt, in order), so that a
        fit can use the prompt as its unit of sampling: prompt_new_tokens, prompt_target_calls, prompt_drafted,
        prompt_accepted, prompt_drafting_steps, and prompt_accepted_at, row-major with prompt_positions entries per
        prompt (item p * prompt_positions + i: prompt p's drafting steps whose draft token i+1 was accepted).
        sum(prompt_new_tokens) / sum(prompt_target_calls) is the record's mean_accepted_length."""
        assert len(prompt_ids) == len(self.rows), "one row per prompt"
        width = max((len(r.accepted_at) for r in self.rows), default=0)
        return dict(
            prompt_ids=list(prompt_ids),
            prompt_new_tokens=[r.new_tokens for r in self.rows],
            prompt_target_calls=[r.target_calls for r in self.rows],
            prompt_drafted=[r.drafted for r in self.rows],
            prompt_accepted=[r.accepted for r in self.rows],
            prompt_drafting_steps=[r.drafting_steps for r in self.rows],
            prompt_positions=width,
            prompt_accepted_at=[n for r in self.rows for n in r.accepted_at + [0] * (width - len(r.accepted_at))],
        )

    def summary(self) -> dict:
        out = super().summary()
        out["mean_row_tokens_per_second"] = _ratio(sum(r.tokens_per_second for r in self.rows), len(self.rows))
        return out


def pooled_mat(records: list[dict]) -> float:
    """The mean accepted length of records pooled (their prompts and seeds): their new tokens / their target calls."""
    return sum(r["new_tokens"] for r in records) / sum(r["target_calls"] for r in records)
