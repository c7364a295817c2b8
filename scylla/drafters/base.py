"""The drafter interface: one small contract between the engine and every way of proposing tokens.

Call order for one ``generate`` call: ``bind`` (once, when the decoder is built), then ``start`` after the
target's prefill, then per step ``propose`` -> (target verifies) -> ``update``; ``select`` whenever finished rows
leave the batch; ``finish`` at the end. A drafter may keep state across requests (``finish`` does not have to
forget). Drafters that read the target's hidden states name the layers in ``feature_layers`` (indices into HF's
``hidden_states`` tuple); the engine then passes those states, concatenated, in ``DraftContext.hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scylla.sampling import SamplingConfig


@dataclass
class DraftContext:
    """What the engine shows a drafter.

    tokens (B, T): each row's prompt and generated tokens, right-aligned (left padding); the last column is the
    newest token, which the target has not yet processed. lengths (B,): valid tokens per row. budget (B,): the
    most tokens a row may draft this step. hidden_states (B, n, F) or None (drafters without feature_layers):
    at ``start`` the prompt's features (B, P, F); at ``update`` those of the verify input [x, d_1..d_g], of which
    the first accepted[b] + 1 are committed.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    budget: torch.Tensor
    sampling: SamplingConfig
    generator: torch.Generator | None = None
    hidden_states: torch.Tensor | None = None


@dataclass
class Draft:
    """A chain or a tree of draft tokens per row. tokens (B, g): row b uses its first lengths[b] slots (the rest is
    padding). probs (B, g, V) or None: the processed distribution each token was sampled from (None: deterministic,
    one-hot). parents (B, g) or None (a chain): for a tree, the slot of each node's parent, -1 for children of the
    root (the newest committed token); parents come before their children (parents[b, j] < j).
    A tree is verified in one target call with a tree attention mask; its drafts must be deterministic (probs None).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    probs: torch.Tensor | None = None
    parents: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: int, device: torch.device) -> "Draft":
        return cls(
            torch.zeros(batch, 0, dtype=torch.long, device=device), torch.zeros(batch, dtype=torch.long, device=device)
        )


class Drafter:
    """Base class: override ``propose``; the other hooks default to doing nothing.

    Optional hooks that the test-time-scaling protocols (scylla/tts.py) and replay use, declared here once:
    ``pool``: a shared SuffixPool fed with every finished sample or round (None: the drafter keeps none);
    ``share_rows``: the rows of a batch are samples of one problem and may draft from each other (drafters that
    cannot read sibling rows ignore it; replay refuses drafters that do); ``side_counts()``: tokens drafted per
    source so far, for hybrids ({} for the others).
    """

    feature_layers: tuple[int, ...] = ()
    name: str = "drafter"
    pool = None
    share_rows: bool = False

    def side_counts(self) -> dict[str, int]:
        return {}

    def bind(self, target: torch.nn.Module) -> None:
        """Check that this drafter can serve ``target``; raise InputError if not."""

    def start(self, ctx: DraftContext) -> None:
        """A new batch of requests begins; ctx holds the prompts plus the first token."""

    def propose(self, ctx: DraftContext) -> Draft:
        raise NotImplementedError

    def update(self, accepted: torch.Tensor, ctx: DraftContext) -> None:
        """The target accepted accepted[b] draft tokens of row b; ctx shows the updated sequences."""

    def select(self, rows: torch.Tensor) -> None:
        """Only these rows (indices into the current batch) go on."""

    def finish(self) -> None:
        """The generate call ended."""
