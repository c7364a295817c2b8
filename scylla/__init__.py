"""Scylla: speculative decoding research toolkit."""

from scylla.drafters import DraftModel, PromptLookup
from scylla.engine import DecodeOutput, SpeculativeDecoder
from scylla.errors import ConfigError, InputError, ScyllaError
from scylla.metrics import DecodeStats, RowStats
from scylla.models import load_model, truncated_draft
from scylla.sampling import SamplingConfig

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
