"""Prompt text to model input: files of prompts, chat templates, left-padded batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from scylla.errors import InputError


def prompt_id(text: str) -> str:
    """A content hash of a prompt's text (12 hex digits): the same prompt has the same id in every record."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def read_jsonl_rows(path: str | Path, field: str = "prompt") -> list[dict]:
    """The objects of a jsonl file (blank lines skipped), each with a non-empty string under ``field``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str) or not record[field].strip():
            raise InputError(f'{path}:{number}: expected an object with a non-empty string "{field}" field')
        rows.append(record)
    if not rows:
        raise InputError(f"{path} holds no prompts")
    return rows


def read_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """Prompts from a jsonl file: one object per line with a string under ``field``."""
    return [row[field] for row in read_jsonl_rows(path, field)]


def format_prompt(tokenizer, text: str, chat: bool = True) -> str:
    """The text as a single user turn of the tokenizer's chat template (if it has one and chat is on)."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text


def encode_prompts(
    tokenizer, texts: list[str], chat: bool = True, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask), both (B, P)."""
    if not texts or any(not t.strip() for t in texts):
        raise InputError("empty prompt: every prompt needs some text")
    formatted = [format_prompt(tokenizer, t, chat) for t in texts]
    templated = chat and getattr(tokenizer, "chat_template", None)
    tokenizer.padding_side = "left"
    batch = tokenizer(formatted, return_tensors="pt", padding=True, add_special_tokens=not templated)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)
