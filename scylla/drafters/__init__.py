"""Drafters: one module per method, all behind scylla.drafters.base.Drafter."""

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.draft_model import DraftModel
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead
from scylla.drafters.hybrid import HybridDrafter
from scylla.drafters.prompt_lookup import PromptLookup
from scylla.drafters.suffix import SuffixAutomaton, SuffixDrafter, SuffixPool

__all__ = ["Draft", "DraftContext", "Drafter", "DraftModel", "EagleConfig", "EagleDrafter", "EagleHead",
           "HybridDrafter", "PromptLookup", "SuffixAutomaton", "SuffixDrafter", "SuffixPool"]
