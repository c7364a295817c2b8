"""The one dispatcher from a drafter spec string (CLI, configs) to a Drafter."""

from __future__ import annotations

import torch

from scylla.drafters.base import Drafter
from scylla.drafters.draft_model import DraftModel
from scylla.drafters.prompt_lookup import PromptLookup
from scylla.drafters.tree import TreeShape
from scylla.errors import ScyllaError

SPECS = "none, truncated:K, prompt-lookup, draft:PATH (a draft LM or a trained head folder)"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split and check a spec without loading anything: (kind, argument)."""
    kind, _, arg = spec.partition(":")
    if kind == "truncated" and not arg.isdigit():
        raise ScyllaError(f"bad drafter {spec!r}: truncated:K needs a layer count, e.g. truncated:4")
    valid = {"none": not arg, "prompt-lookup": not arg, "truncated": True, "draft": bool(arg)}
    if not valid.get(kind, False):
        raise ScyllaError(f"unknown drafter {spec!r}: use one of {SPECS}")
    return kind, arg


def drafter_from_spec(
    spec: str,
    target: torch.nn.Module,
    num_draft_tokens: int | None = None,
    max_ngram: int = 3,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    tree: TreeShape | None = None,
) -> Drafter | None:
    """``none`` -> None (plain decoding); ``truncated:K`` -> the target's first K layers; ``prompt-lookup``;
    ``draft:PATH`` -> a draft LM from a folder or hub id. num_draft_tokens=None takes each drafter's default.
    tree: draft an EAGLE-2 dynamic tree instead of a chain; prompt lookup then drafts up to top_k matches of up to
    depth tokens as branches."""
    from scylla.models import load_model, truncated_draft

    kind, arg = parse_spec(spec)
    n = {} if num_draft_tokens is None else {"num_draft_tokens": num_draft_tokens}
    if kind == "none":
        return None
    if kind == "prompt-lookup":
        if tree is not None:
            n = {"num_draft_tokens": tree.depth, "branches": tree.top_k}
        return PromptLookup(max_ngram=max_ngram, **n)
    n["tree"] = tree
    if kind == "truncated":
        return DraftModel(truncated_draft(target, int(arg)), **n)
    from scylla.drafters.eagle import EagleDrafter, EagleHead, is_head_folder

    if is_head_folder(arg):
        return EagleDrafter(EagleHead.load(arg, target), **n)
    model, _ = load_model(arg, device=device, dtype=dtype)
    return DraftModel(model, **n)
