"""The speculative decoding engine: chain drafts, verified in one target forward, at any batch size.

Each step the drafter proposes up to gamma tokens per row; the target scores [x, d_1..d_g] in one call; each row
accepts a prefix (greedy match at T=0, rejection sampling at T>0) plus one target token; caches roll back to the
accepted length. With ``drafter=None`` the same loop is plain autoregressive decoding: the baseline for speed-ups.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.errors import InputError
from scylla.kv import RaggedKV, realign
from scylla.metrics import DecodeStats, RowStats
from scylla.sampling import SamplingConfig
from scylla.verify import tree_ancestors, verify_greedy, verify_sampled, verify_tree_greedy, verify_tree_sampled


@dataclass
class DecodeOutput:
    """sequences (B, P + N): the prompt as given, then new tokens, rows that finished early padded with
    pad_token_id: the layout of ``target.generate``. generated: each row's new tokens. stats: see scylla.metrics.
    """

    sequences: torch.Tensor
    generated: list[list[int]]
    stats: DecodeStats


def _eos_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]


def _check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise InputError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise InputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}"
        )
    mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    if bool((mask.sum(1) == 0).any()):
        raise InputError("empty prompt: a row of attention_mask has no 1s")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise InputError("attention_mask must be left-padded (0s before 1s): set tokenizer.padding_side = 'left'")
    return mask


@dataclass
class StepResult:
    """What one target call settled, per active row: new (B, k) holds the accepted draft tokens then the target's
    token (accepted[b] + 1 of them count); drafted (B,): draft tokens verified; accepted (B,); positions (B,): the
    draft's depth (see RowStats.add_step)."""

    new: torch.Tensor
    drafted: torch.Tensor
    accepted: torch.Tensor
    positions: torch.Tensor


@dataclass
class _Decoding:
    """The state of one ``generate`` call. seq (B', T): active rows' tokens, right-aligned; seq_len (B',); rows: the
    original index of each active row; generated: every row's new tokens so far."""

    kv: RaggedKV
    sampling: SamplingConfig
    generator: torch.Generator | None
    eos: set[int]
    max_new_tokens: int
    layers: tuple[int, ...]
    stats: DecodeStats
    generated: list[list[int]]
    rows: list[int]
    seq: torch.Tensor | None = None
    seq_len: torch.Tensor | None = None
    t_start: float = 0.0

    def context(self, budget: torch.Tensor, out=None) -> DraftContext:
        """What the drafter sees; out: a target output whose hidden states the drafter's layers are taken from."""
        hidden = None
        if self.layers and out is not None:
            hidden = torch.cat([out.hidden_states[i] for i in self.layers], dim=-1)
        return DraftContext(self.seq, self.seq_len, budget, self.sampling, self.generator, hidden)


