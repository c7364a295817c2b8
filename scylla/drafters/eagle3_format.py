"""EAGLE-3's checkpoint format, the one vLLM, SGLang and the speculators library load, both ways (docs/export.md).

A folder holds ``config.json`` (a Llama config with ``architectures: ["LlamaForCausalLMEagle3"]``) and
``model.safetensors`` (``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d``, optionally
``embed_tokens``). It carries exactly what an EagleHead of layout ``eagle3`` with one decoder layer computes:
the engines' first layer reads [input_layernorm(embedding); hidden_norm(u)] with u = fc(features) as its residual,
the final norm feeds only the LM head, and the pre-norm output is the next step's feature, as in Eagle3Layer.

Feature layers: this toolkit names them by index i into the target's HF ``hidden_states`` (0 = embeddings, i =
output of decoder layer i-1; the last entry is normed). vLLM reads the top-level ``eagle_aux_hidden_state_layer_ids``
as those same indices; SGLang reads only ``eagle_config.eagle_aux_hidden_state_layer_ids`` and adds one, so there id
j means hidden_states[j + 1]. An export writes both lists, each in its reader's convention.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scylla.atomic import atomic_folder
from scylla.drafters.eagle import EagleConfig, EagleHead
from scylla.errors import InputError


ARCHITECTURE = "LlamaForCausalLMEagle3"
ARCHITECTURES = (ARCHITECTURE, "Eagle3LlamaForCausalLM")  # vLLM's registry maps both to its Llama EAGLE-3 model
NUM_FEATURES = 3  # the engines' fc reads 3 target layers unless a config says otherwise (older versions: always)
MIDLAYER = "midlayer."
_OURS = "decoder.layers.0."
# Settings the engines honour that an EagleHead cannot compute: (key, the value that EagleHead matches).
_FIXED = (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False), ("tie_word_embeddings", False),
          ("norm_before_residual", False), ("norm_before_fc", False), ("fc_norm", False), ("use_aux_norm", False),
          ("norm_output", False))


def exportable(config: EagleConfig) -> None:
    """Refuse, with one line, a head the format cannot carry: another layout, or more than one decoder layer."""
    if config.layout != "eagle3":
        raise InputError(f"only heads of EAGLE-3's layout (layout: eagle3) have a serving format; this head's layout "
                         f"is {config.layout!r}: train one with layout: eagle3, or serve this one with scylla's engine")
    if config.num_layers != 1:
        raise InputError(f"the EAGLE-3 format carries one decoder layer and this head has {config.num_layers} (vLLM "
                         "and SGLang build the layers after the first differently): serve it with scylla's engine")


def _feature_indices(feature_layers: list[int], target_layers: int) -> list[int]:
    """The head's feature layers as hidden_states indices (negative ones count from the end of the target's L + 1),
    checked to be three the engines capture."""
    indices = [i + target_layers + 1 if i < 0 else i for i in feature_layers]
    if len(indices) != NUM_FEATURES or len(set(indices)) != NUM_FEATURES:
        raise InputError(f"the EAGLE-3 format fuses {NUM_FEATURES} distinct target layers; this head reads "
                         f"{feature_layers}: a head needs three distinct ones, e.g. [2, L/2, L-3]")
    bad = [i for i in indices if not 1 <= i < target_layers]
    if bad:
        raise InputError(f"feature layer {bad[0]} is not one the engines capture: they read decoder-layer outputs "
                         f"before the final norm, hidden_states[1..{target_layers - 1}] of this "
                         f"{target_layers}-layer target")
    return indices


EXPORT = "EAGLE-3 export"  # the kind of output (scylla.atomic) an export folder is: only an export replaces it


def export_eagle3(head: EagleHead, out: str | os.PathLike, target_layers: int,
                  embed_tokens: torch.Tensor | None = None, force: bool = False) -> None:
    """Write ``head`` (layout eagle3, one layer) as an EAGLE-3 folder, atomically. target_layers: the target's
    num_hidden_layers (to check and number the feature layers); embed_tokens (V, H): the target's input embedding,
    written as ``embed_tokens.weight`` if given (the engines otherwise share the target's). An existing ``out``
    is replaced only if it is an earlier export or empty, or with ``force`` (scylla.atomic.check_replaceable)."""
    c = head.head_config
    exportable(c)
    indices = _feature_indices(c.feature_layers, target_layers)
    layers = sorted(indices)  # the order in which the engines concatenate the features
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}

    # fc: column blocks in ascending layer order; lm_head: rows in ascending target-id order (d2t offsets >= 0).
    blocks = state["fuse.weight"].split(c.target_hidden_size, dim=1)
    order = sorted(range(NUM_FEATURES), key=indices.__getitem__)
    ids, rows = state["draft_to_target"].sort()
    tensors = {MIDLAYER + k[len(_OURS):]: v for k, v in state.items() if k.startswith(_OURS)}
    tensors.update({"fc.weight": torch.cat([blocks[k] for k in order], dim=1), "norm.weight": state["norm.weight"],
                    "lm_head.weight": state["lm_head.weight"][rows].contiguous()})
    if c.draft_vocab_size != c.target_vocab_size:  # a full vocabulary is in target order already: no mapping
        t2d = torch.zeros(c.target_vocab_size, dtype=torch.bool)
        t2d[ids] = True
        tensors.update({"d2t": ids - torch.arange(c.draft_vocab_size), "t2d": t2d})
    if embed_tokens is not None:
        tensors["embed_tokens.weight"] = embed_tokens.detach().cpu().contiguous()

    config = {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": c.width,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": 1,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.width // c.num_attention_heads,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": c.target_vocab_size,
        "draft_vocab_size": c.draft_vocab_size,
        "target_hidden_size": c.target_hidden_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "norm_before_residual": False,
        "torch_dtype": str(state["lm_head.weight"].dtype).removeprefix("torch."),
        "eagle_aux_hidden_state_layer_ids": layers,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in layers], "use_aux_hidden_state": True},
    }
    with atomic_folder(out, kind=EXPORT, force=force) as tmp:
        save_file(tensors, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2))


def _config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def is_eagle3_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local folder in EAGLE-3's format (by its config's architectures)."""
    config = _config(Path(path))
    return config is not None and any(a in ARCHITECTURES for a in config.get("architectures") or ())


def eagle3_hub_folder(name: str) -> Path | None:
    """A hub id whose config.json names EAGLE-3's architecture -> its downloaded snapshot; else None (not a hub id,
    no hub, or another kind of model: the caller loads it as a draft LM and reports errors there)."""
    try:
        config = _config(Path(hf_hub_download(name, "config.json")).parent)
        if config is None or not any(a in ARCHITECTURES for a in config.get("architectures") or ()):
            return None
        return Path(snapshot_download(name, allow_patterns=["config.json", "*.safetensors"]))
    except (OSError, ValueError):  # the hub's errors (offline, not found, not a repo id) are OSError or ValueError
        return None


def _feature_layers(config: dict, target_layers: int) -> list[int]:
    """hidden_states indices of the features, from the config in the reading of the engine that reads each list
    (docs/export.md): the top-level list as vLLM reads it, else eagle_config's as SGLang reads it, else the
    engines' shared default; checked as an export checks them (three distinct layers the engines capture)."""
    key = "eagle_aux_hidden_state_layer_ids"
    ids, nested = config.get(key), (config.get("eagle_config") or {}).get(key)
    for value in (ids, nested):
        if value is not None and not (isinstance(value, list) and all(type(i) is int for i in value)):
            raise InputError(f"{key} must be a list of layer numbers, e.g. [2, 15, 27], got {value!r}")
    if ids:
        layers = list(ids)
    elif nested:
        layers = [j + 1 for j in nested]
    else:
        layers = [2, target_layers // 2, target_layers - 3]
    return sorted(_feature_indices(layers, target_layers))


def load_eagle3(folder: str | os.PathLike, target: nn.Module) -> EagleHead:
    """An EAGLE-3 folder as an EagleHead for ``target`` (a HF causal LM); device and dtype follow the target."""
    folder = Path(folder)
    config = _config(folder)
    if config is None:
        raise InputError(f"{folder} has no readable config.json")
    absent = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size") if k not in config]
    if absent:
        raise InputError(f"{folder}/config.json has no {absent[0]}")
    hidden, vocab = int(target.config.hidden_size), int(target.get_output_embeddings().weight.shape[0])
    width = int(config["hidden_size"])
    if int(config.get("target_hidden_size") or width) != hidden or int(config["vocab_size"]) != vocab:
        raise InputError(f"EAGLE-3 head {folder} was made for another target (hidden size "
                         f"{config.get('target_hidden_size') or width}, vocabulary {config.get('vocab_size')}; "
                         f"this target: {hidden}, {vocab})")
    if width != hidden:
        raise InputError(f"EAGLE-3 head {folder} is {width} wide; heads here are as wide as the target ({hidden})")
    if int(config.get("num_hidden_layers", 1)) != 1:
        raise InputError(f"EAGLE-3 head {folder} has {config['num_hidden_layers']} layers; only one-layer EAGLE-3 "
                         "folders are read (the engines name and build further layers differently)")
    heads = int(config["num_attention_heads"])
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    unsupported = [f"{k}={config[k]}" for k, ok in _FIXED if (config.get(k) or ok) != ok]
    if not (config.get("eagle_config") or {}).get("use_aux_hidden_state", True):
        unsupported.append("use_aux_hidden_state=false")
    if config.get("head_dim", width // heads) != width // heads:
        unsupported.append(f"head_dim={config['head_dim']}")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        unsupported.append(f"rope scaling {rope.get('rope_type', rope.get('type'))}")
    if unsupported:
        raise InputError(f"EAGLE-3 head {folder} uses {unsupported[0]}, which scylla's EAGLE-3 layer does not compute")

    try:
        feature_layers = _feature_layers(config, int(target.config.num_hidden_layers))
    except InputError as err:
        raise InputError(f"EAGLE-3 head {folder}: {err}") from None
    draft_vocab = int(config.get("draft_vocab_size") or vocab)
    head_config = EagleConfig(
        target_hidden_size=hidden, target_vocab_size=vocab, num_layers=1, width=width,
        intermediate_size=int(config["intermediate_size"]), num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads", heads)),
        feature_layers=feature_layers, draft_vocab_size=draft_vocab,
        rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(config.get("max_position_embeddings", 8192)), layout="eagle3",
    ).resolved()

    if not (folder / "model.safetensors").exists():
        raise InputError(f"{folder} has no model.safetensors (pickled weights such as pytorch_model.bin are never "
                         "loaded here: convert them to safetensors first)")
    try:
        weights = load_file(folder / "model.safetensors")
    except (OSError, SafetensorError) as err:
        raise InputError(f"cannot read {folder}/model.safetensors: {err}") from None
    state = {}
    for name, tensor in weights.items():
        if name == "t2d":  # the inverse of d2t, which draft_to_target holds
            continue
        for prefix in (MIDLAYER, "layers.0."):  # speculators-converted folders say layers.0.
            if name.startswith(prefix):
                name = _OURS + name[len(prefix):]
        state["fuse.weight" if name == "fc.weight" else name] = tensor
    d2t = state.pop("d2t", None)
    if d2t is None and draft_vocab != vocab:
        raise InputError(f"{folder}/model.safetensors has no d2t, which a {draft_vocab}-token draft vocabulary needs")
    if d2t is not None and tuple(d2t.shape) != (draft_vocab,):
        raise InputError(f"{folder}/model.safetensors: d2t is {tuple(d2t.shape)}, draft_vocab_size {draft_vocab}")
    ids = torch.arange(draft_vocab) + (0 if d2t is None else d2t.long())
    if int(ids.min()) < 0 or int(ids.max()) >= vocab or len(ids.unique()) != draft_vocab:
        raise InputError(f"{folder}/model.safetensors: d2t does not map the draft vocabulary onto distinct target ids")
    state["draft_to_target"] = ids
    own = state.pop("embed_tokens.weight", None)  # the target's own, or one trained with the head
    shared = target.get_input_embeddings()
    if own is not None and own.shape != shared.weight.shape:
        raise InputError(f"{folder}/model.safetensors: embed_tokens is {tuple(own.shape)}, the target's "
                         f"{tuple(shared.weight.shape)}")
    own = None if own is None else own.to(shared.weight)
    embed = shared if own is None or torch.equal(own, shared.weight) else nn.Embedding.from_pretrained(own)

    head = EagleHead(head_config, embed)
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise InputError(f"{folder}/model.safetensors does not match its config.json: "
                         f"{str(err).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith(("embed_tokens.", "decoder.embed_tokens."))]
    if missing or unexpected:
        raise InputError(f"{folder}/model.safetensors does not match EAGLE-3's layout: "
                         f"{'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]}")
    param = next(target.parameters())
    return head.to(device=param.device, dtype=param.dtype).eval()
