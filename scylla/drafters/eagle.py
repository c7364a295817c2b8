"""EAGLE-style draft heads: decoder layers on top of the target's hidden states, drafting in feature space.

A head reads pairs (f_t, x_{t+1}): the target's features at position t (one layer, or several fused as in EAGLE-3)
and the embedding of the next token. ``fuse`` maps the features to the head's width, D Llama decoder layers give
h_{t+1} (a prediction of the next feature), and the LM head scores a draft vocabulary: the target's V_d most
frequent tokens, mapped back by ``draft_to_target`` (V_d may be the whole vocabulary). Drafting past the accepted
text feeds h back in place of the target's features. Two layouts join the feature with the embedding:

- ``eagle`` (EAGLE-1/2, Li et al. 2024): ``in_proj`` maps [u; embedding] to the width, then standard layers and a
  norm; h is the normed output; any width.
- ``eagle3`` (EAGLE-3, Li et al. 2025): the first layer's attention reads [norm(embedding); norm(u)] (2 x width
  inputs) and its residual is u itself; h is the last layer's output before the final norm, which only the LM head
  reads. The width is the target's hidden size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from scylla.atomic import atomic_folder
from scylla.drafters.base import Draft, DraftContext
from scylla.drafters.cached import CachedDrafter
from scylla.drafters.tree import TreeShape
from scylla.errors import InputError
from scylla.kv import RaggedKV, realign


LAYOUTS = ("eagle", "eagle3")


def serving_engines(width: int, layout: str, target_width: int | None) -> str:
    """Which engines load a head of this width and layout: EAGLE-3 serving engines (vLLM, SGLang) take the eagle3
    layout at the target's width (after ``scylla export``); anything else runs in Scylla's engine only."""
    if layout == "eagle3" and width == target_width:
        return "EAGLE-3 engines (vLLM, SGLang, after scylla export) and Scylla"
    return ("Scylla only: no serving engine loads this layout" + (" or width" if width != target_width else "")
            + (f"; EAGLE-3 engines need layout eagle3 at the target's width, {target_width}" if target_width else ""))


@dataclass
class EagleConfig:
    """Shape of a head. feature_layers index the target's ``hidden_states`` tuple (0 = embeddings, -1 = the final,
    normed layer); several indices are fused (EAGLE-3 uses a low, a middle and a high layer)."""

    target_hidden_size: int
    target_vocab_size: int
    num_layers: int = 1
    width: int = 0  # 0: the target's hidden size
    intermediate_size: int = 0  # 0: the target's, scaled by width
    num_attention_heads: int = 0  # 0: the target's
    num_key_value_heads: int = 0
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    draft_vocab_size: int = 0  # 0: the whole target vocabulary
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    layout: str = "eagle"  # see the module docstring: eagle | eagle3

    @classmethod
    def for_target(cls, target: nn.Module, **overrides) -> "EagleConfig":
        """Defaults taken from a HF target's config (width, heads, rope), then ``overrides``."""
        c = target.config
        rope = getattr(c, "rope_parameters", None) or {}
        base = dict(
            target_hidden_size=c.hidden_size,
            target_vocab_size=int(target.get_output_embeddings().weight.shape[0]),
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=getattr(c, "num_key_value_heads", c.num_attention_heads),
            intermediate_size=c.intermediate_size,
            rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
            rms_norm_eps=float(getattr(c, "rms_norm_eps", 1e-5)),
            max_position_embeddings=c.max_position_embeddings,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base).resolved()

    def resolved(self) -> "EagleConfig":
        """Fill the 0 = default fields and check the shape."""
        width = self.width or self.target_hidden_size
        heads, kv_heads = self.num_attention_heads or 1, self.num_key_value_heads
        if width % heads:  # a narrower head than the target: attention heads of 64 dimensions
            heads = kv_heads = max(1, width // 64)
        if width % heads or (kv_heads and heads % kv_heads):
            raise InputError(f"head width {width} does not split into {heads} attention heads ({kv_heads} kv)")
        if self.num_layers < 1:
            raise InputError(f"a head needs at least 1 decoder layer, got {self.num_layers}")
        if self.layout not in LAYOUTS:
            raise InputError(f"head layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.layout == "eagle3" and width != self.target_hidden_size:
            raise InputError(f"an eagle3 head is as wide as the target ({self.target_hidden_size}), got width {width}")
        scale = width / self.target_hidden_size
        return EagleConfig(
            **{
                **asdict(self),
                "width": width,
                "num_attention_heads": heads,
                "num_key_value_heads": kv_heads or heads,
                "intermediate_size": self.intermediate_size and round(self.intermediate_size * scale) or 4 * width,
                "draft_vocab_size": self.draft_vocab_size or self.target_vocab_size,
            }
        )

    def decoder_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=1,  # the decoder's own embedding is unused: inputs come as embeddings
            hidden_size=self.width,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )


class Eagle3Layer(LlamaDecoderLayer):
    """EAGLE-3's first layer: input (B, n, 2W) = [embedding; u]; attention reads [norm(embedding); norm(u)], the
    residual is u. Output (B, n, W)."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        attn, width = self.self_attn, config.hidden_size
        attn.q_proj = nn.Linear(2 * width, attn.q_proj.out_features, bias=False)
        attn.k_proj = nn.Linear(2 * width, attn.k_proj.out_features, bias=False)
        attn.v_proj = nn.Linear(2 * width, attn.v_proj.out_features, bias=False)
        self.hidden_norm = LlamaRMSNorm(width, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        embedding, u = hidden_states.chunk(2, dim=-1)
        x = torch.cat([self.input_layernorm(embedding), self.hidden_norm(u)], dim=-1)
        x = u + self.self_attn(hidden_states=x, **kwargs)[0]
        return x + self.mlp(self.post_attention_layernorm(x))


class EagleHead(nn.Module):
    """The trainable head. The token embedding is the target's (frozen, not saved with the head)."""

    def __init__(self, config: EagleConfig, embed_tokens: nn.Module):
        super().__init__()
        self.head_config = config
        self.embed_tokens = embed_tokens
        for p in self.embed_tokens.parameters():
            p.requires_grad_(False)
        n_features = len(config.feature_layers) * config.target_hidden_size
        self.fuse = nn.Linear(n_features, config.width, bias=False)
        self.decoder = LlamaModel(config.decoder_config())
        self.config = self.decoder.config  # what HF caches and masks read
        if config.layout == "eagle":
            self.in_proj = nn.Linear(config.width + config.target_hidden_size, config.width, bias=False)
        else:  # eagle3: the first layer joins the inputs; the final norm moves out of the decoder (h is pre-norm)
            self.decoder.layers[0] = Eagle3Layer(self.config, 0)
            self.decoder.layers[0].apply(self.decoder._init_weights)
            self.norm, self.decoder.norm = self.decoder.norm, nn.Identity()
        self.lm_head = nn.Linear(config.width, config.draft_vocab_size, bias=False)
        self.register_buffer("draft_to_target", torch.arange(config.draft_vocab_size), persistent=True)

    def forward(
        self,
        input_ids: torch.Tensor,
        features: torch.Tensor | None = None,
        own_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        **_: object,
    ):
        """input_ids (B, n): target ids of x_{t+1}; features (B, n, k*H_target): the target's f_t, or
        own_features (B, n, width): the head's own h_t. Returns .logits (B, n', V_d) over the draft vocabulary
        and .hidden_states (B, n, width): h_{t+1}."""
        u = self.fuse(features) if own_features is None else own_features
        embedding = self.embed_tokens(input_ids).to(u.dtype)
        if self.head_config.layout == "eagle":
            x = self.in_proj(torch.cat([u, embedding], dim=-1))
        else:
            x = torch.cat([embedding, u], dim=-1)
        h = self.decoder(
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        ).last_hidden_state
        kept = h[:, -logits_to_keep:] if logits_to_keep else h
        logits = self.lm_head(kept if self.head_config.layout == "eagle" else self.norm(kept))
        return SimpleNamespace(logits=logits, hidden_states=h)

    def trainable_parameters(self, with_embeddings: bool = False) -> int:
        """Parameter count of the head (the shared, frozen target embedding only if asked)."""
        own = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("embed_tokens."))
        return own + (self.embed_tokens.weight.numel() if with_embeddings else 0)

    def save(self, folder: str | os.PathLike, card: dict | None = None, force: bool = False) -> None:
        """config.json, model.safetensors (no target embedding) and card.json, written atomically as a folder; an
        existing folder that is no draft scylla wrote is replaced only with ``force`` (scylla.atomic.atomic_folder)."""
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("embed_tokens.")}
        with atomic_folder(folder, force=force) as tmp:
            save_file(state, tmp / "model.safetensors")
            config = {"scylla_type": "eagle_head", **asdict(self.head_config)}
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            (tmp / "card.json").write_text(json.dumps(card or {}, indent=2, default=str))

    @classmethod
    def load(cls, folder: str | os.PathLike, target: nn.Module) -> "EagleHead":
        """A saved head, attached to the target's embedding; device and dtype follow the target."""
        folder = Path(folder)
        config = read_head_config(folder)
        vocab, layers = int(target.get_output_embeddings().weight.shape[0]), int(target.config.num_hidden_layers)
        if (config.target_vocab_size != vocab or config.target_hidden_size != target.config.hidden_size
                or not all(-layers - 1 <= i <= layers for i in config.feature_layers)):
            raise InputError(f"head {folder} was trained for another target ({trained_for(folder) or 'unnamed'}: "
                             f"vocabulary {config.target_vocab_size}, width {config.target_hidden_size}, features of "
                             f"layers {config.feature_layers}) than {target.name_or_path or 'this one'} (vocabulary "
                             f"{vocab}, width {target.config.hidden_size}, {layers} layers): give the head's target")
        head = cls(config, target.get_input_embeddings())
        missing, unexpected = head.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
        if unexpected or [k for k in missing if not k.startswith("embed_tokens.")]:
            raise InputError(f"{folder}/model.safetensors does not match its config.json")
        param = next(target.parameters())
        return head.to(device=param.device, dtype=param.dtype).eval()


