"""The one dispatcher from a drafter spec string (CLI, configs) to a Drafter."""

from __future__ import annotations

from pathlib import Path

import torch

from scylla.drafters.base import Drafter
from scylla.drafters.draft_model import DraftModel
from scylla.drafters.eagle import EagleDrafter, EagleHead, is_head_folder, trained_for
from scylla.drafters.eagle3_format import eagle3_hub_folder, is_eagle3_folder, load_eagle3
from scylla.drafters.hybrid import HybridDrafter
from scylla.drafters.prompt_lookup import PromptLookup
from scylla.drafters.suffix import SuffixDrafter, SuffixPool
from scylla.errors import InputError
from scylla.models import ALIASES, PACKAGED, cache_dir, check_model_folder, is_local, load_model, truncated_draft
from scylla.specs import TreeShape, parse_spec


def check_spec(spec: str, target: str | None = None) -> tuple[str, str]:
    """``parse_spec``, and for ``draft:PATH`` with a local PATH, that the folder holds a readable config.json and
    weights, and (given the ``target``'s name) that its card.json names that target: a broken or foreign draft
    fails before the target loads."""
    kind, arg = parse_spec(spec)
    if kind == "hybrid":
        check_spec(arg, target)
    if kind == "draft" and is_local(arg):
        check_model_folder(arg)
        card = trained_for(arg)
        known = None if target is None or card is None else (_where(card), _where(target))
        if known and None not in known and known[0] != known[1]:
            raise InputError(f"draft {arg} was trained for target {card}, not {target}: give --target {card}, or a "
                             f"draft trained for {target}")
    return kind, arg


def _where(name: str) -> str | None:
    """A target name as one string per model: an alias as its cached folder, a path resolved; None for a path that
    is not here (a card written elsewhere), which cannot be compared."""
    if name in ALIASES:
        return str((cache_dir() / (PACKAGED[name].folder if name in PACKAGED else name)).resolve())
    if is_local(name):
        return str(Path(name).resolve()) if Path(name).exists() else None
    return name


def drafter_from_spec(
    spec: str,
    target: torch.nn.Module,
    num_draft_tokens: int | None = None,
    max_ngram: int | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    tree: TreeShape | None = None,
) -> Drafter | None:
    """``none`` -> None (plain decoding); ``truncated:K`` -> the target's first K layers; ``prompt-lookup``;
    ``suffix`` -> a SuffixDrafter with an (empty) SuffixPool; ``hybrid:SPEC`` -> HybridDrafter(suffix, SPEC's
    drafter); ``draft:PATH`` -> a head folder, an EAGLE-3 folder (docs/export.md) or a draft LM, from a folder or hub
    id. num_draft_tokens=None takes each drafter's default (a hybrid passes num_draft_tokens to both sides),
    max_ngram=None prompt lookup's. tree: draft an EAGLE-2 dynamic tree instead of a chain; prompt lookup and suffix
    then draft up to top_k continuations of up to depth tokens as branches (a hybrid's suffix side stays a chain)."""
    kind, arg = check_spec(spec)
    n = {} if num_draft_tokens is None else {"num_draft_tokens": num_draft_tokens}
    if kind == "none":
        return None
    if kind == "prompt-lookup":
        if tree is not None:
            n = {"num_draft_tokens": tree.depth, "branches": tree.top_k}
        return PromptLookup(**n, **({} if max_ngram is None else {"max_ngram": max_ngram}))
    if kind == "suffix":
        if tree is not None:
            n = {"num_draft_tokens": tree.depth, "branches": tree.top_k}
        return SuffixDrafter(pool=SuffixPool(), **n)
    if kind == "hybrid":
        fallback = drafter_from_spec(arg, target, num_draft_tokens, max_ngram, device, dtype, tree)
        return HybridDrafter(SuffixDrafter(pool=SuffixPool(), **n), fallback)
    n["tree"] = tree
    if kind == "truncated":
        return DraftModel(truncated_draft(target, int(arg)), **n)

    if is_head_folder(arg):
        return EagleDrafter(EagleHead.load(arg, target), **n)
    folder = Path(arg) if Path(arg).exists() or arg in ALIASES else eagle3_hub_folder(arg)
    if folder is not None and is_eagle3_folder(folder):
        return EagleDrafter(load_eagle3(folder, target), **n)
    model, _ = load_model(arg, device=device, dtype=dtype)
    return DraftModel(model, **n)
