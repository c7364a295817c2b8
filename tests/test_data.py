"""Offline corpora: sources load deterministically, held-out splits are stable, packing and draft vocabularies."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from train.data import (
    draft_vocabulary,
    heldout_prompts,
    load_corpus,
    pack_blocks,
    split_heldout,
    token_frequencies,
    tokenize_examples,
)
from scylla.data.tasks import ANSWER_FORMAT
from scylla.errors import ScyllaError

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}<end>{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer trained on a few lines, with <end> as eos and a tiny chat template."""
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<end>", "<user>", "<assistant>"])
    backend.train_from_iterator(["what is one plus two", "it is three", "a cat sat on the mat"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<end>", chat_template=CHAT_TEMPLATE
    )


def corpus(pairs: list[tuple[str, str]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})


def test_gsm_is_deterministic_worked_solutions():
    first = load_corpus("gsm", n=20, seed=0)
    assert first.column_names == ["prompt", "response"] and len(first) == 20
    assert first.to_dict() == load_corpus("gsm", n=20, seed=0).to_dict()
    assert first["prompt"] != load_corpus("gsm", n=20, seed=1)["prompt"]
    for response in first["response"]:
        steps, final = response.rsplit("\n", 1)
        assert "=" in steps and final.startswith("#### ") and len(final) > 5


@pytest.mark.parametrize("source, dataset, task", [("gsm", "gsm_symbolic", "gsm"),
                                                   ("rg:chain_sum", "chain_sum", "rg:chain_sum")])
def test_training_prompts_never_come_from_an_evaluation_set(source, dataset, task):
    """No training prompt is an evaluation question (content) of any of the three evaluation seeds (the fit,
    select and confirm prompt sets), and no gsm template serves both."""
    from scylla.data.prompt_sets import PROMPT_SETS, check_disjoint, problem_set
    from scylla.data.tasks import EVAL_POOL, EVAL_SEEDS, HELD_OUT_SEED, SET_TEMPLATES, get_task, rg_items

    training = load_corpus(source, 600, seed=0)["prompt"]
    pools = [rg_items(dataset, EVAL_POOL, HELD_OUT_SEED + k, evaluation=True) for k in range(EVAL_SEEDS)]
    pool = [q for p in pools for q in p]  # what any evaluation draws from
    assert [p.prompt for p in get_task(task).problems(200)] == [q["question"] + ANSWER_FORMAT for q in pool[:200]]
    assert len(training) == 600 and not set(training) & {q["question"] for q in pool}
    check_disjoint({"train": training, **{name: [p.prompt for p in problem_set(task, name, 40)]
                                          for name in PROMPT_SETS}})
    if dataset == "gsm_symbolic":
        train_templates = {item["template"] for item in rg_items(dataset, 600, 0, evaluation=False)}
        eval_templates = {item["template"] for item in pool}
        held_out = {t for group in SET_TEMPLATES["gsm_symbolic"] for t in group}  # 8 for each prompt set
        assert len(held_out) == 24 and eval_templates == held_out
        assert len(train_templates) > 50 and not train_templates & eval_templates
        assert [item["question"] for item in rg_items(dataset, 600, 0, evaluation=False)] == training


def test_reasoning_gym_task():
    ds = load_corpus("rg:chain_sum", n=5, seed=3)
    assert len(ds) == 5 and all(r.strip() for r in ds["response"])
    assert ds.to_dict() == load_corpus("rg:chain_sum", n=5, seed=3).to_dict()


def test_humaneval():
    ds = load_corpus("humaneval")
    assert len(ds) == 164
    assert "def " in ds[0]["prompt"] and '"""' in ds[0]["prompt"] and "return" in ds[0]["response"]
    sample = load_corpus("humaneval", n=10, seed=1)
    assert len(sample) == 10 and sample.to_dict() == load_corpus("humaneval", n=10, seed=1).to_dict()


def test_pystdlib_is_standard_library_code():
    import ast

    ds = load_corpus("pystdlib", n=20, seed=0)
    assert len(ds) == 20 and ds.to_dict() == load_corpus("pystdlib", n=20, seed=0).to_dict()
    for prompt, response in zip(ds["prompt"], ds["response"]):
        code = prompt.split("```python\n", 1)[1].rsplit("\n```", 1)[0]
        assert code.lstrip().startswith("def ") and response.strip()
        ast.parse(code + "\n" + response)  # signature + docstring + body is a whole function


def test_mixed_sources_share_n():
    ds = load_corpus("gsm+humaneval", n=11)
    assert len(ds) == 11
    assert sum("def " in p for p in ds["prompt"]) == 5


def test_user_files(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}", "id": i}) + "\n" for i in range(4)))
    ds = load_corpus(f"jsonl:{pairs}")
    assert ds.to_dict() == {"prompt": ["q0", "q1", "q2", "q3"], "response": ["a0", "a1", "a2", "a3"]}
    assert len(load_corpus(f"jsonl:{pairs}", n=2)) == 2

    texts = tmp_path / "texts.parquet"
    datasets.Dataset.from_dict({"text": ["one doc", "", "another doc"]}).to_parquet(str(texts))
    assert load_corpus(f"parquet:{texts}").to_dict() == {"prompt": ["", ""], "response": ["one doc", "another doc"]}

    plain = tmp_path / "book.txt"
    plain.write_text("First paragraph,\nstill first.\n\n\nSecond one.\n   \nThird.\n")
    ds = load_corpus(f"text:{plain}")
    assert ds["response"] == ["First paragraph,\nstill first.", "Second one.", "Third."] and ds["prompt"] == [""] * 3


@pytest.mark.parametrize(
    "source, message",
    [
        ("wikipedia", "unknown corpus source"),
        ("gsm+", "empty corpus source"),
        ("rg:no_such_task", "unknown reasoning-gym task"),
        ("jsonl:/nonexistent/corpus.jsonl", "does not exist"),
        ("text:/nonexistent/book.txt", "does not exist"),
        ("hf:openai/gsm8k:train", "could not be loaded"),  # conftest sets HF_DATASETS_OFFLINE=1
    ],
)
def test_bad_sources_fail_with_one_line(source, message):
    with pytest.raises(ScyllaError, match=message) as caught:
        load_corpus(source, n=4)
    assert "\n" not in str(caught.value)


def test_file_without_usable_columns(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ScyllaError, match="columns"):
        load_corpus(f"jsonl:{path}")


def test_heldout_split_disjoint_and_stable():
    small, large = load_corpus("gsm", n=200), load_corpus("gsm", n=600)
    train_s, held_s = split_heldout(small, 0.2, seed=0)
    train_l, held_l = split_heldout(large, 0.2, seed=0)
    key = lambda ds: {(p, r) for p, r in zip(ds["prompt"], ds["response"])}  # noqa: E731
    assert not key(train_l) & key(held_l) and len(train_l) + len(held_l) == len(large)
    assert 60 < len(held_l) < 180
    assert key(held_s) <= key(held_l) and key(train_s) <= key(train_l)  # the larger corpus keeps every decision
    assert key(held_s) != key(split_heldout(small, 0.2, seed=1)[1])
    with pytest.raises(ScyllaError, match="heldout_fraction"):
        split_heldout(small, 1.0)


def test_tokenize_examples(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<end>")
    ds = corpus([("what is one plus two", "it is three"), ("", "a cat sat")])
    chat = tokenize_examples(ds, tokenizer)
    words = "<user> what is one plus two <end> <assistant> it is three <end>".split()
    assert tokenizer.convert_ids_to_tokens(chat[0]) == words
    assert chat[1] == tokenizer("a cat sat")["input_ids"] + [end]  # plain text: no conversation around it
    plain = tokenize_examples(ds, tokenizer, chat=False)
    assert plain[0] == tokenizer("what is one plus two\nit is three")["input_ids"] + [end]


def test_pack_blocks():
    examples = [list(range(100 * i, 100 * i + 7)) for i in range(10)]  # 70 tokens
    blocks = pack_blocks(examples, block_size=16, seed=0)
    assert blocks.shape == (4, 16) and blocks.dtype == torch.long
    assert torch.equal(blocks, pack_blocks(examples, 16, seed=0))
    assert not torch.equal(blocks, pack_blocks(examples, 16, seed=1))
    firsts = blocks.flatten()[::7].tolist()  # whole examples, back to back, each used once
    assert sorted(firsts) == sorted(set(firsts)) and all(t % 100 == 0 for t in firsts)
    assert pack_blocks(examples, 16, seed=0, max_tokens=40).shape == (2, 16)
    assert torch.equal(pack_blocks(examples, 16, seed=0, max_tokens=40), blocks[:2])
    with pytest.raises(ScyllaError, match="one block"):
        pack_blocks(examples, 16, max_tokens=10)


def test_draft_vocabulary_most_frequent():
    blocks = torch.tensor([[5, 5, 5, 2, 2, 9], [9, 9, 9, 7, 2, 1]])  # 9: 4, 5: 3, 2: 3, 7: 1, 1: 1
    assert token_frequencies(blocks, 10).tolist() == [0, 1, 3, 0, 0, 3, 0, 1, 0, 4]
    assert draft_vocabulary(blocks, 10, 3).tolist() == [2, 5, 9]
    assert draft_vocabulary(blocks, 10, 4).tolist() == [1, 2, 5, 9]  # 1 and 7 tie: the smaller id wins
    assert draft_vocabulary(blocks, 10, 7).tolist() == [0, 1, 2, 3, 5, 7, 9]  # unseen ids fill in id order
    with pytest.raises(ScyllaError):
        draft_vocabulary(blocks, 10, 11)
    with pytest.raises(ScyllaError):
        token_frequencies(blocks, 8)


def test_heldout_prompts(tokenizer):
    ds = corpus([("", "text only"), ("what is one", "one"), ("a cat", "sat"), ("the mat", "mat")])
    assert heldout_prompts(ds, tokenizer, 2) == ["what is one", "a cat"]
    with pytest.raises(ScyllaError, match="usable prompts"):
        heldout_prompts(ds, tokenizer, 4)


def test_onpolicy_responses_are_the_targets_own_and_cached(tmp_path, monkeypatch):
    import datasets

    from scylla import SpeculativeDecoder, load_model
    from train.data import regenerate_responses

    target, tokenizer = load_model("tiny-random-llama")
    ds = datasets.Dataset.from_dict({"prompt": ["What is 2 + 2?", "Name a colour.", "What is 2 + 2?"],
                                     "response": ["4", "red", "4"]})
    cache = tmp_path / "onpolicy.jsonl"
    out = regenerate_responses(ds, target, tokenizer, cache, max_new_tokens=6, batch_size=2)
    assert out["prompt"] == ds["prompt"] and out["response"][0] == out["response"][2]
    assert len(cache.read_text().splitlines()) == 2  # one line per distinct prompt
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    greedy = target.generate(input_ids=ids, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    assert out["response"][1] == tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    new = greedy[0, ids.shape[1]:].tolist()
    assert out["truncated"][1] == (len(new) == 6 and tokenizer.eos_token_id not in new)  # cut off at the limit

    def no_generation(*args, **kwargs):
        raise AssertionError("cached responses must not be regenerated")

    monkeypatch.setattr(SpeculativeDecoder, "generate", no_generation)
    again = regenerate_responses(ds, target, tokenizer, cache, max_new_tokens=6, batch_size=2)
    assert again["response"] == out["response"]
