"""On-policy data: each example's response replaced by the target's own greedy continuation of its prompt.

A draft is judged by how well it predicts the target, not the corpus: training on the target's own text is what
peers' users are told to do when acceptance stays low. Generation runs on this engine (plain batched decoding). The
cache is a jsonl file, one line per prompt, appended per batch: a killed run resumes where it stopped, and every run
folder that asks for the same (target, token limit, chat) reads the same file under $SCYLLA_CACHE/onpolicy.

The batch size, unless given, is the fastest of BATCH_SIZES on this machine: the first batches are drawn at each of
them in turn (their responses are kept), and the rest run at the one with the most tokens per second. A response
that hits the token limit without an end-of-sequence token is marked ``truncated``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import datasets
import torch
from tqdm import tqdm

from scylla.engine import SpeculativeDecoder
from scylla.models import cache_dir
from scylla.prompts import encode_prompts

BATCH_SIZES = (8, 16, 32, 64)


def onpolicy_cache(target: str, max_new_tokens: int, chat: bool, dtype: str = "float32") -> Path:
    """The shared cache file of the target's responses at this token limit, generated in ``dtype`` (greedy text
    differs between dtypes at near-ties): $SCYLLA_CACHE/onpolicy/KEY.jsonl."""
    parts = [str(target), max_new_tokens, chat] + ([dtype] if dtype != "float32" else [])  # float32: the old key
    key = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]
    return cache_dir() / "onpolicy" / f"{key}.jsonl"


def _read_cache(cache: Path) -> dict[str, dict]:
    done = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.endswith("}"):  # a line cut by a kill is regenerated
                record = json.loads(line)
                done[record["prompt"]] = record
    return done


def regenerate_responses(
    ds: datasets.Dataset,
    target: torch.nn.Module,
    tokenizer,
    cache: str | os.PathLike,
    max_new_tokens: int = 128,
    batch_size: int | None = None,
    chat: bool = True,
) -> datasets.Dataset:
    """ds with columns prompt/response -> the same prompts with the target's greedy responses (cached in ``cache``)
    and a column ``truncated`` (the response hit max_new_tokens). batch_size None: the fastest of BATCH_SIZES."""
    cache = Path(cache)
    done = _read_cache(cache)
    prompts = [p for p in dict.fromkeys(ds["prompt"]) if p not in done]
    prompts.sort(key=len)  # similar lengths batch with little padding
    cache.parent.mkdir(parents=True, exist_ok=True)
    decoder = SpeculativeDecoder(target)
    device = next(target.parameters()).device
    trials = [batch_size] if batch_size else list(BATCH_SIZES)
    speed: dict[int, float] = {}
    bar = tqdm(total=len(prompts), desc="on-policy responses", unit="prompt", file=sys.stderr, disable=not prompts)
    with open(cache, "a", encoding="utf-8") as handle, bar:
        start = 0
        while start < len(prompts):
            size = trials[len(speed)] if len(speed) < len(trials) else max(speed, key=speed.get)
            chunk = prompts[start : start + size]
            began = time.perf_counter()
            ids, mask = encode_prompts(tokenizer, chunk, chat=chat, device=device)
            out = decoder.generate(ids, mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
            speed.setdefault(size, sum(map(len, out.generated)) / (time.perf_counter() - began))
            for prompt, tokens in zip(chunk, out.generated):
                ended = tokenizer.eos_token_id is not None and tokenizer.eos_token_id in tokens
                done[prompt] = {"prompt": prompt, "response": tokenizer.decode(tokens, skip_special_tokens=True),
                                "truncated": len(tokens) >= max_new_tokens and not ended}
                handle.write(json.dumps(done[prompt]) + "\n")
            handle.flush()
            start += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(batch=size)
    return ds.map(lambda row: {"response": done[row["prompt"]]["response"],
                               "truncated": bool(done[row["prompt"]].get("truncated", False))})
