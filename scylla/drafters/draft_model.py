"""A small causal LM as the drafter (SpS, "assisted generation"), with its own KV cache and rollback."""

from __future__ import annotations

import torch

from scylla.drafters.base import Draft, DraftContext
from scylla.drafters.cached import CachedDrafter
from scylla.drafters.tree import TreeShape
from scylla.errors import InputError
from scylla.kv import RaggedKV


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's LM head: the size of the distributions it produces."""
    return int(model.get_output_embeddings().weight.shape[0])


class DraftModel(CachedDrafter):
    """Draft ``num_draft_tokens`` tokens autoregressively with ``model``, which must share the target's vocabulary;
    or, with ``tree``, an EAGLE-2 dynamic tree (scylla.drafters.tree).

    Cache bookkeeping: after each ``update`` the draft cache holds committed tokens only, at least all but the last
    two, and every row has the same number of tokens left to feed (rows re-feed a few tokens if needed), which the
    next ``propose`` feeds together with its first forward; so all rows advance in lock-step. A cached draft token
    counts as committed only where it equals the committed token, so a caller may verify other drafts than these
    (a hybrid drafter) or skip ``propose`` for a step.
    """

    name = "draft-model"

    def __init__(self, model: torch.nn.Module, num_draft_tokens: int = 4, tree: TreeShape | None = None):
        super().__init__(num_draft_tokens, tree)
        self.model = model
        self.fed: tuple[torch.Tensor, torch.Tensor] | None = None  # (first position (B,), drafts cached (B, g-1))

    def bind(self, target: torch.nn.Module) -> None:
        mine, theirs = output_vocab_size(self.model), output_vocab_size(target)
        if mine != theirs:
            raise InputError(
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
        lengths, g = self.draft_lengths(ctx)
        if g <= 0:
            return Draft.empty(ctx.tokens.shape[0], ctx.tokens.device)
        n, mask = self.pending(ctx.lengths - self.kv.lengths)  # rows with an empty cache may feed fewer
        if self.tree is not None:
            return self._propose_tree(ctx, self.kv.forward(ctx.tokens[:, -n:], mask, logits_to_keep=1))
        feed, feed_mask = ctx.tokens[:, -n:], mask
        tokens, probs = [], []
        for _ in range(g):
            logits = self.kv.forward(feed, feed_mask, logits_to_keep=1).logits[:, -1]
            feed_mask = None
            if ctx.sampling.greedy:
                token = logits.argmax(-1)
            else:
                q = ctx.sampling.probs(logits)
                token = torch.multinomial(q, 1, generator=ctx.generator).squeeze(1)
                probs.append(q)
            tokens.append(token)
            feed = token[:, None]
        # The last token was never fed: the cache covers the context plus d_1..d_{g-1}.
        self.fed = (ctx.lengths, torch.stack(tokens[:-1], 1)) if g > 1 else None
        return Draft(torch.stack(tokens, 1), lengths, torch.stack(probs, 1) if probs else None)

    def _propose_tree(self, ctx: DraftContext, out) -> Draft:
        """EAGLE-2 dynamic tree from the logits after the context."""

        def step(tokens, parent, tree, depth):
            logits = self.kv.forward(tokens, tree=tree, depth=torch.full_like(tokens, depth - 1)).logits
            return torch.log_softmax(logits.float(), dim=-1)

        return self.tree_draft(torch.log_softmax(out.logits[:, -1].float(), dim=-1), step, ctx)

    def update(self, accepted: torch.Tensor, ctx: DraftContext) -> None:
        real = torch.minimum(self.kv.lengths, ctx.lengths - 2)  # committed tokens the cache holds
        if self.fed is not None:  # the cached drafts count up to the first one not committed
            base, drafts = self.fed
            T = ctx.tokens.shape[1]
            cols = (T - ctx.lengths + base)[:, None] + torch.arange(drafts.shape[1], device=drafts.device)
            same = ctx.tokens.gather(1, cols.clamp(max=T - 1)) == drafts
            real = torch.minimum(real, base + same.long().cumprod(1).sum(1))
        self.fed = None
        tail = int((ctx.lengths - real).max())
        self.kv.trim((ctx.lengths - tail).clamp(min=0))

    def finish(self) -> None:
        super().finish()
        self.fed = None
