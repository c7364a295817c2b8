"""Exact replay at temperature 0: the MAT of a chain or tree drafter without running the decode loop.

At T=0 the output is the target's greedy continuation y whatever the drafter does, so every verification starts
from a prefix of y. Replay asks the drafter for its draft after every prefix y[:j] at once (one batch of prefixes
per prompt), counts how many draft tokens match y from there (for a tree: the deepest node whose path matches),
and walks j -> j + accepted + 1 as the engine would.
The counts (new tokens, target calls, drafted, accepted, per position) equal online decoding's exactly; only the
time is not measured. The greedy continuations come from plain decoding by this engine, computed once.
This holds for drafters whose rows draft independently: a drafter that reads its sibling rows (a suffix drafter
with ``share_rows``) would see other prefixes of the same reference, the row's own future, so replay refuses it.
"""

from __future__ import annotations

import torch

from scylla.drafters.base import DraftContext, Drafter
from scylla.engine import SpeculativeDecoder
from scylla.errors import InputError
from scylla.metrics import DecodeStats, RowStats
from scylla.sampling import SamplingConfig


def _prefix_batch(prompt: torch.Tensor, y: list[int], starts: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned (left-padded) batch of the contexts prompt + y[:j] for j in starts: (M, T) and lengths (M,)."""
    full = torch.cat([prompt, torch.tensor(y, dtype=prompt.dtype, device=prompt.device)])
    width = len(prompt) + max(starts)
    tokens = torch.zeros(len(starts), width, dtype=prompt.dtype, device=prompt.device)
    lengths = torch.tensor([len(prompt) + j for j in starts], device=prompt.device)
    for row, j in enumerate(starts):
        tokens[row, width - len(prompt) - j :] = full[: len(prompt) + j]
    return tokens, lengths


def _prefix_features(target: torch.nn.Module, layers: list[int], prompt: torch.Tensor, y: list[int],
                     lengths: torch.Tensor, width: int, cache: dict | None) -> torch.Tensor:
    """The target's features of each prefix row, right-aligned: (M, width, F); one target call on prompt + y[:-1]
    (none when ``cache`` holds its hidden states already)."""
    full = torch.cat([prompt, torch.tensor(y[:-1], dtype=prompt.dtype, device=prompt.device)])
    key = tuple(full.tolist())
    hs = None if cache is None else cache.get(key)
    if hs is None:
        hs = target(full[None], output_hidden_states=True).hidden_states
        if cache is not None:
            cache[key] = hs
    feats = torch.cat([hs[i] for i in layers], dim=-1)[0]  # (P + N - 1, F)
    features = feats.new_zeros(len(lengths), width, feats.shape[-1])
    for r, n in enumerate((lengths - 1).tolist()):
        features[r, width - n :] = feats[:n]
    return features


def _tree_match(tokens: list[int], parents: list[int], y: list[int]) -> tuple[int, int]:
    """(depth of the deepest node whose root-to-node path is a prefix of y, the tree's depth); slots parent-first."""
    depth, matched = {-1: 0}, {-1: True}
    for s, (t, p) in enumerate(zip(tokens, parents)):
        depth[s] = depth[p] + 1
        matched[s] = matched[p] and depth[p] < len(y) and y[depth[p]] == t
    return max(depth[s] for s in depth if matched[s]), max(depth.values())


@torch.inference_mode()
def replay(
    target: torch.nn.Module,
    drafter: Drafter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 128,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    references: list[list[int]] | None = None,
    feature_cache: dict | None = None,
) -> DecodeStats:
    """Greedy decoding statistics of ``drafter`` on these prompts, by replay (no timing). ``references``: the
    target's greedy continuations, if already cached (as DecodeOutput.generated of plain decoding).
    ``feature_cache``: a dict that keeps the target's hidden states per (prompt, reference) across calls, so that
    replaying many heads on the same prompts runs the target once per prompt."""
    if drafter.share_rows:
        raise InputError(f"replay cannot run {drafter.name} with share_rows: its rows would read each other's "
                          "prefixes of one reference; decode online instead")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if references is None:
        references = SpeculativeDecoder(target).generate(
            input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        ).generated
    drafter.bind(target)
    sampling = SamplingConfig()
    stats = DecodeStats()
    for b, y in enumerate(references):
        prompt = input_ids[b][attention_mask[b].bool()]
        row = RowStats()
        row.add_step(1, 0, 0)  # the prefill yields y[0]
        if len(y) > 1:
            starts = range(1, len(y))
            tokens, lengths = _prefix_batch(prompt, y, starts)
            budget = torch.tensor([max_new_tokens - j - 1 for j in starts], device=tokens.device)
            features = None
            if drafter.feature_layers:
                features = _prefix_features(target, drafter.feature_layers, prompt, y, lengths, tokens.shape[1] - 1,
                                            feature_cache)
            ctx = DraftContext(tokens, lengths, budget, sampling, None, features)
            drafter.start(ctx)
            draft = drafter.propose(ctx)
            drafter.finish()
            proposals, counts = draft.tokens.tolist(), draft.lengths.tolist()
            parents = None if draft.parents is None else draft.parents.tolist()
            j = 1
            while j < len(y):
                d = proposals[j - 1][: counts[j - 1]]
                if parents is None:
                    k = 0
                    while k < len(d) and j + k < len(y) and d[k] == y[j + k]:
                        k += 1
                    positions = None
                else:
                    k, positions = _tree_match(d, parents[j - 1], y[j:])
                emitted = min(k + 1, len(y) - j)
                drafted, accepted = (emitted, emitted) if emitted <= k else (len(d), k)  # EOS among the drafts
                positions = emitted if emitted <= k else positions
                row.add_step(emitted, drafted, accepted, positions)
                j += emitted
        stats.rows.append(row)
        stats.absorb(row)
    return stats
