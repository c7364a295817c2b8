"""A small causal LM as the drafter (SpS, "assisted generation"), with its own KV cache and rollback."""

from __future__ import annotations

import torch

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.tree import TreeShape, expand_tree
from scylla.errors import ScyllaError
from scylla.kv import RaggedKV


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's LM head: the size of the distributions it produces."""
    return int(model.get_output_embeddings().weight.shape[0])


class DraftModel(Drafter):
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
        if num_draft_tokens < 1:
            raise ScyllaError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
        self.model = model
        self.num_draft_tokens = num_draft_tokens
        self.tree = tree
        self.kv: RaggedKV | None = None
        self.fed: tuple[torch.Tensor, torch.Tensor] | None = None  # (first position (B,), drafts cached (B, g-1))

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
        g = int(lengths.max()) if self.tree is None else int(ctx.budget.max())
        if g <= 0:
            return Draft.empty(ctx.tokens.shape[0], ctx.tokens.device)
        tail = ctx.lengths - self.kv.lengths  # tokens to feed per row (rows with an empty cache may have fewer)
        n = int(tail.max())
        mask = (torch.arange(n, device=tail.device)[None, :] >= (n - tail)[:, None]).long()
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
        """EAGLE-2 dynamic tree from the logits after the context; the tree's cache columns are dropped after."""
        base = self.kv.lengths.clone()

        def step(tokens, parent, tree, depth):
            logits = self.kv.forward(tokens, tree=tree, depth=torch.full_like(tokens, depth - 1)).logits
            return torch.log_softmax(logits.float(), dim=-1)

        draft = expand_tree(self.tree, torch.log_softmax(out.logits[:, -1].float(), dim=-1), step, ctx.budget)
        self.kv.trim(base)
        return draft

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

    def select(self, rows: torch.Tensor) -> None:
        self.kv.select(rows)

    def finish(self) -> None:
        self.kv = self.fed = None
