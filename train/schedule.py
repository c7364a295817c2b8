"""Learning-rate plans that make a checkpoint at N tokens a fair "trained on N tokens" point.

Both plans work in optimizer steps of a fixed token count and share one shape: linear warmup, a stable phase, and a
linear decay over the milestone's last ``cooldown_steps`` steps that reaches 0 on the last step that runs
(warmup-stable-decay, WSD).
- wsd (default): ONE stable run; for each milestone a branch leaves it at ``branch_start`` and cools down to the
  milestone, so each checkpoint saw exactly N tokens and ended on a full cool-down. Compute is about
  (1 + 2 * cooldown) * max(N) tokens instead of sum(N).
- separate: an independent run per milestone with the same shape (the costlier textbook baseline).

Steps are numbered from 0: a milestone of S steps runs steps 0 .. S-1. The rules that keep the shape intact at the
smallest milestone (warmup <= 10% of its steps, a cool-down of >= 20% and >= 2 steps, >= 10 steps) are checked in
train/config.py.
"""

from __future__ import annotations

import math

MIN_COOLDOWN_STEPS = 2


def cooldown_steps(milestone_steps: int, cooldown: float) -> int:
    """Steps of a milestone's cool-down: the fraction ``cooldown`` of its steps rounded up, and at least 2."""
    return min(milestone_steps, max(MIN_COOLDOWN_STEPS, math.ceil(milestone_steps * cooldown - 1e-9)))


def branch_start(milestone_steps: int, cooldown: float) -> int:
    """First step of the cool-down branch of a milestone of ``milestone_steps`` steps (it leaves the stable run)."""
    return milestone_steps - cooldown_steps(milestone_steps, cooldown)


def stable_lr(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to ``peak`` over warmup_steps (step warmup_steps - 1 is the first at peak), then constant."""
    if warmup_steps <= 0:
        return peak
    return peak * min(1.0, (step + 1) / warmup_steps)


def lr_at(step: int, milestone_steps: int, peak: float, warmup_steps: int, cooldown: float) -> float:
    """LR at ``step`` of the run (or branch) that ends at ``milestone_steps``: the stable plan before the branch
    point, then ``cooldown_steps`` steps down a line from the stable LR that reaches 0 at step milestone_steps - 1."""
    start, last = branch_start(milestone_steps, cooldown), milestone_steps - 1
    if step < start:
        return stable_lr(step, peak, warmup_steps)
    return stable_lr(start, peak, warmup_steps) * max(0.0, (last - step) / (last - start + 1))