def read_head_config(folder: str | os.PathLike) -> EagleConfig:
    """The EagleConfig of a saved head folder, read without loading weights or a target."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{folder} is not a draft head folder (no readable config.json)") from None
    if raw.pop("scylla_type", None) != "eagle_head":
        raise InputError(f"{folder} is not an EAGLE head (config.json has no scylla_type eagle_head)")
    return EagleConfig(**raw)


def trained_for(folder: str | os.PathLike) -> str | None:
    """The target a draft folder's card.json names (scylla's trained drafts have one), or None."""
    try:
        card = json.loads((Path(folder) / "card.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return str(card["target"]) if isinstance(card, dict) and card.get("target") else None


def is_head_folder(path: str | os.PathLike) -> bool:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("scylla_type") == "eagle_head"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


class EagleDrafter(CachedDrafter):
    """Drafts ``num_draft_tokens`` tokens with an EagleHead, reading the target's features at accepted positions.

    Bookkeeping per row: ``known`` = tokens whose target features we hold (all but the newest token), so pairs
    (f_t, x_{t+1}) exist for t < known. The head's cache holds the first kv.lengths of them, built from real target
    features only; pairs built from the head's own h while drafting are rolled back after each verification.
    ``feats`` keeps the newest target features, right-aligned with the context, so the pairs not yet cached can be
    fed in one forward.
    """

    name = "eagle"

    def __init__(self, head: EagleHead, num_draft_tokens: int = 4, tree: TreeShape | None = None):
        super().__init__(num_draft_tokens, tree)
        self.head = head
        self.feature_layers = tuple(head.head_config.feature_layers)
        self.feats: torch.Tensor | None = None  # (B, W, F)
        self.known: torch.Tensor | None = None  # (B,)

    def bind(self, target: nn.Module) -> None:
        vocab = int(target.get_output_embeddings().weight.shape[0])
        if self.head.head_config.target_vocab_size != vocab:
            raise InputError(
                f"draft head was built for a {self.head.head_config.target_vocab_size}-token vocabulary; "
                f"the target has {vocab}"
            )

    def start(self, ctx: DraftContext) -> None:
        self.kv = RaggedKV(self.head)
        self.kv.lengths = torch.zeros_like(ctx.lengths)
        self.feats = ctx.hidden_states  # (B, P, F): the prompt's features, left-padded like the prompt
        self.known = ctx.lengths - 1

    def _to_target(self, logits: torch.Tensor, ctx: DraftContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft-vocabulary logits (B, V_d) -> target ids (B,) and q over the target vocabulary (B, V) or None."""
        d2t = self.head.draft_to_target
        if ctx.sampling.greedy:
            return d2t[logits.argmax(-1)], None
        q_draft = ctx.sampling.probs(logits)
        choice = torch.multinomial(q_draft, 1, generator=ctx.generator).squeeze(1)
        q = q_draft.new_zeros(logits.shape[0], self.head.head_config.target_vocab_size)
        q[:, d2t] = q_draft
        return d2t[choice], q

    def propose(self, ctx: DraftContext) -> Draft:
        lengths, g = self.draft_lengths(ctx)
        if g <= 0:
            return Draft.empty(ctx.tokens.shape[0], ctx.tokens.device)
        n, mask = self.pending(self.known - self.kv.lengths)  # pairs to feed; rows with an empty cache may have fewer
        out = self.kv.forward(ctx.tokens[:, -n:], mask, features=self.feats[:, -n:], logits_to_keep=1)
        if self.tree is not None:
            return self._propose_tree(out, ctx)
        tokens, probs = [], []
        for step in range(g):
            token, q = self._to_target(out.logits[:, -1], ctx)
            tokens.append(token)
            if q is not None:
                probs.append(q)
            if step + 1 < g:
                out = self.kv.forward(token[:, None], own_features=out.hidden_states[:, -1:], logits_to_keep=1)
        return Draft(torch.stack(tokens, 1), lengths, torch.stack(probs, 1) if probs else None)

    def _propose_tree(self, out, ctx: DraftContext) -> Draft:
        """EAGLE-2 dynamic tree from the head's output after the pending pairs (accepted nodes are fed again with the
        target's real features by the next propose)."""
        h = out.hidden_states[:, -1:]  # (B, 1, width): what the root's children are drafted from

        def step(tokens, parent, tree, depth):
            nonlocal h
            own = h.gather(1, parent[:, :, None].expand(-1, -1, h.shape[2]))
            res = self.kv.forward(tokens, tree=tree, depth=torch.full_like(tokens, depth - 1), own_features=own)
            h = res.hidden_states
            return torch.log_softmax(res.logits.float(), dim=-1)

        root = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        return self.tree_draft(root, step, ctx, self.head.draft_to_target)

    def update(self, accepted: torch.Tensor, ctx: DraftContext) -> None:
        # ctx.hidden_states (B, g+1, F): features of the verify input [x, d_1..d_g]; the first accepted+1 are real.
        new = ctx.hidden_states
        width = self.feats.shape[1] + new.shape[1]
        self.feats = realign(torch.cat([self.feats, new], 1), 1, torch.full_like(accepted, width),
                             width - new.shape[1] + accepted + 1)
        real = torch.minimum(self.kv.lengths, self.known)  # drop pairs built from drafted features
        self.known = self.known + accepted + 1
        # Every row feeds the same number of pairs next time, except rows whose cache becomes empty.
        tail = int((self.known - real).max())
        self.kv.trim((self.known - tail).clamp(min=0))
        keep = max(tail, (self.tree.depth if self.tree else self.num_draft_tokens) + 2)
        if self.feats.shape[1] > keep:
            self.feats = self.feats[:, -keep:]

    def select(self, rows: torch.Tensor) -> None:
        super().select(rows)
        self.feats = self.feats[rows]
        self.known = self.known[rows]

    def finish(self) -> None:
        super().finish()
        self.feats = self.known = None
