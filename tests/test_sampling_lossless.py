"""Sampled speculative decoding follows the target's distribution exactly (chi-square against enumeration)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import scylla.engine
from conftest import tiny_llama
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead
from scylla.drafters.tree import TreeShape
from scylla.verify import verify_sampled

V = 8
NEW = 4  # t1 from the prefill, then a draft of up to 2 tokens verified with a bonus token
PROMPT = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])  # repeats give prompt lookup something to propose
SAMPLES = 24_000


def reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Independent, loop-based reference of temperature -> top-k -> top-p for one vector of logits."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.ones(V, dtype=bool)
    if top_k:
        keep[order[top_k:]] = False
    probs = np.exp(z - z.max()) * keep
    probs /= probs.sum()
    if top_p < 1.0:
        mass, kept = 0.0, np.zeros(V, dtype=bool)
        for tok in order:
            if not keep[tok] or mass >= top_p:
                continue
            kept[tok] = True
            mass += probs[tok]
        probs = probs * kept
        probs /= probs.sum()
    return probs


def exact_joint(target, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """P(t1..t4) for every one of the V**4 continuations, by enumerating prefixes through the target."""
    prefixes = torch.tensor(list(itertools.product(range(V), repeat=NEW - 1)))  # (V^3, 3)
    ids = torch.cat([PROMPT.expand(len(prefixes), -1), prefixes], dim=1)
    with torch.no_grad():
        logits = target(ids).logits[:, PROMPT.shape[1] - 1 :].float().numpy()  # (V^3, 4, V): steps 1..4
    joint = np.zeros((V,) * NEW)
    for row, prefix in enumerate(prefixes.tolist()):
        dists = [reference_probs(logits[row, j], temperature, top_k, top_p) for j in range(NEW)]
        for t4 in range(V):
            joint[tuple(prefix) + (t4,)] = dists[0][prefix[0]] * dists[1][prefix[1]] * dists[2][prefix[2]] * dists[3][t4]
    return joint.reshape(-1)


def chi_square_pvalue(samples: torch.Tensor, joint: np.ndarray) -> float:
    """Goodness of fit of samples (N, 4) to joint (V^4,), pooling cells with expected count < 5."""
    codes = (samples * torch.tensor([V**3, V**2, V, 1])).sum(1).numpy()
    observed = np.bincount(codes, minlength=V**NEW).astype(float)
    expected = joint * len(codes)
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    exp *= obs.sum() / exp.sum()
    return float(chisquare(obs, exp).pvalue)


@pytest.fixture(scope="module")
def small_target():
    return tiny_llama(vocab_size=V, layers=2, seed=11, peak=4.0)


def drafters(target):
    return {
        "unrelated": DraftModel(tiny_llama(vocab_size=V, layers=1, seed=12, peak=4.0), num_draft_tokens=2),
        "truncated": DraftModel(truncated_draft(target, 1), num_draft_tokens=2),
        "prompt_lookup": PromptLookup(max_ngram=2, num_draft_tokens=2),
        "eagle": EagleDrafter(random_head(target), num_draft_tokens=2),
        "unrelated_tree": DraftModel(tiny_llama(vocab_size=V, layers=1, seed=12, peak=4.0), tree=TREE),
        "eagle_tree": EagleDrafter(random_head(target), tree=TREE),
        "prompt_lookup_tree": PromptLookup(max_ngram=2, num_draft_tokens=2, branches=2),
    }


TREE = TreeShape(top_k=2, depth=2, total_tokens=4)


def random_head(target):
    """An untrained head over a reduced draft vocabulary (6 of 8 tokens: q is 0 on the others), sharp enough
    that it is accepted sometimes."""
    torch.manual_seed(13)
    head = EagleHead(EagleConfig.for_target(target, num_layers=1, draft_vocab_size=6), target.get_input_embeddings())
    head.draft_to_target.copy_(torch.tensor([0, 2, 3, 4, 6, 7]))
    with torch.no_grad():
        head.lm_head.weight.mul_(4.0)
    return head.eval()


def sample(target, drafter, temperature, top_k, top_p, seed=0):
    out = SpeculativeDecoder(target, drafter).generate(
        PROMPT.expand(SAMPLES, -1), max_new_tokens=NEW, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    return out.sequences[:, PROMPT.shape[1] :], out.stats


SETTINGS = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.8)]


@pytest.mark.parametrize("settings", SETTINGS, ids=["T1", "T0.7-topk5", "topp0.8"])
@pytest.mark.parametrize("name", ["unrelated", "truncated", "prompt_lookup", "eagle", "unrelated_tree", "eagle_tree",
                                  "prompt_lookup_tree"])
def test_sampling_matches_target_distribution(small_target, name, settings):
    joint = exact_joint(small_target, *settings)
    samples, stats = sample(small_target, drafters(small_target)[name], *settings)
    assert stats.drafted > 0 and 0 < stats.accepted < stats.drafted, "the test needs both accepts and rejects"
    assert chi_square_pvalue(samples, joint) > 1e-3


def test_chi_square_catches_a_wrong_verifier(small_target, monkeypatch):
    """Resampling from p instead of norm(max(0, p - q)) after a rejection is biased; the test must see it."""

    def wrong_verifier(p, q, draft, num_draft, generator=None):
        accepted, _ = verify_sampled(p, q, draft, num_draft, generator)
        p_next = p[torch.arange(p.shape[0]), accepted]
        return accepted, torch.multinomial(p_next, 1, generator=generator).squeeze(1)

    monkeypatch.setattr(scylla.engine, "verify_sampled", wrong_verifier)
    settings = SETTINGS[0]
    joint = exact_joint(small_target, *settings)
    samples, _ = sample(small_target, drafters(small_target)["unrelated"], *settings)
    assert chi_square_pvalue(samples, joint) < 1e-6


def test_chi_square_catches_a_wrong_tree_verifier(small_target, monkeypatch):
    """Trying each sibling against p itself (no residual after a rejection) over-samples them; the test must see it."""

    def wrong_verifier(p, tokens, parents, num_draft, generator=None):
        B, g = tokens.shape
        accepted, next_tokens, order = [], [], []
        for b in range(B):
            node, path = -1, []
            while True:
                children = [s for s in range(int(num_draft[b])) if int(parents[b, s]) == node]
                hit = [c for c in children
                       if float(torch.rand(1, generator=generator)) < float(p[b, node + 1, tokens[b, c]])]
                if not hit:
                    next_tokens.append(int(torch.multinomial(p[b, node + 1], 1, generator=generator)))
                    break
                node = hit[0]
                path.append(node)
            accepted.append(len(path))
            head = [0] + [c + 1 for c in path]
            order.append(head + [i for i in range(g + 1) if i not in head])
        return torch.tensor(accepted), torch.tensor(next_tokens), torch.tensor(order)

    monkeypatch.setattr(scylla.engine, "verify_tree_sampled", wrong_verifier)
    settings = SETTINGS[0]
    joint = exact_joint(small_target, *settings)
    samples, _ = sample(small_target, drafters(small_target)["unrelated_tree"], *settings)
    assert chi_square_pvalue(samples, joint) < 1e-6


def test_plain_sampling_matches_target_distribution(small_target):
    joint = exact_joint(small_target, *SETTINGS[1])
    samples, stats = sample(small_target, None, *SETTINGS[1], seed=1)
    assert stats.mean_accepted_length == 1.0
    assert chi_square_pvalue(samples, joint) > 1e-3
