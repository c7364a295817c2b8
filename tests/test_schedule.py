"""The LR plans and the data stream of draft training: pure functions."""

from __future__ import annotations

import pytest

from train.pretrain_draft import block_order
from train.schedule import branch_start, lr_at, stable_lr


def test_wsd_branch_cools_down_to_zero_at_the_milestone():
    steps, peak = 100, 1e-3
    assert branch_start(steps, 0.2) == 80
    lrs = [lr_at(s, steps, peak, warmup_steps=10, cooldown=0.2) for s in range(steps + 1)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == peak and lrs[79] == peak
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:])) and lrs[100] == 0.0
    # a later milestone's branch shares the stable run up to its own branch point
    assert [lr_at(s, 200, peak, 10, 0.2) for s in range(80)] == lrs[:80]


def test_stable_lr_without_warmup():
    assert stable_lr(0, 0.5, 0) == 0.5


def test_block_order_is_a_seeded_permutation_per_epoch():
    first = block_order(10, 0, 10, seed=1)
    assert sorted(first) == list(range(10))
    assert block_order(10, 0, 25, seed=1)[:10] == first and sorted(block_order(10, 10, 10, seed=1)) == list(range(10))
    assert block_order(10, 3, 4, seed=1) == first[3:7]  # resuming mid-stream gives the same blocks
    assert block_order(10, 0, 10, seed=2) != first
