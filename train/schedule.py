"""Learning-rate plans that make a checkpoint at N tokens a fair "trained on N tokens" point.

Both plans work in optimizer steps of a fixed token count and share one shape: linear warmup, a stable phase, and a
linear decay to 0 over the last ``cooldown`` fraction of the milestone's steps (warmup-stable-decay, WSD).
- wsd (default): ONE stable run; for each milestone a branch leaves it at ``branch_start`` and cools down to the
  milestone, so each checkpoint saw exactly N tokens and ended on a full cool-down. Compute is about
  (1 + 2 * cooldown) * max(N) tokens instead of sum(N).
- separate: an independent run per milestone with the same shape (the costlier textbook baseline).
"""

from __future__ import annotations


def branch_start(milestone_steps: int, cooldown: float) -> int:
    """Step at which the cool-down branch of a milestone of ``milestone_steps`` steps leaves the stable run."""
    return int(milestone_steps * (1.0 - cooldown))


def stable_lr(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to ``peak`` over warmup_steps, then constant."""
    if warmup_steps <= 0:
        return peak
    return peak * min(1.0, (step + 1) / warmup_steps)


def lr_at(step: int, milestone_steps: int, peak: float, warmup_steps: int, cooldown: float) -> float:
    """LR at ``step`` of the run (or branch) that ends at ``milestone_steps``."""
    start = branch_start(milestone_steps, cooldown)
    if step < start or milestone_steps <= start:
        return stable_lr(step, peak, warmup_steps)
    return stable_lr(start, peak, warmup_steps) * max(0.0, (milestone_steps - step) / (milestone_steps - start))
