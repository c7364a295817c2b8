"""Test-time-scaling protocols and tts-bench: the repetition measure, accuracy, drafter hooks, greedy identity of
every method under the protocols, config errors, and a resumable end-to-end run on the tiny random target."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import tiny_llama
from scylla import DecodeOutput, DecodeStats, ScyllaError, SpeculativeDecoder, load_model
from pipeline.cli import main
from scylla.claims import claim, claim_path
from scylla.data.tasks import Problem, Task
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead
from scylla.drafters.spec import drafter_from_spec
from scylla.metrics import RowStats
from scylla.records import append_record, new_record, read_records
from scylla.tts import best_of_n, check_template, final_answer, multi_round, repetition_share
from pipeline.tts_bench import load_bench, run_bench

WORDS = "what is seven plus eight it is fifteen the answer repeat again check previous 7 8 15 yes no".split()
TEMPLATE = "{question} check previous {previous} again"


@pytest.fixture(scope="module")
def lm():
    """A peaked tiny Llama (greedy ties negligible) and a word-level tokenizer with a chat template."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>", "<end>", "<user>", "<assistant>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<end>",
        chat_template="{% for m in messages %}<user> {{ m['content'] }}{% endfor %} <assistant>")
    return tiny_llama(vocab_size=len(tokenizer), seed=5, peak=30.0), tokenizer


def make_head(target, seed=0) -> EagleHead:
    torch.manual_seed(seed)
    config = EagleConfig.for_target(target, num_layers=1, feature_layers=[-1], draft_vocab_size=16)
    head = EagleHead(config, target.get_input_embeddings())
    head.draft_to_target.copy_(torch.randperm(target.config.vocab_size)[:16])
    return head.eval()


class FirstWord(Task):
    """Answer: the first word; correct when it equals the reference."""

    def extract(self, text):
        return text.split()[0] if text.split() else None


def test_repetition_share_hand_cases():
    assert repetition_share([1, 2, 3, 1, 2, 3], n=2) == pytest.approx(2 / 6)  # (1,2) and (2,3) come back
    assert repetition_share([1, 2, 3], n=2, prefix=[1, 2, 3]) == pytest.approx(2 / 3)  # (3,1) straddles: new
    assert repetition_share([5, 6, 7], [[5, 6, 7]], n=2) == pytest.approx(2 / 3)  # from a sibling sample
    assert repetition_share([5, 6, 7], [[5, 6, 7]], n=1) == 1.0
    assert repetition_share([5, 6, 7], [[7, 6, 5]], n=2) == 0.0
    assert repetition_share([9, 9, 9, 9], n=2) == pytest.approx(2 / 4)  # overlapping self-repeats count
    assert repetition_share([4, 5], [[1, 2, 4, 5]], n=3, prefix=[2]) == pytest.approx(1 / 2)
    assert repetition_share([], [[1, 2]], n=2) == 0.0
    with pytest.raises(ScyllaError, match="n-gram"):
        repetition_share([1], n=0)


def test_template_and_final_answer():
    assert check_template(TEMPLATE) == TEMPLATE
    with pytest.raises(ScyllaError, match="previous"):
        check_template("{question} only")
    with pytest.raises(ScyllaError, match="only"):
        check_template("{question} {previous} {other}")
    assert final_answer("<think>hmm 7</think>\n The answer is 8 ") == "The answer is 8"
    assert final_answer(" plain 8 ") == "plain 8"


class FakePool:
    def __init__(self):
        self.added = []

    def add(self, tokens):
        self.added.append(tokens)


class FakeDrafter:
    """What the protocols see of a pool drafter: a pool, the share_rows flag and per-side counts."""

    def __init__(self):
        self.pool, self.share_rows, self.flags, self.counts = FakePool(), False, [], {"suffix": 5, "head": 1}

    def side_counts(self):
        return dict(self.counts)


