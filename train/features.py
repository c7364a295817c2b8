"""Target features computed once and reused by every draft of a sweep (the target's forward dominates the cost).

A store is a folder of shards, ``shard-00000.safetensors`` ..., each holding ``tokens`` (n, T) int64 and, per
target layer i in ``layers``, ``layer_{i}`` (n, T, H): float16 from a float32 target, bfloat16 from a bfloat16 one
(its own values, not rounded again; ``meta.json`` says which). Shards are written atomically, so a killed build
resumes at the first missing shard; ``meta.json`` (written last) marks the store complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from scylla.atomic import atomic_path, write_json_atomic
from scylla.errors import InputError


class FeatureStore:
    """Read access to a complete store: ``get(indices)`` -> tokens (b, T), features (b, T, F) float32."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise InputError(f"{self.folder} is not a complete feature store (no meta.json)") from None
        self.shard_blocks = self.meta["shard_blocks"]
        self._shards: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.meta["blocks"]

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def _shard(self, i: int) -> dict[str, torch.Tensor]:
        if i not in self._shards:
            self._shards[i] = load_file(self.folder / f"shard-{i:05d}.safetensors")
        return self._shards[i]

    def get(self, indices: list[int], layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``indices``: tokens (b, T) and the named layers' features concatenated, (b, T, len(layers)*H)."""
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise InputError(f"feature store {self.folder} has no layer {missing[0]} (it has {self.layers})")
        tokens, feats = [], []
        for index in indices:
            shard = self._shard(index // self.shard_blocks)
            row = index % self.shard_blocks
            tokens.append(shard["tokens"][row])
            feats.append(torch.cat([shard[f"layer_{layer}"][row] for layer in layers], dim=-1))
        return torch.stack(tokens), torch.stack(feats).float()


@torch.inference_mode()
def build_feature_store(
    folder: str | os.PathLike,
    target: torch.nn.Module,
    blocks: torch.Tensor,
    layers: list[int],
    batch_blocks: int = 4,
    shard_blocks: int = 256,
) -> FeatureStore:
    """Run the target over blocks (N, T) once and store the hidden states of ``layers`` (indices into HF's
    ``hidden_states``). Returns the store; an existing complete store for the same blocks is reused."""
    folder = Path(folder)
    if (folder / "meta.json").exists():
        store = FeatureStore(folder)
        if store.meta["blocks"] == len(blocks) and set(layers) <= set(store.layers):
            return store
        raise InputError(f"feature store {folder} was built for other data or layers: delete it or pick another")
    folder.mkdir(parents=True, exist_ok=True)
    device = next(target.parameters()).device
    body = target.base_model  # the hidden states without the LM head (a fifth of SmolLM2's forward)
    stored = torch.bfloat16 if next(target.parameters()).dtype == torch.bfloat16 else torch.float16
    n_shards = (len(blocks) + shard_blocks - 1) // shard_blocks
    for i in tqdm(range(n_shards), desc="target features", unit="shard"):
        path = folder / f"shard-{i:05d}.safetensors"
        if path.exists():
            continue
        chunk = blocks[i * shard_blocks : (i + 1) * shard_blocks]
        per_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for start in range(0, len(chunk), batch_blocks):
            hs = body(chunk[start : start + batch_blocks].to(device), output_hidden_states=True).hidden_states
            for layer in layers:
                per_layer[layer].append(hs[layer].to("cpu", stored))
        tensors = {"tokens": chunk.contiguous()}
        tensors.update({f"layer_{layer}": torch.cat(v).contiguous() for layer, v in per_layer.items()})
        with atomic_path(path) as tmp:
            save_file(tensors, tmp)
    meta = {"blocks": len(blocks), "block_size": int(blocks.shape[1]), "layers": list(layers),
            "shard_blocks": shard_blocks, "hidden_size": int(target.config.hidden_size),
            "dtype": str(stored).removeprefix("torch.")}
    write_json_atomic(folder / "meta.json", meta)
    return FeatureStore(folder)
