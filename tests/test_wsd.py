"""Warmup-stable-decay across milestones, traced step by step through the real DeepSpeed engine (one process, gloo).

train.pretrain_draft.train_milestones on a tiny draft LM and 3 milestones: every step that runs is recorded with its
LR and the weights it starts from. Each milestone's cool-down branch must leave the stable run's weights at its
branch point, the stable run must resume from its own weights (restored with the optimizer state), not from the
branch's, and each step's LR must be train/schedule.py's for the milestone it serves (tests/mutations.md:
wsd-no-rewind). A WSD branch then equals a separate run of its milestone bit for bit: the same initialisation, block
order and LR at every step, so the determinism test is that equality (what experiments/schedule_check.yaml once
measured at length, identical by construction).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from scylla.ports import free_port
from train.config import TrainConfig
from train.pretrain_draft import Data, Objective, Trainer, build_draft, train_milestones
from train.schedule import branch_start, lr_at

MILESTONES = [80, 160, 320]  # 10, 20 and 40 steps of 8 tokens


@pytest.fixture(scope="module")
def distributed():
    """A world of one for DeepSpeed (gloo), torn down after the module, the environment restored."""
    import deepspeed

    patch = pytest.MonkeyPatch()
    patch.setenv("RANK", "0")
    patch.setenv("LOCAL_RANK", "0")
    patch.setenv("WORLD_SIZE", "1")
    patch.setenv("MASTER_ADDR", "127.0.0.1")
    patch.setenv("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    torch.distributed.destroy_process_group()
    patch.undo()


class Traced(Objective):
    """The training objective, recording (step, LR, flat weights) at every step before it runs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.trainer: Trainer | None = None
        self.steps: list[tuple[int, float, torch.Tensor]] = []

    def __call__(self, engine, tokens, feats):
        self.steps.append((self.trainer.step, engine.optimizer.param_groups[0]["lr"], flat(engine.module)))
        return super().__call__(engine, tokens, feats)


def flat(model: torch.nn.Module) -> torch.Tensor:
    """A copy of all of a model's weights, flattened into one vector."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def train(run_dir, schedule: str) -> tuple[Traced, dict[int, torch.Tensor], TrainConfig]:
    """Train the milestones on ``schedule``: (the traced objective, each milestone's flat draft weights, the job)."""
    cfg = TrainConfig.from_dict(dict(run_dir=str(run_dir), target="tiny", drafter="draft-lm", width=32,
                                     milestones=MILESTONES, schedule=schedule, wandb="disabled",
                                     data={"block_size": 8}, optim={"batch_blocks": 1, "lr": 0.01}))
    target = tiny_llama(vocab_size=64, layers=1, hidden=32)
    blocks = torch.randint(0, 64, (48, 8), generator=torch.Generator().manual_seed(0))
    data = Data(blocks[:40], blocks[40:], [], torch.arange(64))
    objective = Traced(cfg, target, data)

    def fresh() -> Trainer:
        objective.trainer = Trainer(cfg, build_draft(cfg, target, data), 1, 0)
        return objective.trainer

    drafts: dict[int, torch.Tensor] = {}

    def finish(milestone: int, trainer: Trainer, metrics: dict) -> None:
        drafts[milestone] = flat(trainer.engine.module)

    train_milestones(cfg, fresh(), MILESTONES, objective, data, None, fresh, finish)
    return objective, drafts, cfg


@pytest.fixture(scope="module")
def wsd(tmp_path_factory, distributed):
    return train(tmp_path_factory.mktemp("wsd"), "wsd")


def test_each_branch_leaves_the_stable_run_which_resumes_from_its_own_weights(wsd):
    traced, drafts, cfg = wsd
    per_step = cfg.tokens_per_step
    plan, stretches, previous = [], [], 0  # (step, milestone steps) of every step expected, in order
    for milestone in MILESTONES:
        steps = milestone // per_step
        start = branch_start(steps, cfg.optim.cooldown)
        stretches.append((len(plan), len(plan) + start - previous))  # where this milestone's stable stretch runs
        plan += [(s, steps) for s in range(previous, steps)]
        previous = start
    assert [s for s, _, _ in traced.steps] == [s for s, _ in plan], "the steps run, in order"
    for (step, lr, _), (_, steps) in zip(traced.steps, plan):
        assert lr == lr_at(step, steps, cfg.optim.lr, cfg.warmup_steps, cfg.optim.cooldown), step
    for k, (first, end) in enumerate(stretches[1:], start=1):
        branch_point = stretches[k - 1][1]  # the previous milestone's branch: its first step
        resumed, branched = traced.steps[first], traced.steps[branch_point]
        assert resumed[0] == branched[0]
        # the stable run resumes from the weights the branch left, not from the finished branch
        assert torch.equal(resumed[2], branched[2])
        assert not torch.equal(resumed[2], drafts[MILESTONES[k - 1]])
        assert not torch.equal(traced.steps[first][2], traced.steps[end - 1][2])  # and then trains on


def test_a_wsd_branch_equals_a_separate_run_of_its_milestone(wsd, tmp_path):
    """Determinism: the same initialisation, blocks and LR at every step give the same draft, so a branch that starts
    from the stable run's weights and optimizer state is the separate run."""
    branches, (_, separate, _) = wsd[1], train(tmp_path, "separate")
    for milestone in MILESTONES:
        assert torch.equal(branches[milestone], separate[milestone]), milestone
    assert not torch.equal(branches[MILESTONES[0]], branches[MILESTONES[1]])
