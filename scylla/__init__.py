"""Scylla: speculative decoding research toolkit.

The names below load on first use (``from scylla import SpeculativeDecoder`` imports torch then), so that importing
``scylla`` for its version or its errors, as the CLI does before parsing its arguments, stays fast.
"""

from __future__ import annotations

import importlib

from scylla.errors import ConfigError, InputError, ScyllaError

_LAZY = {  # public name -> the module that defines it
    "DecodeOutput": "scylla.engine",
    "DecodeStats": "scylla.metrics",
    "DraftModel": "scylla.drafters",
    "PromptLookup": "scylla.drafters",
    "RowStats": "scylla.metrics",
    "SamplingConfig": "scylla.sampling",
    "SpeculativeDecoder": "scylla.engine",
    "load_model": "scylla.models",
    "truncated_draft": "scylla.models",
}

__all__ = [
    "DecodeOutput",
    "DecodeStats",
    "DraftModel",
    "PromptLookup",
    "RowStats",
    "SamplingConfig",
    "ScyllaError",
    "ConfigError",
    "InputError",
    "SpeculativeDecoder",
    "load_model",
    "truncated_draft",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import a public name's module when the name is first used (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'scylla' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