class FakeDecoder:
    """Returns scripted samples (as words) one row at a time; records prompts and the drafter's share flag."""

    def __init__(self, tokenizer, samples):
        self.tokenizer, self.samples, self.prompts = tokenizer, list(samples), []
        self.target, self.drafter = torch.nn.Linear(1, 1), FakeDrafter()

    def generate(self, ids, mask, **kwargs):
        self.prompts.extend(self.tokenizer.decode(row[m.bool()]) for row, m in zip(ids, mask))
        self.drafter.flags.append(self.drafter.share_rows)
        self.drafter.counts = {"suffix": self.drafter.counts["suffix"] + 3, "head": self.drafter.counts["head"] + 1}
        rows = [self.tokenizer.encode(self.samples.pop(0), add_special_tokens=False) for _ in range(len(ids))]
        stats = DecodeStats(new_tokens=sum(map(len, rows)), target_calls=1, wall_seconds=1.0,
                            rows=[RowStats() for _ in rows])
        return DecodeOutput(ids, rows, stats)


@pytest.mark.parametrize("batched", [True, False])
def test_best_of_n_votes_and_feeds_the_pool(lm, batched):
    _, tokenizer = lm
    decoder = FakeDecoder(tokenizer, ["7 is it", "8 yes", "7 no"])
    problem = Problem("what is seven plus eight", "8")
    r = best_of_n(decoder, tokenizer, problem, FirstWord(), n=3, batched=batched)
    assert r.texts == ["7 is it", "8 yes", "7 no"] and r.answers == ["7", "8", "7"]
    assert r.accuracy == {"majority": 0.0, "best_of": 1.0, "mean": pytest.approx(1 / 3)}
    assert decoder.drafter.pool.added == r.tokens  # every sample reaches the pool, in order
    assert decoder.drafter.flags == ([True] if batched else [False] * 3) and decoder.drafter.share_rows is False
    calls = 1 if batched else 3
    assert r.sides == {"suffix": 3 * calls, "head": calls} and r.stats.new_tokens == 7
    assert r.repetition_self < r.repetition  # the third sample starts like the first: the same 4-gram
    assert best_of_n(FakeDecoder(tokenizer, ["7"] * 2), tokenizer, problem, n=2).accuracy["majority"] is None


def test_multi_round_reasks_with_the_previous_answer(lm):
    _, tokenizer = lm
    decoder = FakeDecoder(tokenizer, ["7 the answer", "8 again"])
    problem = Problem("what is seven plus eight", "8")
    r = multi_round(decoder, tokenizer, problem, FirstWord(), rounds=2, template=TEMPLATE)
    assert r.accuracy == {"round_1": 0.0, "round_2": 1.0}
    assert "what is seven plus eight check previous 7 the answer again" in decoder.prompts[1]
    assert decoder.drafter.pool.added == r.tokens and len(r.tokens) == 2
    with pytest.raises(ScyllaError, match="rounds"):
        multi_round(decoder, tokenizer, problem, rounds=0)


@pytest.mark.parametrize("spec", ["truncated:1", "prompt-lookup", "head", "suffix", "hybrid:truncated:1"])
def test_greedy_outputs_of_every_method_equal_plain(lm, spec):
    target, tokenizer = lm
    drafter = EagleDrafter(make_head(target), num_draft_tokens=3) if spec == "head" else drafter_from_spec(
        spec, target, 3)
    plain, method = SpeculativeDecoder(target), SpeculativeDecoder(target, drafter)
    problem = Problem("what is seven plus eight repeat the answer", "15")
    for protocol, kwargs in [(best_of_n, dict(n=3, batched=True)), (best_of_n, dict(n=2, batched=False)),
                             (multi_round, dict(rounds=2, template=TEMPLATE))]:
        ref = protocol(plain, tokenizer, problem, temperature=0.0, max_new_tokens=12, **kwargs)
        out = protocol(method, tokenizer, problem, temperature=0.0, max_new_tokens=12, **kwargs)
        assert out.tokens == ref.tokens and out.texts == ref.texts
        assert out.stats.target_calls <= ref.stats.target_calls


