"""The run-record store: round trip, validation, deduplication, corrupt lines, concurrent appends, filtering."""

from __future__ import annotations

import json
import multiprocessing
import re
from datetime import datetime

import pytest

from scylla import records
from scylla.errors import ScyllaError
from scylla.records import SCHEMA_VERSION, append_record, new_record, read_records, record_key, validate_record


def train_record(kind: str = "train", **over) -> dict:
    fields = dict(
        run_id="eagle-l2-w512",
        sweep="s1",
        target="smollm2-135m",
        drafter_type="eagle",
        draft_layers=2,
        draft_width=512,
        draft_params=6_000_000,
        draft_params_with_embeddings=30_000_000,
        train_tokens=1_000_000,
        data="ultrachat",
        seed=0,
        loss=2.5,
    )
    fields.update(over)
    return new_record(kind, **fields)


def eval_record(**over) -> dict:
    fields = dict(task="gsm", temperature=0.0, batch_size=1, method="chain", mean_accepted_length=2.4)
    fields.update(over)
    return train_record("eval", **fields)


def test_new_record_fills_in_the_bookkeeping():
    record = train_record()
    assert record["schema_version"] == SCHEMA_VERSION and record["kind"] == "train"
    assert datetime.fromisoformat(record["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", record["git_commit"])
    assert new_record("eval", git_commit="abc", time="2025-01-01T00:00:00+00:00")["git_commit"] == "abc"


def test_git_commit_unknown_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    records._git_commit.cache_clear()
    monkeypatch.setattr(records.subprocess, "run", no_git)
    try:
        assert records._git_commit() == "unknown"
    finally:
        records._git_commit.cache_clear()


def test_round_trip(tmp_path):
    train = train_record()
    evaluation = eval_record(per_position_acceptance=[0.8, 0.5], extra={"a": 1, "b": None}, greedy=True)
    assert append_record(tmp_path / "run", train) is True
    assert append_record(tmp_path / "run", evaluation) is True
    assert read_records(tmp_path / "run") == [train, evaluation]
    assert read_records(tmp_path / "run" / "records.jsonl", kind="eval") == [evaluation]
    line = (tmp_path / "run" / "records.jsonl").read_text().splitlines()[0]
    assert line == json.dumps(train, sort_keys=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": "0"}, "'seed' must be an int, got '0' .str."),
        ({"draft_layers": True}, "'draft_layers' must be an int >= 0, got True"),
        ({"draft_layers": -1}, "'draft_layers' must be an int >= 0"),
        ({"train_tokens": 1e6}, "'train_tokens' must be an int >= 0, got 1000000.0 .float."),
        ({"target": 3}, "'target' must be a str"),
        ({"run_id": ""}, "'run_id' is empty"),
        ({"kind": "bench"}, "'kind' must be one of train, eval, tts"),
        ({"schema_version": SCHEMA_VERSION + 1}, "upgrade scylla"),
        ({"time": "2025-01-01T00:00:00"}, "'time' must be an ISO 8601 UTC time"),
        ({"loss": float("nan")}, "'loss' is nan"),
        ({"loss": float("inf")}, "'loss' is inf"),
        ({"curve": [1.0, float("nan")]}, r"'curve\[1\]' is nan"),
        ({"curve": [[1.0]]}, r"'curve\[0\]' is \[1.0\] .list.; records are flat"),
        ({"extra": {"a": {"b": 1}}}, "'extra.a' is"),
        ({"pair": (1, 2)}, "use a list"),
        ({"obj": object()}, "'obj' is <object"),
    ],
)
def test_validation_errors(change, message):
    record = train_record(**change)
    with pytest.raises(ScyllaError, match=message) as err:
        validate_record(record)
    assert "\n" not in str(err.value)


def test_missing_fields_are_named():
    record = train_record()
    del record["seed"], record["data"]
    with pytest.raises(ScyllaError, match="missing required field.s. data, seed"):
        validate_record(record)


def test_bad_record_is_not_written(tmp_path):
    with pytest.raises(ScyllaError, match="draft_width"):
        append_record(tmp_path, train_record(draft_width=False))
    assert not (tmp_path / "records.jsonl").exists()


