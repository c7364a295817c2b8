"""The LR plans and the data stream of draft training: pure functions, checked on the steps that run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scylla.errors import ConfigError
from train.config import TrainConfig
from train.pretrain_draft import block_order
from train.schedule import branch_start, cooldown_steps, lr_at, stable_lr

DEMO = Path(__file__).resolve().parent.parent / "experiments" / "demo.yaml"


def demo_job() -> TrainConfig:
    grid = yaml.safe_load(DEMO.read_text())
    return TrainConfig.from_dict({**grid["base"], "run_dir": "unused", "processes": grid.get("processes", 1)})


def executed_lrs(cfg: TrainConfig, milestone: int) -> list[float]:
    """The LR of every step that runs for this milestone's checkpoint: steps 0 .. S-1."""
    steps = milestone // cfg.tokens_per_step
    return [lr_at(s, steps, cfg.optim.lr, cfg.warmup_steps, cfg.optim.cooldown) for s in range(steps)]


def test_the_demos_smallest_milestone_warms_up_cools_down_and_ends_at_zero():
    cfg = demo_job()
    lrs, peak = executed_lrs(cfg, cfg.milestones[0]), cfg.optim.lr
    steps = len(lrs)
    assert steps >= 10
    warmup = next(i for i, lr in enumerate(lrs) if lr == peak) + 1  # steps up to and including the first at peak
    assert 1 <= warmup <= 0.1 * steps and all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))
    decay = [i for i in range(warmup, steps) if lrs[i] < peak]
    assert decay == list(range(decay[0], steps))  # one cool-down, at the end
    assert len(decay) >= max(2, 0.2 * steps)
    assert all(a > b for a, b in zip(lrs[decay[0] - 1:], lrs[decay[0]:])) and lrs[-1] == 0.0


def test_every_demo_milestone_ends_at_zero_after_a_fifth_of_its_steps():
    cfg = demo_job()
    for milestone in cfg.milestones:
        lrs = executed_lrs(cfg, milestone)
        steps = len(lrs)
        assert lrs[-1] == 0.0 and lrs[-2] > 0.0
        assert cooldown_steps(steps, cfg.optim.cooldown) >= max(2, 0.2 * steps)
        # the branch shares the stable run up to its branch point
        start = branch_start(steps, cfg.optim.cooldown)
        longest = executed_lrs(cfg, cfg.milestones[-1])
        assert lrs[:start] == longest[:start]


def test_wsd_branch_cools_down_to_zero_on_its_last_step():
    steps, peak = 100, 1e-3
    assert branch_start(steps, 0.2) == 80
    lrs = [lr_at(s, steps, peak, warmup_steps=10, cooldown=0.2) for s in range(steps)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == peak and lrs[79] == peak
    assert lrs[80] == pytest.approx(peak * 19 / 20) and all(a > b for a, b in zip(lrs[80:], lrs[81:])) and lrs[99] == 0.0
    assert [lr_at(s, 200, peak, 10, 0.2) for s in range(80)] == lrs[:80]


def test_short_milestones_still_get_two_cooldown_steps():
    assert cooldown_steps(5, 0.2) == 2 and cooldown_steps(10, 0.2) == 2 and cooldown_steps(11, 0.2) == 3
    lrs = [lr_at(s, 10, 1.0, 1, 0.2) for s in range(10)]
    assert lrs[7] == 1.0 and lrs[8] == pytest.approx(0.5) and lrs[9] == 0.0


@pytest.mark.parametrize("change, message", [
    ({"optim": {"batch_blocks": 8}}, "needs >= 10 steps"),
    ({"optim": {"batch_blocks": 2, "warmup_tokens": 1024}}, "over 10% of the smallest milestone"),
    ({"optim": {"batch_blocks": 2, "cooldown": 0.1}}, r"must be in \[0.2, 0.5\)"),
])
def test_configs_that_break_the_shape_are_refused(change, message):
    grid = yaml.safe_load(DEMO.read_text())
    base = {**grid["base"], "run_dir": "unused"}
    base["optim"] = {**base["optim"], **change["optim"]}
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(base)


def test_stable_lr_without_warmup():
    assert stable_lr(0, 0.5, 0) == 0.5


def test_block_order_is_a_seeded_permutation_per_epoch():
    first = block_order(10, 0, 10, seed=1)
    assert sorted(first) == list(range(10))
    assert block_order(10, 0, 25, seed=1)[:10] == first and sorted(block_order(10, 10, 10, seed=1)) == list(range(10))
    assert block_order(10, 3, 4, seed=1) == first[3:7]  # resuming mid-stream gives the same blocks
    assert block_order(10, 0, 10, seed=2) != first
