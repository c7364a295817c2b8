"""Drafter specs and draft tree shapes as the text users type: parsed and checked without torch, so the CLI checks
its arguments at once (scylla.drafters.spec turns a spec into a drafter, scylla.drafters.tree grows the trees)."""

from __future__ import annotations

from dataclasses import dataclass

from scylla.errors import ConfigError

SPECS = ("none, truncated:K, prompt-lookup, suffix (suffix automaton with a pool), hybrid:SPEC (suffix where it "
         "matches >= 4 tokens, else SPEC), draft:PATH (a draft LM, a trained head folder or an EAGLE-3 folder)")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split and check a spec without loading anything: (kind, argument). For hybrid:SPEC the argument is SPEC,
    checked too."""
    kind, _, arg = spec.partition(":")
    if kind == "truncated" and not arg.isdigit():
        raise ConfigError(f"bad drafter {spec!r}: truncated:K needs a layer count, e.g. truncated:4")
    if kind == "hybrid":
        if not arg:
            raise ConfigError(f"bad drafter {spec!r}: hybrid:SPEC needs a fallback drafter, e.g. hybrid:truncated:4")
        inner, _ = parse_spec(arg)
        if inner in ("none", "suffix", "hybrid"):
            raise ConfigError(f"bad drafter {spec!r}: the fallback of hybrid:SPEC drafts where the suffix drafter "
                              f"does not, so it cannot be {inner}; e.g. hybrid:draft:PATH")
        return kind, arg
    valid = {"none": not arg, "prompt-lookup": not arg, "suffix": not arg, "truncated": True, "draft": bool(arg)}
    if not valid.get(kind, False):
        raise ConfigError(f"unknown drafter {spec!r}: use one of {SPECS}")
    return kind, arg


TREE_FORM = "top_k=K,depth=D,total_tokens=N (e.g. top_k=4,depth=4,total_tokens=16)"


@dataclass(frozen=True)
class TreeShape:
    """EAGLE-2's three knobs: children per expanded node, depth, and nodes kept (verified) per step."""

    top_k: int = 10
    depth: int = 5
    total_tokens: int = 60

    def __post_init__(self):
        if self.top_k < 1 or self.depth < 1:
            raise ConfigError(f"tree top_k and depth must be >= 1, got top_k={self.top_k}, depth={self.depth}")
        if self.total_tokens < self.depth:
            raise ConfigError(f"a tree with total_tokens={self.total_tokens} < depth={self.depth} can never use its "
                              "full depth: raise total_tokens or lower depth")
        most = self.top_k + (self.depth - 1) * self.top_k**2
        if self.total_tokens > most:
            raise ConfigError(f"total_tokens={self.total_tokens} exceeds the {most} candidates a top_k={self.top_k}, "
                              f"depth={self.depth} tree expands")

    def label(self) -> str:
        return f"top_k={self.top_k},depth={self.depth},total_tokens={self.total_tokens}"


def parse_tree(text: str) -> TreeShape:
    """'top_k=4,depth=3,total_tokens=12' -> TreeShape (missing keys take EAGLE-2's defaults 10, 5, 60)."""
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in ("top_k", "depth", "total_tokens") or not value.strip().isdigit():
            raise ConfigError(f"bad tree {text!r}: use {TREE_FORM}")
        values[key] = int(value)
    return TreeShape(**values)
