"""A small causal LM as the drafter (SpS, "assisted generation"), with its own KV cache and rollback."""

from __future__ import annotations

import torch

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.errors import ScyllaError
from scylla.kv import RaggedKV


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's LM head: the size of the distributions it produces."""
    return int(model.get_output_embeddings().weight.shape[0])


class DraftModel(Drafter):
    """Draft ``num_draft_tokens`` tokens autoregressively with ``model``, which must share the target's vocabulary.

    Cache bookkeeping: after each ``update`` the draft cache holds every committed token but the last two, which the
    next ``propose`` feeds together with its first forward; so all rows advance in lock-step.
    """

    name = "draft-model"

    def __init__(self, model: torch.nn.Module, num_draft_tokens: int = 4):
        if num_draft_tokens < 1:
            raise ScyllaError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
        self.model = model
        self.num_draft_tokens = num_draft_tokens
        self.kv: RaggedKV | None = None

    def bind(self, target: torch.nn.Module) -> None:
        mine, theirs = output_vocab_size(self.model), output_vocab_size(target)
        if mine != theirs:
            raise ScyllaError(
                f"draft model vocabulary ({mine} tokens) differs from the target's ({theirs}): "
                "a draft model must use the target's tokenizer"
            )

    def start(self, ctx: DraftContext) -> None:
        self.kv = RaggedKV(self.model)
        T = ctx.tokens.shape[1] - 1
        prompt = ctx.tokens[:, :T]  # everything but the newest token
        mask = (torch.arange(T, device=prompt.device)[None, :] >= T - (ctx.lengths - 1)[:, None]).long()
        self.kv.forward(prompt, mask, logits_to_keep=1)

    def propose(self, ctx: DraftContext) -> Draft:
        lengths = ctx.budget.clamp(min=0, max=self.num_draft_tokens)
        g = int(lengths.max())
        if g == 0:
            return Draft.empty(ctx.tokens.shape[0], ctx.tokens.device)
        tail = ctx.lengths - self.kv.lengths
        n = int(tail[0])
        assert bool((tail == n).all()) and n >= 1, "draft cache out of step with the context"
        feed = ctx.tokens[:, -n:]
        tokens, probs = [], []
        for _ in range(g):
            logits = self.kv.forward(feed, logits_to_keep=1).logits[:, -1]
            if ctx.sampling.greedy:
                token = logits.argmax(-1)
            else:
                q = ctx.sampling.probs(logits)
                token = torch.multinomial(q, 1, generator=ctx.generator).squeeze(1)
                probs.append(q)
            tokens.append(token)
            feed = token[:, None]
        # The last token was never fed: the cache covers the context plus d_1..d_{g-1}.
        return Draft(torch.stack(tokens, 1), lengths, torch.stack(probs, 1) if probs else None)

    def update(self, accepted: torch.Tensor, ctx: DraftContext) -> None:
        self.kv.trim(torch.minimum(self.kv.lengths, ctx.lengths - 2))

    def select(self, rows: torch.Tensor) -> None:
        self.kv.select(rows)

    def finish(self) -> None:
        self.kv = None