def test_duplicates_are_refused(tmp_path):
    assert append_record(tmp_path, train_record())
    assert not append_record(tmp_path, train_record(loss=1.0))  # same run and tokens: same key
    assert append_record(tmp_path, train_record(train_tokens=2_000_000))
    assert append_record(tmp_path, eval_record())
    assert not append_record(tmp_path, eval_record(temperature=0))  # 0 == 0.0
    assert append_record(tmp_path, eval_record(temperature=0.7))
    assert append_record(tmp_path, eval_record(method=None))
    assert not append_record(tmp_path, {k: v for k, v in eval_record().items() if k != "method"})
    assert len(read_records(tmp_path)) == 5
    # a record without a dtype was measured in float32 (the CPU default before scylla.dtypes): the same measurement
    assert record_key(eval_record()) == ("eval", "eagle-l2-w512", 1_000_000, "gsm", None, 0.0, 1, "chain", None,
                                         None, "float32")
    assert not append_record(tmp_path, eval_record(dtype="float32"))
    assert append_record(tmp_path, eval_record(dtype="bfloat16"))  # a bf16 eval is not a done fp32 one
    # The same checkpoint on two prompt sets keeps both records.
    assert append_record(tmp_path, eval_record(prompt_set="select"))
    assert record_key(train_record()) == ("train", "eagle-l2-w512", 1_000_000)


def write_lines(tmp_path, lines: list[str], end: str = "\n") -> None:
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + end)


def test_corrupt_lines_are_reported_with_their_line_number(tmp_path):
    good = [json.dumps(train_record(train_tokens=t)) for t in range(3)]
    write_lines(tmp_path, [good[0], good[1], '{"kind": "train", ', good[2]])
    with pytest.raises(ScyllaError, match=r"records.jsonl:3: not valid JSON"):
        read_records(tmp_path)
    with pytest.raises(ScyllaError, match=r"records.jsonl:3: not valid JSON"):
        append_record(tmp_path, train_record(train_tokens=9))  # never appends to a corrupt file
    write_lines(tmp_path, [good[0], json.dumps(train_record(draft_layers=-2)), good[1]])
    with pytest.raises(ScyllaError, match=r"records.jsonl:2: record field 'draft_layers'"):
        read_records(tmp_path)
    write_lines(tmp_path, [good[0], '{"schema_version": 99}'])
    with pytest.raises(ScyllaError, match=r"records.jsonl:2: .*upgrade scylla"):
        read_records(tmp_path)
    write_lines(tmp_path, [good[0], good[0]])
    with pytest.raises(ScyllaError, match=r"records.jsonl:2: same key as line 1"):
        read_records(tmp_path)
    write_lines(tmp_path, [good[0], "", good[1]])
    with pytest.raises(ScyllaError, match=r"records.jsonl:2: empty line"):
        read_records(tmp_path)


def test_truncated_last_line_is_reported(tmp_path):
    good = json.dumps(train_record())
    write_lines(tmp_path, [good, good[:-1].replace("eagle-l2", "other")], end="")
    with pytest.raises(ScyllaError, match=r"records.jsonl:2: last line has no newline"):
        read_records(tmp_path)
    write_lines(tmp_path, [good, json.dumps(train_record(train_tokens=5))], end="")  # valid JSON, still cut off
    with pytest.raises(ScyllaError, match=r"records.jsonl:2: last line has no newline"):
        read_records(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ScyllaError, match=r"no records yet: .*records.jsonl"):
        read_records(tmp_path / "nowhere")
    (tmp_path / "records.jsonl").write_text("")
    assert read_records(tmp_path) == []


def _append_many(run_dir: str, worker: int, start) -> None:
    start.wait()
    for i in range(50):
        assert append_record(run_dir, train_record(run_id=f"w{worker}", train_tokens=i))
        append_record(run_dir, train_record(run_id="shared", train_tokens=i % 10))  # both try: lands once


def test_concurrent_appends(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, start)) for w in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 110
    got = read_records(tmp_path)  # every line valid, no key twice
    assert sorted(record_key(r) for r in got) == sorted(
        [("train", f"w{w}", i) for w in range(2) for i in range(50)] + [("train", "shared", i) for i in range(10)]
    )


def test_where_filtering(tmp_path):
    append_record(tmp_path, train_record())
    append_record(tmp_path, eval_record(temperature=0.0, task="gsm"))
    append_record(tmp_path, eval_record(temperature=0.7, task="gsm"))
    append_record(tmp_path, eval_record(temperature=0, task="code", batch_size=8, greedy=True))

    def keys(**kwargs):
        return [(r["kind"], r.get("task"), r.get("temperature")) for r in read_records(tmp_path, **kwargs)]

    assert keys(kind="train") == [("train", None, None)]
    assert keys(where={"task": "gsm", "temperature": "0"}) == [("eval", "gsm", 0.0)]
    assert keys(where={"temperature": 0}) == [("eval", "gsm", 0.0), ("eval", "code", 0)]
    assert keys(where={"temperature": "0.70"}) == [("eval", "gsm", 0.7)]
    assert keys(where={"batch_size": "8.0", "greedy": "true"}) == [("eval", "code", 0)]
    assert keys(kind="train", where={"task": "gsm"}) == []
    assert keys(where={"nonexistent": "x"}) == []
    with pytest.raises(ScyllaError, match="unknown record kind"):
        read_records(tmp_path, kind="evals")


