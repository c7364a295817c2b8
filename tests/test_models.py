"""Model loading (local folders, hub ids offline, the packaged SmolLM2 alias) and truncated drafts."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import tiny_llama
from pipeline.cli import main
from scylla import ScyllaError, load_model, truncated_draft

TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "numbers 1 2 3 4 5 6 7 8 9"] * 20


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Llama plus a word-level tokenizer trained here, saved as a HuggingFace folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXT, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    model = tiny_llama(vocab_size=tok.get_vocab_size(), seed=3, peak=30.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_load_local_folder(model_folder):
    model, tokenizer = load_model(model_folder)
    assert not model.training and tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert next(model.parameters()).dtype == torch.float32


def test_missing_or_invalid_model(tmp_path):
    with pytest.raises(ScyllaError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ScyllaError, match="cannot load model"):
        load_model("some-org/no-such-model")  # a hub id; tests run with HF_HUB_OFFLINE=1


def test_truncated_draft_shares_weights(target):
    draft = truncated_draft(target, 2)
    assert len(draft.model.layers) == 2 and draft.config.num_hidden_layers == 2
    assert draft.lm_head.weight is target.lm_head.weight
    assert draft.model.layers[1] is target.model.layers[1]
    assert all(p.device.type == "cpu" for p in draft.parameters())  # nothing left on the meta device
    full = truncated_draft(target, len(target.model.layers))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(full(ids).logits, target(ids).logits)
    with pytest.raises(ScyllaError, match="num_layers"):
        truncated_draft(target, 0)


def test_cli_generate_with_local_target_and_draft(model_folder, tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["generate", "--target", str(model_folder), "--drafter", f"draft:{model_folder}", "--prompt",
            "the cat sat", "--prompt", "a dog", "--batch-size", "2", "--max-new-tokens", "8", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MAT" in printed and "acceptance rate 1.000" in printed  # the draft is the target itself
    record = json.loads(out.read_text())
    assert len(record["texts"]) == 2 and record["stats"]["acceptance_rate"] == 1.0
