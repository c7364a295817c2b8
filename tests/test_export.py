"""EAGLE-3's serving format (docs/export.md): export, read back, draft token for token; the documented keys and
tensors are the written ones; heads the format cannot carry are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from conftest import tiny_llama
from pipeline.cli import main
from scylla import ScyllaError, SpeculativeDecoder
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead
from scylla.drafters.eagle3_format import export_eagle3
from scylla.drafters.spec import drafter_from_spec
from scylla.models import tiny_random_folder
from test_greedy_identity import MAX_NEW, make_batch

DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
FEATURES = (3, 1, 2)  # out of order on purpose: the export orders fc's blocks as the engines concatenate features


@pytest.fixture(scope="module")
def deep_target():
    """4 layers, so that three distinct decoder-layer outputs (hidden_states 1..3) exist as features."""
    return tiny_llama(vocab_size=64, layers=4, hidden=32, seed=5, peak=30.0)


def make_head(target, layers=1, layout="eagle3", vocab=40, feature_layers=FEATURES, seed=0) -> EagleHead:
    torch.manual_seed(seed)
    config = EagleConfig.for_target(target, num_layers=layers, feature_layers=list(feature_layers),
                                    draft_vocab_size=vocab, layout=layout)
    head = EagleHead(config, target.get_input_embeddings())
    head.draft_to_target.copy_(torch.randperm(target.config.vocab_size)[:vocab])  # frequency order, not sorted
    with torch.no_grad():
        for name, weight in head.named_parameters():
            if "norm" in name:  # norms start at 1: random ones tell a swapped norm apart
                weight.uniform_(0.5, 1.5)
    return head.eval()


@pytest.fixture(scope="module")
def exported(deep_target, tmp_path_factory):
    """(head, exported folder): the head saved with a card naming its target folder, exported through the CLI."""
    root = tmp_path_factory.mktemp("export")
    deep_target.save_pretrained(root / "target")
    AutoTokenizer.from_pretrained(tiny_random_folder()).save_pretrained(root / "target")  # load_model wants one
    head = make_head(deep_target)
    head.save(root / "head", card={"target": str(root / "target")})
    assert main(["export", str(root / "head"), "--format", "eagle3", "--out", str(root / "eagle3")]) == 0
    return head, root / "eagle3"


def decode(target, drafter, ids, mask):
    """The decoder's output and every draft (tokens, lengths) the drafter proposed."""
    drafts, propose = [], drafter.propose

    def recording(ctx):
        draft = propose(ctx)
        drafts.append((draft.tokens.clone(), draft.lengths.clone()))
        return draft

    drafter.propose = recording
    return SpeculativeDecoder(target, drafter).generate(ids, mask, max_new_tokens=MAX_NEW, pad_token_id=0), drafts


def target_logits(head: EagleHead, ids, features) -> torch.Tensor:
    """The head's logits (B, n, V) over the target vocabulary, -inf outside the draft vocabulary."""
    logits = head(ids, features=features).logits
    full = logits.new_full((*logits.shape[:-1], head.head_config.target_vocab_size), float("-inf"))
    full[..., head.draft_to_target] = logits
    return full


def test_exported_head_drafts_token_for_token(deep_target, exported):
    head, folder = exported
    drafter = drafter_from_spec(f"draft:{folder}", deep_target, num_draft_tokens=3)
    assert isinstance(drafter, EagleDrafter) and drafter.feature_layers == (1, 2, 3)
    ids, features = torch.randint(0, 64, (2, 7)), torch.randn(2, 7, 3 * 32)
    with torch.no_grad():
        assert torch.allclose(target_logits(drafter.head, ids, features[..., [*range(32, 96), *range(0, 32)]]),
                              target_logits(head, ids, features), atol=1e-5)

    ids, mask = make_batch(4, seed=31)
    ref = deep_target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                               pad_token_id=0)
    with torch.no_grad():
        ours, ours_drafts = decode(deep_target, EagleDrafter(head, num_draft_tokens=3), ids, mask)
        theirs, their_drafts = decode(deep_target, drafter, ids, mask)
    assert torch.equal(ours.sequences, ref) and torch.equal(theirs.sequences, ref)
    assert len(ours_drafts) == len(their_drafts) > 10
    for (a, la), (b, lb) in zip(ours_drafts, their_drafts):
        assert torch.equal(la, lb) and torch.equal(a, b)


def engine_forward(folder: Path, embeds: torch.Tensor, features: torch.Tensor):
    """What vLLM and SGLang compute from an exported folder (their llama_eagle3.py, rewritten here in plain torch
    from their source; docs/export.md): embeds (n, W), features (n, 3H) in ascending layer order, positions 0..n-1.
    Returns (logits over the target vocabulary (n, V), -inf outside the draft vocabulary; the pre-norm output)."""
    t, config = load_file(folder / "model.safetensors"), json.loads((folder / "config.json").read_text())
    eps, d = config["rms_norm_eps"], config["head_dim"]
    groups = config["num_attention_heads"] // config["num_key_value_heads"]

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * t[name]

    def rope(x):  # (heads, n, d), neox style
        inv = 1.0 / config["rope_theta"] ** (torch.arange(0, d, 2).float() / d)
        angles = torch.arange(x.shape[1]).float()[:, None] * inv
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * sin

    u = features @ t["fc.weight"].T
    x = torch.cat([rms(embeds, "midlayer.input_layernorm.weight"), rms(u, "midlayer.hidden_norm.weight")], -1)
    q, k, v = (x @ t[f"midlayer.self_attn.{p}_proj.weight"].T for p in "qkv")
    q, k, v = (y.view(len(x), -1, d).transpose(0, 1) for y in (q, k, v))
    k, v = (y.repeat_interleave(groups, dim=0) for y in (k, v))  # grouped-query attention
    attn = torch.nn.functional.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
    residual = attn.transpose(0, 1).reshape(len(x), -1) @ t["midlayer.self_attn.o_proj.weight"].T + u
    h = rms(residual, "midlayer.post_attention_layernorm.weight")
    mlp = torch.nn.functional.silu(h @ t["midlayer.mlp.gate_proj.weight"].T) * (h @ t["midlayer.mlp.up_proj.weight"].T)
    prenorm = mlp @ t["midlayer.mlp.down_proj.weight"].T + residual
    draft = rms(prenorm, "norm.weight") @ t["lm_head.weight"].T
    logits = draft.new_full((len(x), config["vocab_size"]), float("-inf"))
    logits[:, torch.arange(config["draft_vocab_size"]) + t["d2t"]] = draft
    return logits, prenorm


