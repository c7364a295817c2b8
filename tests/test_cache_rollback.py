"""RaggedKV: decoding continued after a per-row rollback equals recomputation from scratch."""

from __future__ import annotations

import torch

from scylla.kv import RaggedKV, realign, realign_index


def test_realign_index_keeps_prefixes_right_aligned():
    # 5 columns; row 0 has 5 valid tokens and keeps 2, row 1 has 3 and keeps 3.
    index = realign_index(5, torch.tensor([5, 3]), torch.tensor([2, 3]))
    assert index.tolist() == [[0, 0, 1], [2, 3, 4]]  # row 0: a pad column, then its first two tokens
    x = torch.tensor([[10, 11, 12, 13, 14], [0, 0, 20, 21, 22]])
    out = realign(x, 1, torch.tensor([5, 3]), torch.tensor([2, 3]))
    assert out[0, 1:].tolist() == [10, 11] and out[1].tolist() == [20, 21, 22]


def test_rollback_then_continue_equals_fresh_forward(target):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, 64, (3, 6), generator=g)
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0  # row 1 is shorter (left padding)
    draft = torch.randint(1, 64, (3, 4), generator=g)
    keep_drafts = torch.tensor([0, 3, 1])  # rows accept different numbers of tokens
    nxt = torch.randint(1, 64, (3, 2), generator=g)

    kv = RaggedKV(target)
    with torch.no_grad():
        kv.forward(prompt, mask)
        kv.forward(draft)  # verify 4 tokens
        kv.trim(mask.sum(1) + keep_drafts)  # roll back to the accepted prefix
        continued = kv.forward(nxt).logits  # (3, 2, V)
        for b in range(3):
            row = torch.cat([prompt[b][mask[b].bool()], draft[b, : keep_drafts[b]], nxt[b]])[None]
            fresh = target(row).logits[0, -2:]
            torch.testing.assert_close(continued[b], fresh, rtol=1e-4, atol=1e-4)
    assert kv.lengths.tolist() == (mask.sum(1) + keep_drafts + 2).tolist()


def test_select_drops_rows_and_padding(target):
    kv = RaggedKV(target)
    ids = torch.randint(1, 64, (3, 5))
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    with torch.no_grad():
        kv.forward(ids, mask)
        kv.select(torch.tensor([0, 2]))
    assert kv.columns == 4 and kv.lengths.tolist() == [2, 4]
