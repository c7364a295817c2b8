"""Offline corpora for draft training: load and split (prompt, response) pairs, tokenize and pack them."""

from train.data.corpus import load_corpus, split_heldout
from train.data.onpolicy import onpolicy_cache, regenerate_responses
from train.data.packing import draft_vocabulary, heldout_prompts, pack_blocks, token_frequencies, tokenize_examples

__all__ = [
    "draft_vocabulary",
    "heldout_prompts",
    "load_corpus",
    "onpolicy_cache",
    "pack_blocks",
    "regenerate_responses",
    "split_heldout",
    "token_frequencies",
    "tokenize_examples",
]