def test_the_engines_forward_on_the_export_is_the_heads(deep_target, exported):
    head, folder = exported
    ids, features = torch.randint(0, 64, (1, 6)), torch.randn(1, 6, 3 * 32)
    with torch.no_grad():
        out = head(ids, features=features)
        logits, prenorm = engine_forward(folder, deep_target.get_input_embeddings()(ids[0]),
                                         features[0][:, [*range(32, 96), *range(0, 32)]])
        assert torch.allclose(prenorm, out.hidden_states[0], atol=1e-5)
        assert torch.allclose(logits, target_logits(head, ids, features)[0], atol=1e-5)


def doc_table(header: str) -> dict[str, str]:
    """The rows of the docs/export.md table under ``header``: first cell's backticked name -> second cell."""
    lines = DOC.read_text().splitlines()
    start = lines.index(header) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[re.fullmatch(r"`([^`]+)`", cells[0]).group(1)] = cells[1]
    return rows


def check_tensors(folder: Path, head: EagleHead, absent: set[str]) -> None:
    c = head.head_config
    sizes = {"W": c.width, "I": c.intermediate_size, "nq": c.num_attention_heads, "nkv": c.num_key_value_heads,
             "d": c.width // c.num_attention_heads, "V": c.target_vocab_size, "Vd": c.draft_vocab_size}
    documented = doc_table("| tensor | shape | from the head |")
    tensors = load_file(folder / "model.safetensors")
    assert set(tensors) == set(documented) - absent
    for name, tensor in tensors.items():
        shape = eval(documented[name].strip("`"), {"__builtins__": {}}, sizes)  # e.g. (nq*d, 2*W)
        assert tuple(tensor.shape) == shape, name


def test_written_keys_and_tensors_are_the_documented_ones(deep_target, exported, tmp_path):
    head, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert set(config) == set(doc_table("| key | value |"))
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["num_hidden_layers"] == 1
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]  # vLLM's reading: hidden_states indices
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]  # SGLang's: one less
    assert (config["vocab_size"], config["draft_vocab_size"], config["target_hidden_size"]) == (64, 40, 32)
    check_tensors(folder, head, absent={"embed_tokens.weight"})
    tensors = load_file(folder / "model.safetensors")
    d2t, t2d = tensors["d2t"], tensors["t2d"]
    assert d2t.dtype == torch.int64 and bool((d2t >= 0).all()) and t2d.dtype == torch.bool
    assert torch.equal(d2t + torch.arange(40), head.draft_to_target.sort().values)
    assert torch.equal(t2d.nonzero().squeeze(1), head.draft_to_target.sort().values)

    full = make_head(deep_target, vocab=64, seed=1)  # the whole vocabulary: no mapping; with the embedding
    export_eagle3(full, tmp_path / "full", target_layers=4, embed_tokens=deep_target.get_input_embeddings().weight)
    check_tensors(tmp_path / "full", full, absent={"d2t", "t2d"})


@pytest.mark.parametrize("layout,layers,message", [("eagle", 1, "layout"), ("eagle3", 2, "one decoder layer")])
def test_heads_the_format_cannot_carry_are_refused(deep_target, tmp_path, capsys, layout, layers, message):
    make_head(deep_target, layers=layers, layout=layout).save(tmp_path / "head")
    assert main(["export", str(tmp_path / "head"), "--format", "eagle3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scylla: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("feature_layers,message",
                         [((1, 2), "3 distinct"), ((1, 2, -1), "engines capture"), ((1, 2, 5), "engines capture")])
def test_features_the_engines_cannot_give_are_refused(deep_target, tmp_path, feature_layers, message):
    with pytest.raises(ScyllaError, match=message):
        export_eagle3(make_head(deep_target, feature_layers=feature_layers), tmp_path / "out", target_layers=4)
    assert not (tmp_path / "out").exists()


def test_ids_only_under_eagle_config_are_read_as_sglang_reads_them(deep_target, exported, tmp_path):
    _, folder = exported
    config = json.loads((folder / "config.json").read_text())
    del config["eagle_aux_hidden_state_layer_ids"]  # left: eagle_config's [0, 1, 2], SGLang's hidden_states[1..3]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    assert drafter_from_spec(f"draft:{tmp_path}", deep_target).feature_layers == (1, 2, 3)


def test_folders_the_head_cannot_read_are_refused(deep_target, exported, tmp_path):
    _, folder = exported
    other = tiny_llama(vocab_size=48, layers=4, hidden=32, seed=6)
    with pytest.raises(ScyllaError, match="another target"):
        drafter_from_spec(f"draft:{folder}", other)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScyllaError, match="no model.safetensors"):  # e.g. pickled weights only
        drafter_from_spec(f"draft:{tmp_path}", deep_target)
    (tmp_path / "config.json").write_text(json.dumps({**config, "norm_before_residual": True}))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(ScyllaError, match="norm_before_residual"):
        drafter_from_spec(f"draft:{tmp_path}", deep_target)
