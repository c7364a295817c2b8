"""On-policy data: each example's response replaced by the target's own greedy continuation of its prompt.

A draft is judged by how well it predicts the target, not the corpus: training on the target's own text is what
peers' users are told to do when acceptance stays low. Generation runs on this engine (plain batched decoding) and
is cached as jsonl, one line per example, appended per batch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import torch
from tqdm import tqdm

from scylla.engine import SpeculativeDecoder
from scylla.prompts import encode_prompts


def regenerate_responses(
    ds: datasets.Dataset,
    target: torch.nn.Module,
    tokenizer,
    cache: str | os.PathLike,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    chat: bool = True,
) -> datasets.Dataset:
    """ds with columns prompt/response -> the same prompts with the target's greedy responses (cached in ``cache``)."""
    cache = Path(cache)
    done: dict[str, str] = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.endswith("}"):  # a line cut by a kill is regenerated
                record = json.loads(line)
                done[record["prompt"]] = record["response"]
    prompts = [p for p in dict.fromkeys(ds["prompt"]) if p not in done]
    prompts.sort(key=len)  # similar lengths batch with little padding
    cache.parent.mkdir(parents=True, exist_ok=True)
    decoder = SpeculativeDecoder(target)
    device = next(target.parameters()).device
    with open(cache, "a", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(prompts), batch_size), desc="on-policy responses", unit="batch"):
            chunk = prompts[start : start + batch_size]
            ids, mask = encode_prompts(tokenizer, chunk, chat=chat, device=device)
            out = decoder.generate(ids, mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
            for prompt, tokens in zip(chunk, out.generated):
                response = tokenizer.decode(tokens, skip_special_tokens=True)
                done[prompt] = response
                handle.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
            handle.flush()
    return ds.map(lambda row: {"response": done[row["prompt"]]})
