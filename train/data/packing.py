"""Corpus to training tensors: tokenized conversations packed into fixed-length blocks, and the draft vocabulary."""

from __future__ import annotations

import datasets
import torch

from scylla.errors import InputError


def tokenize_examples(ds: datasets.Dataset, tokenizer, chat: bool = True) -> list[list[int]]:
    """Token ids of each example, ending in the template's end-of-turn (or eos).

    With chat on and a chat template: a user turn (prompt) and an assistant turn (response), tokenized like
    ``scylla.prompts.encode_prompts`` does. Otherwise, and for examples without a prompt (plain text):
    prompt + "\\n" + response + eos (just response + eos without a prompt).
    """
    prompts, responses = list(ds["prompt"]), list(ds["response"])
    if not prompts:
        raise InputError("the corpus is empty: nothing to tokenize")
    use_template = chat and bool(getattr(tokenizer, "chat_template", None))
    conversations = [i for i, prompt in enumerate(prompts) if use_template and prompt]
    plain = [i for i, prompt in enumerate(prompts) if not (use_template and prompt)]
    ids: list[list[int]] = [[] for _ in prompts]
    if conversations:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompts[i]}, {"role": "assistant", "content": responses[i]}],
                tokenize=False,
            )
            for i in conversations
        ]
        for i, row in zip(conversations, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            ids[i] = row
    if plain:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise InputError("the tokenizer has no eos token to end plain-text examples with")
        texts = [f"{prompts[i]}\n{responses[i]}" if prompts[i] else responses[i] for i in plain]
        for i, row in zip(plain, tokenizer(texts, add_special_tokens=True)["input_ids"]):
            ids[i] = row + [eos]
    return ids


def pack_blocks(
    token_lists: list[list[int]], block_size: int, seed: int = 0, max_tokens: int | None = None
) -> torch.Tensor:
    """Examples shuffled with the seed, concatenated and cut into full blocks: a LongTensor (N, block_size).

    The tail that does not fill a block is dropped; max_tokens caps N * block_size.
    """
    if block_size < 1:
        raise InputError(f"block_size must be at least 1, got {block_size}")
    cap = sum(len(ids) for ids in token_lists) if max_tokens is None else max_tokens
    flat: list[int] = []
    order = torch.randperm(len(token_lists), generator=torch.Generator().manual_seed(seed))
    for index in order.tolist():
        if len(flat) >= cap:
            break
        flat.extend(token_lists[index])
    count = min(len(flat), cap) // block_size
    if count == 0:
        raise InputError(
            f"{min(len(flat), cap)} tokens (of the corpus or max_tokens) do not fill one block of {block_size}: "
            "use a larger corpus or a smaller block_size"
        )
    return torch.tensor(flat[: count * block_size], dtype=torch.long).view(count, block_size)


def token_frequencies(blocks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each id occurs in blocks (N, L): a LongTensor (V,)."""
    if blocks.numel() and (blocks.min() < 0 or blocks.max() >= vocab_size):
        raise InputError(f"token ids must lie in [0, {vocab_size}): the blocks hold {blocks.min()}..{blocks.max()}")
    return torch.bincount(blocks.flatten(), minlength=vocab_size)


def draft_vocabulary(blocks: torch.Tensor, vocab_size: int, size: int) -> torch.Tensor:
    """The ids of the size most frequent tokens in blocks (N, L), sorted by id: a LongTensor (size,).

    Ties go to the smaller id; unseen ids fill up (in id order) when fewer than size distinct tokens occur.
    This is the draft_to_target map of an EAGLE-style head with a reduced vocabulary.
    """
    if not 1 <= size <= vocab_size:
        raise InputError(f"draft vocabulary size must be in [1, {vocab_size}], got {size}")
    counts = token_frequencies(blocks, vocab_size)
    by_count = torch.sort(-counts, stable=True).indices  # stable: equal counts keep id order
    return torch.sort(by_count[:size]).values


def heldout_prompts(heldout_ds: datasets.Dataset, tokenizer, n: int) -> list[str]:
    """The first n usable prompts of the held-out split, as plain strings (no chat template applied).

    Usable: non-empty, and no longer than the tokenizer's model_max_length in tokens.
    """
    limit = getattr(tokenizer, "model_max_length", None) or float("inf")
    prompts = []
    for prompt in heldout_ds["prompt"]:
        if len(prompts) == n:
            break
        if prompt.strip() and len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= limit:
            prompts.append(prompt)
    if len(prompts) < n:
        raise InputError(
            f"the held-out split has {len(prompts)} usable prompts, {n} were asked for: "
            "use a larger corpus, a larger heldout_fraction or a smaller n"
        )
    return prompts