def test_find_checkpoints_keeps_records_whose_draft_folder_exists(tmp_path):
    from scylla.records import find_checkpoints

    assert find_checkpoints(tmp_path) == []  # no records file
    for layers in (1, 2):
        folder = tmp_path / "jobs" / f"L{layers}"
        if layers == 1:
            folder.mkdir(parents=True)
        append_record(tmp_path, train_record(run_id=f"L{layers}", draft_layers=layers, checkpoint=str(folder)))
    assert [r["run_id"] for r in find_checkpoints(tmp_path)] == ["L1"]
    assert find_checkpoints(tmp_path, where={"draft_layers": 2}) == []


def test_a_scylla_configuration_names_its_drafts_relative_to_its_folder(tmp_path, monkeypatch):
    """write_config's paths are relative to the file, so a run folder moved whole still selects its own drafts;
    a draft method read from any folder's records has one spelling (issue 16)."""
    import shutil

    import yaml

    from scylla.records import method_as_read, method_as_stored
    from scylla.selection import config_as_read, config_as_stored, load_selection

    run = tmp_path / "runs" / "a"
    (run / "jobs" / "h" / "tokens-8").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spec = "draft:runs/a/jobs/h/tokens-8"
    assert method_as_stored(spec, run) == "draft:jobs/h/tokens-8"
    assert method_as_stored(spec, run / "check") == "draft:../jobs/h/tokens-8"
    assert method_as_read("draft:../jobs/h/tokens-8", run / "check") == spec == method_as_read("draft:./runs/a/jobs/h/../h/tokens-8")
    assert method_as_read("hybrid:draft:jobs/h/tokens-8", run) == "hybrid:" + spec
    assert method_as_read("prompt-lookup", run) == "prompt-lookup" == method_as_stored("prompt-lookup", run)
    config = dict(run_dir="runs/a/check", drafts=[spec], selection={"1": dict(draft=spec, best_draft=spec,
                                                                              draft_shape="chain:3")})
    stored = config_as_stored(config, run / "scylla.yaml")
    assert stored["run_dir"] == "check" and stored["drafts"] == ["draft:jobs/h/tokens-8"]
    assert config_as_read(stored, run / "scylla.yaml") == config
    (run / "scylla.yaml").write_text(yaml.safe_dump(stored))
    shutil.move(run, tmp_path / "moved")
    assert load_selection("moved/scylla.yaml")[1].draft == "draft:moved/jobs/h/tokens-8"


def test_a_copy_of_a_folder_with_old_style_paths_finds_its_own_drafts(tmp_path, monkeypatch):
    """Older records stored a draft folder as typed at launch: relative to the launch directory
    (``runs/demo/jobs/ID/tokens-N``) or absolute. A copy of such a run folder must resolve them inside itself, also
    while the original still exists at that path from the working directory (tests/mutations.md:
    checkpoint-from-cwd-first)."""
    import shutil
    from pathlib import Path

    from scylla.records import find_checkpoints

    monkeypatch.chdir(tmp_path)
    original = Path("runs/demo")
    lines = []
    for run_id, absolute in (("a", False), ("b", True)):
        folder = original / "jobs" / run_id / "tokens-8"
        folder.mkdir(parents=True)
        (folder / "card.json").write_text('{"copy": false}')
        typed = str(folder.resolve()) if absolute else str(folder)  # how the launch named it
        lines += [train_record(run_id=run_id, train_tokens=8, checkpoint=typed),
                  eval_record(run_id=run_id, train_tokens=8, method=f"draft:{typed}")]
    # written as old records were: append_record would store the eval methods relative to the run folder
    (original / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    copy = Path("elsewhere/copy")
    shutil.copytree(original, copy)
    for card in copy.glob("jobs/*/tokens-8/card.json"):
        card.write_text('{"copy": true}')
    drafts = find_checkpoints(copy)
    assert [d["run_id"] for d in drafts] == ["a", "b"]
    assert all(json.loads((Path(d["checkpoint"]) / "card.json").read_text())["copy"] for d in drafts), drafts
    methods = [r["method"] for r in read_records(copy, kind="eval")]
    assert methods == ["draft:elsewhere/copy/jobs/a/tokens-8", "draft:elsewhere/copy/jobs/b/tokens-8"]
    assert [d["checkpoint"] for d in find_checkpoints(original)] == ["runs/demo/jobs/a/tokens-8",
                                                                     "runs/demo/jobs/b/tokens-8"]