class SpeculativeDecoder:
    """Decode with ``target`` (a HF causal LM), drafting with ``drafter`` (None = plain decoding)."""

    def __init__(self, target: torch.nn.Module, drafter: Drafter | None = None):
        self.target = target
        self.drafter = drafter
        if drafter is not None:
            drafter.bind(target)

    def _clock(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
    ) -> DecodeOutput:
        """Generate up to max_new_tokens per row for input_ids (B, P), left-padded per attention_mask (B, P).

        eos_token_id / pad_token_id default to the target's generation config, as in HF generate. seed fixes the
        sampling (and the drafter's sampling) through one torch.Generator.
        """
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        sampling = SamplingConfig(float(temperature), int(top_k), float(top_p))
        mask = _check_prompt(input_ids, attention_mask)
        gen_config = getattr(self.target, "generation_config", None)
        if eos_token_id is None and gen_config is not None:
            eos_token_id = gen_config.eos_token_id
        eos = _eos_list(eos_token_id)
        if pad_token_id is None:
            pad_token_id = getattr(gen_config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
        generator = None
        if seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        B = input_ids.shape[0]
        run = _Decoding(RaggedKV(self.target), sampling, generator, set(eos), max_new_tokens,
                        self.drafter.feature_layers if self.drafter is not None else (),
                        DecodeStats(rows=[RowStats() for _ in range(B)]), [[] for _ in range(B)], list(range(B)))
        done = self._prefill(run, input_ids, mask)
        while self._drop_finished(run, done):
            done = self._step(run)
        return self._finish(run, input_ids, pad_token_id)

    def _prefill(self, run: _Decoding, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The target reads the prompts and picks each row's first token; the drafter starts. Returns done (B,)."""
        device = input_ids.device
        run.t_start = self._clock(device)
        out = run.kv.forward(input_ids, mask, output_hidden_states=bool(run.layers), logits_to_keep=1)  # all P
        first = run.sampling.pick(out.logits[:, -1], run.generator)
        run.seq = torch.cat([input_ids, first[:, None]], dim=1)
        run.seq_len = mask.sum(1) + 1
        run.stats.forward_passes += 1
        nothing = torch.zeros_like(first)
        done = self._commit(run, StepResult(first[:, None], nothing, nothing, nothing))
        t_now = self._clock(device)
        run.stats.verify_seconds += t_now - run.t_start
        if self.drafter is not None:
            self.drafter.start(run.context(torch.zeros_like(run.seq_len), out))
            run.stats.draft_seconds += self._clock(device) - t_now
        run.stats.prefill_seconds = self._clock(device) - run.t_start
        run.stats.generate_calls = 1
        return done

    def _drop_finished(self, run: _Decoding, done: torch.Tensor) -> bool:
        """Finished rows leave the batch (cache, sequences, drafter); returns whether any row goes on."""
        if not bool(done.any()):
            return True
        keep = (~done).nonzero().squeeze(1)
        t_now = self._clock(run.seq.device)
        for i in done.nonzero().squeeze(1).tolist():
            run.stats.rows[run.rows[i]].wall_seconds = t_now - run.t_start
        if keep.numel() == 0:
            return False
        run.rows = [run.rows[i] for i in keep.tolist()]
        run.kv.select(keep)
        run.seq, run.seq_len = run.seq[keep], run.seq_len[keep]
        if self.drafter is not None:
            self.drafter.select(keep)
        return True

    def _step(self, run: _Decoding) -> torch.Tensor:
        """One speculative step: draft, verify in one target call, roll the cache back to what was accepted, emit,
        and tell the drafter. Returns done (B,)."""
        kv, seq_len, device = run.kv, run.seq_len, run.seq.device
        remaining = torch.tensor([run.max_new_tokens - len(run.generated[r]) for r in run.rows], device=device)
        t0 = self._clock(device)
        if self.drafter is not None:
            draft = self.drafter.propose(run.context(remaining - 1))
        else:
            draft = Draft.empty(len(run.rows), device)
        t1 = self._clock(device)
        g = draft.tokens.shape[1]
        verify_input = torch.cat([run.seq[:, -1:], draft.tokens], dim=1)
        hidden = bool(run.layers)
        if draft.parents is None or g == 0:  # a chain (an empty tree is an empty chain)
            out = kv.forward(verify_input, output_hidden_states=hidden)
            if run.sampling.greedy:
                accepted, next_token = verify_greedy(out.logits, draft.tokens, draft.lengths)
            else:
                p = run.sampling.probs(out.logits)
                accepted, next_token = verify_sampled(p, draft.probs, draft.tokens, draft.lengths, run.generator)
            path, positions = draft.tokens, draft.lengths
        else:
            out, accepted, next_token, path, positions = self._verify_tree(kv, verify_input, draft, run.sampling,
                                                                            run.generator, hidden)
        kv.trim(kv.lengths - g + accepted)
        new = torch.cat([path, next_token[:, None]], dim=1)
        new.scatter_(1, accepted[:, None], next_token[:, None])  # row b: d_1..d_k, then the target's token
        run.seq = realign(torch.cat([run.seq, new], dim=1), 1, seq_len + g + 1, seq_len + accepted + 1)
        run.seq_len = seq_len + accepted + 1
        run.stats.forward_passes += 1
        done = self._commit(run, StepResult(new, draft.lengths, accepted, positions))
        t2 = self._clock(device)
        if self.drafter is not None:
            self.drafter.update(accepted, run.context(torch.zeros_like(run.seq_len), out))
        t3 = self._clock(device)
        run.stats.draft_seconds += (t1 - t0) + (t3 - t2)
        run.stats.verify_seconds += t2 - t1
        return done

    def _finish(self, run: _Decoding, input_ids: torch.Tensor, pad_token_id: int) -> DecodeOutput:
        """Totals, and the sequences in the layout of ``target.generate``."""
        if self.drafter is not None:
            self.drafter.finish()
        stats = run.stats
        stats.wall_seconds = self._clock(input_ids.device) - run.t_start
        for row in stats.rows:
            stats.absorb(row)
        width = max(len(g) for g in run.generated)
        tail = torch.full((len(run.generated), width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
        for b, toks in enumerate(run.generated):
            tail[b, : len(toks)] = torch.tensor(toks, dtype=input_ids.dtype)
        return DecodeOutput(torch.cat([input_ids, tail], dim=1), run.generated, stats)

    @staticmethod
    def _verify_tree(kv: RaggedKV, verify_input: torch.Tensor, draft: Draft, sampling: SamplingConfig,
                     generator: torch.Generator | None, hidden: bool):
        """Score a tree draft in one target call with tree attention, accept a path, and reorder the cache and
        the output so that the path comes first (the caller then trims as for a chain).

        Returns (out, accepted (B,), next_token (B,), path (B, g): the draft tokens in verify-input order, depth (B,):
        each tree's depth)."""
        assert draft.probs is None, "tree drafts must be deterministic (probs None): sampled trees are not verified"
        anc = tree_ancestors(draft.parents)
        out = kv.forward(verify_input, tree=anc, depth=anc.sum(-1) - 1, output_hidden_states=hidden)
        if sampling.greedy:
            accepted, next_token, order = verify_tree_greedy(out.logits, draft.tokens, draft.parents, draft.lengths,
                                                             anc)
        else:
            accepted, next_token, order = verify_tree_sampled(sampling.probs(out.logits), draft.tokens,
                                                              draft.parents, draft.lengths, generator)
        kv.reorder_new(order)
        if hidden:
            out.hidden_states = tuple(h.gather(1, order[:, :, None].expand(-1, -1, h.shape[2]))
                                      for h in out.hidden_states)
        valid = torch.arange(anc.shape[1], device=anc.device)[None, :] <= draft.lengths[:, None]  # x and nodes
        depth = torch.where(valid, anc.sum(-1) - 1, 0).max(dim=1).values
        return out, accepted, next_token, verify_input.gather(1, order)[:, 1:], depth

    @staticmethod
    def _commit(run: _Decoding, step: StepResult) -> torch.Tensor:
        """Emit each active row's accepted[b] + 1 tokens of step.new, stopping at EOS or max_new_tokens.

        Updates run.generated and the row stats; returns done (B,) bool.
        """
        counts = (step.accepted + 1).tolist()
        new_l, drafted_l = step.new.tolist(), step.drafted.tolist()
        accepted_l, positions_l = step.accepted.tolist(), step.positions.tolist()
        done = []
        for i, r in enumerate(run.rows):
            generated = run.generated[r]
            toks = new_l[i][: counts[i]][: run.max_new_tokens - len(generated)]
            finished = False
            for j, t in enumerate(toks):
                if t in run.eos:
                    toks, finished = toks[: j + 1], True
                    break
            generated.extend(toks)
            drafted, accepted, positions = drafted_l[i], accepted_l[i], positions_l[i]
            if len(toks) <= accepted:  # EOS among the accepted drafts: the drafts after it do not count
                drafted = accepted = positions = len(toks)
            run.stats.rows[r].add_step(len(toks), drafted, accepted, positions)
            done.append(finished or len(generated) >= run.max_new_tokens)
        return torch.tensor(done, device=step.new.device)
