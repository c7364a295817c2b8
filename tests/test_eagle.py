"""EAGLE-style heads: lossless drafting, correct feature bookkeeping across steps and rows, save and load."""

from __future__ import annotations

import pytest
import torch

from scylla import ScyllaError, SpeculativeDecoder
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead, is_head_folder
from scylla.drafters.tree import TreeShape
from test_greedy_identity import MAX_NEW, make_batch, pick_eos


def make_head(target, layers=2, feature_layers=(-1,), vocab=48, seed=0, layout="eagle") -> EagleHead:
    torch.manual_seed(seed)
    config = EagleConfig.for_target(target, num_layers=layers, feature_layers=list(feature_layers),
                                    draft_vocab_size=vocab, layout=layout)
    head = EagleHead(config, target.get_input_embeddings())
    head.draft_to_target.copy_(torch.randperm(target.config.vocab_size)[:vocab])
    return head.eval()


@pytest.mark.parametrize("feature_layers,layout", [((-1,), "eagle"), ((1, 2, -1), "eagle"), ((1, 2, -1), "eagle3")],
                         ids=["last", "fused", "eagle3"])
@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_identity_with_head(target, batch, feature_layers, layout):
    ids, mask = make_batch(batch, seed=10 + batch)
    eos = pick_eos(target, ids, mask)
    ref = target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                          eos_token_id=eos, pad_token_id=0)
    drafter = EagleDrafter(make_head(target, feature_layers=feature_layers, layout=layout), num_draft_tokens=3)
    out = SpeculativeDecoder(target, drafter).generate(ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                                                       pad_token_id=0)
    assert torch.equal(out.sequences, ref)


@pytest.mark.parametrize("layout", ["eagle", "eagle3"])
def test_draft_equals_head_run_from_scratch(target, monkeypatch, layout):
    """At every step, the first draft token is what the head predicts from all real target features, recomputed
    without any cache: the cache and feature bookkeeping lose nothing when rows accept different counts."""
    head = make_head(target, feature_layers=(1, -1), layout=layout)
    drafter = EagleDrafter(head, num_draft_tokens=3)
    original = EagleDrafter.propose
    checked = []

    def checked_propose(self, ctx):
        draft = original(self, ctx)
        T = ctx.tokens.shape[1]
        for b in range(ctx.tokens.shape[0]):
            if draft.lengths[b] == 0:
                continue
            row = ctx.tokens[b, T - int(ctx.lengths[b]) :]  # x_0 .. x_L (x_L: newest, unprocessed)
            hs = target(row[None, :-1], output_hidden_states=True).hidden_states
            feats = torch.cat([hs[1], hs[-1]], dim=-1)  # f_0 .. f_{L-1}
            logits = head(row[None, 1:], features=feats).logits[0, -1]
            assert int(head.draft_to_target[logits.argmax()]) == int(draft.tokens[b, 0])
            checked.append(b)
        return draft

    monkeypatch.setattr(EagleDrafter, "propose", checked_propose)
    ids, mask = make_batch(4, seed=21)
    with torch.no_grad():
        SpeculativeDecoder(target, drafter).generate(ids, mask, max_new_tokens=16)
    assert len(checked) > 20


@pytest.mark.parametrize("layout", ["eagle", "eagle3"])
def test_save_load_roundtrip(target, tmp_path, layout):
    head = make_head(target, layout=layout)
    head.save(tmp_path / "head", card={"target": "tiny", "train_tokens": 0})
    assert is_head_folder(tmp_path / "head") and (tmp_path / "head" / "card.json").exists()
    loaded = EagleHead.load(tmp_path / "head", target)
    for (name, a), b in zip(head.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert head.trainable_parameters() < head.trainable_parameters(with_embeddings=True)


def test_head_for_another_target_is_refused(target, tmp_path):
    from conftest import tiny_llama

    make_head(target).save(tmp_path / "head")
    with pytest.raises(ScyllaError, match="another target"):
        EagleHead.load(tmp_path / "head", tiny_llama(vocab_size=32))
    with pytest.raises(ScyllaError, match="not a draft head"):
        EagleHead.load(tmp_path, target)


@pytest.mark.parametrize("layout", ["eagle", "eagle3"])
@pytest.mark.parametrize("batch", [1, 5])
def test_tree_greedy_identity_with_head(target, batch, layout):
    ids, mask = make_batch(batch, seed=20 + batch)
    eos = pick_eos(target, ids, mask)
    ref = target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                          eos_token_id=eos, pad_token_id=0)
    drafter = EagleDrafter(make_head(target, layout=layout), tree=TreeShape(top_k=3, depth=3, total_tokens=8))
    out = SpeculativeDecoder(target, drafter).generate(ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                                                       pad_token_id=0)
    assert torch.equal(out.sequences, ref)


def test_eagle3_layout_is_as_wide_as_the_target(target):
    with pytest.raises(ScyllaError, match="as wide as the target"):
        EagleConfig.for_target(target, width=16, layout="eagle3")
    with pytest.raises(ScyllaError, match="layout must be one of"):
        EagleConfig.for_target(target, layout="medusa")