def write_config(tmp_path, **overrides) -> str:
    config = {
        "name": "t", "target": "tiny-random-llama", "tasks": ["jsonl:" + str(tmp_path / "q.jsonl")],
        "methods": {"plain": "none", "sps": {"spec": "truncated:1", "num_draft_tokens": 2}, "pld": "prompt-lookup"},
        "paradigms": {"best_of_n": {"n": 2, "temperature": 0.6, "batched": [True, False]},
                      "multi_round": {"rounds": 2, "temperatures": [0.0]}},
        "problems": 2, "max_new_tokens": 6,
    }
    config.update(overrides)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"prompt": f"what is {a} plus {b}?", "answer": a + b}) + "\n"
                                              for a, b in [(7, 8), (1, 2), (3, 3)]))
    path = tmp_path / "tts.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"methods": {"x": "eagle"}}, "methods: x: spec: unknown drafter"),
    ({"methods": {"x": "draft:/no/such/head"}}, "draft folder /no/such/head does not exist"),
    ({"methods": {"x": "run:/no/such/run"}}, "has no records.jsonl"),
    ({"methods": {"x": {"spec": "prompt-lookup", "k": 2}}}, "unknown key 'k'"),
    ({"tasks": ["gsm", "mmlu"]}, "unknown task 'mmlu'"),
    ({"paradigms": {"beam": {}}}, "unknown key 'beam'"),
    ({"paradigms": {"best_of_n": {"batched": "yes"}}}, "batched: must be"),
    ({"paradigms": {"multi_round": {"temperatures": [-1]}}}, "temperature must be >= 0"),
    ({"paradigms": {"multi_round": {"template": "{question}"}}}, "must contain {previous}"),
    ({"problems": 0}, "problems: must be an integer >= 1"),
    ({"reduced": {"name": "x"}}, "reduced: unknown key 'name'"),
    ({"methods": {"x": {"spec": "suffix", "tree": "top_k=2,depth=5,total_tokens=3"}}}, "total_tokens=3 < depth=5"),
])
def test_config_errors_are_one_line(tmp_path, capsys, overrides, message):
    path = write_config(tmp_path, **overrides)
    with pytest.raises(ScyllaError, match=message):
        load_bench(path)
    assert main(["tts-bench", path, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scylla: error:") and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_run_directory_names_the_head(tmp_path):
    target, _ = load_model("tiny-random-llama")
    head = tmp_path / "runs" / "heads" / "tokens-64"
    make_head(target).save(head, card={"target": "tiny-random-llama", "train_tokens": 64})
    identity = dict(sweep="s", target="tiny-random-llama", drafter_type="eagle", draft_layers=1, draft_width=64,
                    draft_params=1, draft_params_with_embeddings=2, data="gsm", seed=0)
    for run_id, tokens in [("eagle-a", 32), ("eagle-a", 64), ("eagle-b", 64)]:
        append_record(tmp_path / "runs", new_record("train", run_id=run_id, train_tokens=tokens, **identity,
                                                    checkpoint=str(head)))
    path = write_config(tmp_path, methods={"head": f"run:{tmp_path / 'runs'}@eagle-a"})
    head_method = load_bench(path).methods[1]
    assert (head_method.spec, head_method.source["train_tokens"]) == (f"draft:{head}", 64)
    with pytest.raises(ScyllaError, match="holds runs eagle-a, eagle-b: name one"):
        load_bench(write_config(tmp_path, methods={"head": f"run:{tmp_path / 'runs'}"}))
    with pytest.raises(ScyllaError, match="has no run 'eagle-c'"):
        load_bench(write_config(tmp_path, methods={"head": f"run:{tmp_path / 'runs'}@eagle-c"}))


def test_bench_end_to_end_resumes(tmp_path):
    target, _ = load_model("tiny-random-llama")
    head = tmp_path / "head"
    make_head(target).save(head, card={"target": "tiny-random-llama", "train_tokens": 0})
    methods = {"sps": {"spec": "truncated:1", "num_draft_tokens": 2}, "pld": "prompt-lookup", "head": f"draft:{head}",
               "suffix": "suffix", "hybrid": f"hybrid:draft:{head}",
               "head-tree": {"spec": f"draft:{head}", "tree": "top_k=2,depth=2,total_tokens=4"}}
    path = write_config(tmp_path, methods=methods, reduced={"problems": 1})
    run = tmp_path / "run"
    task = "jsonl:" + str(tmp_path / "q.jsonl")
    with claim(claim_path(run, "tts", task, "multi-round-2", 0.0, 1)):  # as another tts-bench process would hold it
        assert main(["tts-bench", path, "--out", str(run)]) == 0
    assert len(read_records(run, kind="tts")) == 2 * 7  # that setting was left to its holder
    assert main(["tts-bench", path, "--out", str(run)]) == 0  # released: the re-run completes it
    records = read_records(run, kind="tts")
    assert len(records) == 3 * 7  # (best-of-2 batched, best-of-2 sequential, multi-round-2 T=0) x 7 methods
    assert {(r["paradigm"], r["batch_size"]) for r in records} == {("best-of-2", 2), ("best-of-2", 1),
                                                                    ("multi-round-2", 1)}
    plain = [r for r in records if r["method"] == "plain"]
    assert all(r["mean_accepted_length"] == 1.0 for r in plain)  # (its speed-up is plain over plain: 1 by construction)
    greedy = [r for r in records if r["temperature"] == 0]
    assert len(greedy) == 7 and all(r["matches_plain"] is True for r in greedy)  # trees included
    assert all(r["n_problems"] == 1 and 0 <= r["repetition_self"] <= r["repetition"] <= 1 for r in records)
    assert {r["drafter_type"] for r in records} == {"none", "truncated", "prompt-lookup", "eagle", "suffix", "hybrid"}
    assert all("accuracy_round_2" in r for r in greedy)
    hybrid = [r for r in records if r["method"] == "hybrid"]
    assert all(set(r["drafted_by_side"]) == {"suffix", "fallback"} for r in hybrid)
    assert all(r["drafted_share"] is None for r in records if r["method"] != "hybrid")
    table = (run / "tts_table.md").read_text()
    assert table.count("| multi-round-2 |") == 7 and "one after another at batch 1" in table

    assert run_bench(load_bench(path), run)[0] == 0  # everything recorded: nothing decoded again
    methods["pld"] = {"spec": "prompt-lookup", "num_draft_tokens": 3}
    with pytest.raises(ScyllaError, match="method 'pld' was"):
        run_bench(load_bench(write_config(tmp_path, methods=methods, reduced={"problems": 1})), run)
    with pytest.raises(ScyllaError, match="made with problems=1"):
        run_bench(load_bench(path, full=True), run)


def test_slurm_array_of_a_benchmark_runs_the_same_command(tmp_path, capsys):
    """--slurm-array N writes OUT/tts-bench.sbatch: N tasks of the same command (claims share the settings); its
    #SBATCH lines come first; it runs nothing and refuses to run outside Slurm."""
    path, out = write_config(tmp_path), tmp_path / "run"
    assert main(["tts-bench", path, "--out", str(out), "--slurm-array", "2", "--slurm", "partition=gpu"]) == 0
    script = out / "tts-bench.sbatch"
    text = script.read_text()
    assert f"sbatch {script}" in capsys.readouterr().out and not (out / "records.jsonl").exists()
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert {"#SBATCH --array=0-1", "#SBATCH --partition=gpu", "#SBATCH --ntasks=1"} <= set(lines[:first_command])
    assert lines[-1].endswith(f"-m pipeline.cli tts-bench {path} --out {out}")  # no --slurm options in it
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    outside = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert outside.returncode == 2 and outside.stderr.startswith("tts-bench.sbatch: submit it with sbatch")
    assert main(["tts-bench", path, "--out", str(out), "--slurm-array", "2", "--slurm", "gpu"]) == 2
    assert "--slurm 'gpu': give KEY=VALUE" in capsys.readouterr().err
