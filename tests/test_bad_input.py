"""Every bad input of issue 16's and issue 28's lists, in one table or a test of its own: `scylla` exits 2 with
exactly one `scylla: error:` line on stderr and no traceback, before any model loads or any output is written (or
warns where the input is legal but likely wrong). Ctrl-C prints one line saying what was kept and how to resume, and
exits 130."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
GEN = ["generate", "--target", "tiny-random-llama", "--prompt", "hi", "--max-new-tokens", "2"]
DRAFT_TREE = "top_k=2,depth=2,total_tokens=4"

# (argv with {T} for the scratch folder of `inputs`, a fragment of the one error line); the argv run from the
# repository root. The paths are made by
# `inputs`: file.txt (a file), ro/ (read-only), badcfg/ and noweights/ (broken draft folders), lots.yaml (a grid
# with milestones: "lots"), other.yaml / scylla.yaml (Scylla configurations for another target / batch sizes 1 and
# 8), empty/ (a run folder with an empty records file).
CASES = [
    # output paths, refused before any work
    (GEN + ["--json", "{T}"], "--json {T} is a folder; give a file path"),
    (GEN + ["--json", "{T}/file.txt/out.json"], "{T}/file.txt is not a writable folder"),
    (["costs", "--target", "tiny-random-llama", "--out", "{T}"], "--out {T} is a folder"),
    (["costs", "--target", "tiny-random-llama", "--out", "{T}/file.txt/costs.json"], "is not a writable folder"),
    (["fit", "{T}/empty", "--json", "{T}"], "--json {T} is a folder"),
    (["fit", "{T}/empty", "--json", "{T}/file.txt/fits.json"], "is not a writable folder"),
    (["fit", "{T}/empty", "--json", "{T}/empty/records.jsonl"], "would replace a run's records"),
    (["figs", "{T}/empty", "--out", "{T}/file.txt"], "--out {T}/file.txt is a file; give a folder path"),
    (["select", "--fits", "{T}/fits.json", "--cost", "{T}/costs.json", "--out", "{T}"], "--out {T} is a folder"),
    (["select", "--fits", "{T}/fits.json", "--cost", "{T}/costs.json", "--target", "tiny-random-llama", "--check",
      "--check-dir", "{T}/file.txt"], "--check-dir {T}/file.txt is a file"),
    (["select", "--fits", "{T}/fits.json", "--cost", "{T}/costs.json", "--target", "tiny-random-llama", "--check",
      "--check-dir", "{T}/ro/check"], "{T}/ro is not a writable folder"),
    (["tts-bench", "experiments/tts.yaml", "--out", "{T}/file.txt"], "--out {T}/file.txt is a file"),
    # run folders that are files or cannot be written
    (["sweep", "experiments/smoke.yaml", "--run-dir", "{T}/file.txt"], "--run-dir {T}/file.txt is a file"),
    (["eval", "{T}/file.txt", "--tasks", "gsm"], "{T}/file.txt is a file"),
    (["demo", "--run-dir", "{T}/file.txt"], "--run-dir {T}/file.txt is a file"),
    (["sweep", "experiments/smoke.yaml", "--run-dir", "{T}/ro/run"], "{T}/ro is not a writable folder"),
    # draft folders that do not load
    (GEN + ["--drafter", "draft:{T}/badcfg"], "{T}/badcfg"),
    (GEN + ["--drafter", "draft:{T}/noweights"], "{T}/noweights has no model.safetensors"),
    (GEN + ["--drafter", "draft:{T}/nothere"], "does not exist"),
    # a device this torch does not have
    (GEN + ["--device", "cuda"], "device cuda: this torch is a CPU build"),
    # config values of the wrong kind
    (["sweep", "{T}/lots.yaml", "--run-dir", "{T}/run"], "milestones: must be"),
    # flags that another choice makes meaningless
    (GEN + ["--tree", DRAFT_TREE], "--drafter none drafts nothing"),
    (GEN + ["--drafter", "prompt-lookup", "--tree", DRAFT_TREE, "--num-draft-tokens", "3"], "drop --num-draft-tokens"),
    (GEN + ["--drafter", "truncated:1", "--max-ngram", "2"], "--max-ngram"),
    (["eval", "--config", "experiments/batch.yaml", "--tasks", "gsm"], "drop --tasks"),
    (GEN + ["--config", "{T}/other.yaml"], "selected for target smollm2-135m, not tiny-random-llama"),
    (GEN + ["--config", "{T}/scylla.yaml", "--batch-size", "4"], "batch sizes 1, 8"),
    # a missing file is called missing
    (GEN + ["--config", "{T}/missing.yaml"], "{T}/missing.yaml: file does not exist"),
    (["select", "--fits", "{T}/missing.json", "--cost", "{T}/costs.json", "--target", "tiny-random-llama"],
     "{T}/missing.json does not exist"),
    (["figs", "{T}/empty", "--config", "{T}/missing.yaml", "--out", "{T}/figs"], "missing.yaml: file does not exist"),
    # an empty records file, with neither --kind nor --where given
    (["fit", "{T}/empty"], "no records in {T}/empty"),
    # drafter specs, prompts, sampling settings, targets
    (["generate", "--prompt", "hi", "--drafter", "eagle"], "unknown drafter"),
    (["generate", "--prompt", "hi", "--drafter", "truncated:x"], "layer count"),
    (["generate", "--prompts-file", "{T}/none.jsonl"], "does not exist"),
    (["generate", "--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "--prompt", "hi", "--target", "./no/such/folder"], "model folder ./no/such/folder does not exist"),
    (GEN + ["--num-draft-tokens", "3"], "--drafter none drafts nothing"),
    (GEN + ["--config", "{T}/scylla.yaml", "--drafter", "prompt-lookup"], "--config chooses"),
    # issue 28: silent and wrong before
    (["select", "--fits", "{T}/fits.json", "--cost", "{T}/costs.json", "--out", "{T}/s.yaml"], "give --target"),
    (["eval", "{T}/empty", "--slurm", "partition=gpu"], "add --slurm-array N, or drop --slurm"),
    (["eval", "{T}/nothere", "--slurm-array", "2"], "run folder {T}/nothere does not exist"),
    (["eval", "{T}/empty", "--slurm-array", "2", "--slurm", "time=1\n#SBATCH --mem=1"],
     "#SBATCH --mem=1': give KEY=VALUE"),
    (["figs", "{T}/empty", "--out", "{T}/figs"], "nothing to draw from {T}/empty (0 records)"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The scratch folder of the table's bad inputs (see CASES)."""
    root = tmp_path_factory.mktemp("bad")
    (root / "file.txt").write_text("x")
    (root / "ro").mkdir(mode=0o500)
    (root / "badcfg").mkdir()
    (root / "badcfg" / "config.json").write_text("{not json")
    (root / "noweights").mkdir()
    (root / "noweights" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 64}))
    grid = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    grid["base"]["milestones"] = "lots"
    (root / "lots.yaml").write_text(yaml.safe_dump(grid))
    entry = {"draft": "prompt-lookup", "draft_shape": "chain:2"}
    (root / "other.yaml").write_text(yaml.safe_dump({"target": "smollm2-135m", "selection": {1: entry}}))
    (root / "scylla.yaml").write_text(yaml.safe_dump({"target": "tiny-random-llama", "selection": {1: entry,
                                                                                                      8: entry}}))
    (root / "empty").mkdir()
    (root / "empty" / "records.jsonl").write_text("")
    return root


@pytest.mark.parametrize("argv, message", CASES, ids=[m.replace("{T}/", "")[:40] for _, m in CASES])
def test_bad_input_is_one_line_and_exit_2(inputs, argv, message, capsys, monkeypatch):
    if "{T}/ro" in message and os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    monkeypatch.chdir(ROOT)
    code = main([a.replace("{T}", str(inputs)) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("scylla: error: "), err
    assert message.replace("{T}", str(inputs)) in lines[0] and "Traceback" not in out + err
    assert not (inputs / "nothere").exists() and not list(inputs.glob("empty/*.sbatch"))  # nothing written
    if "no records" in message:
        assert "--kind" not in lines[0] and "--where" not in lines[0]


def test_ctrl_c_prints_what_was_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt inside a long verb: one line, exit 130, no traceback."""
    import pipeline.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.evaluate, "evaluate", interrupted)
    assert main(["eval", str(tmp_path), "--tasks", "gsm"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scylla: interrupted: ")
    assert "kept" in lines[0] and "run the same command again" in lines[0]


def tree_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory) -> Path:
    """A one-layer eagle3 head whose card names its tiny target folder, beside a run folder and a folder of notes."""
    from transformers import AutoTokenizer

    from conftest import tiny_llama
    from scylla.drafters.eagle3_format import export_eagle3
    from scylla.models import tiny_random_folder
    from test_export import make_head

    root = tmp_path_factory.mktemp("export")
    target = tiny_llama(vocab_size=64, layers=4, hidden=32, seed=5)
    target.save_pretrained(root / "target")
    AutoTokenizer.from_pretrained(tiny_random_folder()).save_pretrained(root / "target")
    make_head(target).save(root / "head", card={"target": str(root / "target")})
    make_head(target).save(root / "nocard")  # its features come from layers 1-3: a 2-layer target has no layer 3
    small = tiny_llama(vocab_size=64, layers=2, hidden=32, seed=6)
    small.save_pretrained(root / "small")
    AutoTokenizer.from_pretrained(tiny_random_folder()).save_pretrained(root / "small")
    for name, ids in (("ids_text", "2,3,4"), ("ids_twice", [1, 1, 3])):
        export_eagle3(make_head(target), root / name, 4)
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, "eagle_aux_hidden_state_layer_ids": ids}))
    (root / "run" / "jobs").mkdir(parents=True)
    (root / "run" / "records.jsonl").write_text('{"kind": "train"}\n')
    (root / "notes" / "sub").mkdir(parents=True)
    (root / "notes" / "notes.txt").write_text("mine")
    (root / "notes" / "sub" / "data.bin").write_bytes(b"\0\1")
    return root / "head"


@pytest.mark.parametrize("out, force, message", [
    ("notes", False, "is not empty and is no EAGLE-3 export scylla wrote: give a new or empty folder, or --force"),
    ("run", False, "holds records (records.jsonl)"),
    ("run", True, "holds records (records.jsonl)"),
    ("head", True, "is the source"),
    ("", True, "is a folder holding the source"),
    (".", True, "is the current folder or one above it"),
])
def test_export_never_replaces_what_it_did_not_write(head_dir, out, force, message, capsys, monkeypatch):
    """`scylla export HEAD --out DIR` deleted whatever DIR held (issue 28): now one line, exit 2, nothing lost."""
    root = head_dir.parent
    monkeypatch.chdir(root / "notes" if out == "." else ROOT)
    before = tree_of(root)
    code = main(["export", str(head_dir), "--out", out if out == "." else str(root / out)] + ["--force"] * force)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("scylla: error: ") and message in lines[0], lines
    assert tree_of(root) == before and not [p for p in root.rglob(".*") if p.name != ".scylla-output"]


def test_export_replaces_its_own_export_or_with_force_and_writes_usual_permissions(head_dir, tmp_path, capsys):
    """An earlier export is replaced; another folder only with --force; folders 0777 and files 0666 less the umask."""
    umask = os.umask(0o022)
    try:
        out = tmp_path / "notes"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        assert main(["export", str(head_dir), "--out", str(out), "--force"]) == 0
        assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()
        assert main(["export", str(head_dir), "--out", str(out)]) == 0  # its own export: replaced without --force
        assert out.stat().st_mode & 0o777 == 0o755
        assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    finally:
        os.umask(umask)


@pytest.mark.parametrize("target, draft, message", [
    ("tiny-random-llama", "head", "draft {R}/head was trained for target {R}/target, not tiny-random-llama"),
    ("{R}/small", "nocard", "head {R}/nocard was trained for another target (unnamed: vocabulary 64, width 32, "
     "features of layers [3, 1, 2]) than {R}/small (vocabulary 64, width 32, 2 layers)"),
    ("{R}/target", "ids_text", "eagle_aux_hidden_state_layer_ids must be a list of layer numbers"),
    ("{R}/target", "ids_twice", "fuses 3 distinct target layers"),
])
def test_a_draft_for_another_target_is_one_line(head_dir, target, draft, message, capsys):
    """A head or EAGLE-3 folder that does not fit the target: one line naming both (was an IndexError or a
    TypeError), from its card before anything loads where it has one."""
    root = str(head_dir.parent)
    code = main(["generate", "--prompt", "hi", "--max-new-tokens", "2", "--target", target.replace("{R}", root),
                 "--drafter", f"draft:{root}/{draft}"])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Loading weights")]
    assert code == 2 and len(lines) == 1 and message.replace("{R}", root) in lines[0], lines


def write_records(run_dir: Path, kind: str, mats: list[float]) -> None:
    """Train-shaped records of ``kind`` at 2^10.. tokens, one per mean accepted length."""
    from scylla.records import append_record, new_record

    for i, mat in enumerate(mats):
        assert append_record(run_dir, new_record(
            kind, run_id=f"eagle-l1-s{i}", sweep="t", target="tiny", drafter_type="eagle", draft_layers=1,
            draft_width=32, draft_params=1000, draft_params_with_embeddings=3000, train_tokens=2 ** (10 + i),
            data="gsm", seed=0, mean_accepted_length=mat))


def test_fit_warns_of_pooled_kinds_and_constant_y(tmp_path, capsys):
    """Legal but likely wrong: train and eval records pooled without --kind, and a y that never changes (was R^2 = 1,
    silently)."""
    write_records(tmp_path, "train", [1.1] * 4)
    write_records(tmp_path, "eval", [1.2, 1.4, 1.5, 1.7])
    assert main(["fit", str(tmp_path), "--where", "drafter_type=eagle"]) == 0
    assert "warning: the fits pool records of 2 kinds (4 eval, 4 train): give --kind eval" in capsys.readouterr().out
    assert main(["fit", str(tmp_path), "--kind", "train", "--json", str(tmp_path / "fits.json")]) == 0
    out = capsys.readouterr().out
    assert "warning: the fits pool" not in out
    assert "mean_accepted_length is the same in every record of 1 group(s) (all)" in out
    assert json.loads((tmp_path / "fits.json").read_text())["fits"][0]["r2"] is None  # NaN, written as null


def test_threads_beyond_the_cores_warn_and_the_busy_advice_fits_the_threads(capsys, monkeypatch):
    """--threads 999 was accepted without a word; the busy warning said "--threads 1 helps" on 1 thread."""
    import torch

    import scylla.threads
    from scylla.threads import use_threads, warn_if_busy

    before = torch.get_num_threads()
    try:
        use_threads(len(os.sched_getaffinity(0)) + 1)
        assert "is more than the" in capsys.readouterr().err
        monkeypatch.setattr(scylla.threads, "busy_cores", lambda: 1.8)
        monkeypatch.setattr(scylla.threads, "_cores", lambda: 2)
        for threads, advice in ((1, False), (2, True)):
            torch.set_num_threads(threads)
            warn_if_busy()
            err = capsys.readouterr().err
            assert "slower and noisier" in err and ("--threads 1 helps" in err) == advice
    finally:
        torch.set_num_threads(before)


def test_a_lost_record_is_trained_again_though_its_job_is_done(tmp_path, capsys):
    """A cut-off last record (deleted as the error says) of a job with its DONE marker: the sweep said "0 to run"
    and the record never came back. The records win over the marker."""
    from pipeline.sweep import finished, load_sweep
    from scylla.records import append_record, new_record

    grid = ROOT / "experiments" / "smoke.yaml"
    sweep = load_sweep(grid, tmp_path)
    for job in sweep.jobs:
        job.job_dir.mkdir(parents=True)
        (job.job_dir / "DONE").write_text("{}")
        for tokens in job.milestones:
            assert append_record(tmp_path, new_record(
                "train", run_id=job.run_id, sweep="smoke", target="tiny-random-llama", drafter_type="eagle",
                draft_layers=1, draft_width=32, draft_params=1, draft_params_with_embeddings=1, train_tokens=tokens,
                data="gsm", seed=0, mean_accepted_length=1.0))
    assert finished(sweep) == {job.run_id for job in sweep.jobs}
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the cut-off line, deleted
    assert main(["sweep", str(grid), "--run-dir", str(tmp_path), "--dry-run"]) == 0
    assert f"{len(sweep.jobs)} jobs, {len(sweep.jobs) - 1} finished, 1 to run" in capsys.readouterr().out


def test_an_eval_logged_to_a_file_has_no_cursor_moves(tmp_path, capfd):
    """tqdm's bars below eval's own moved the cursor up (ESC [A), left in log files as "[A" remnants."""
    assert main(["eval", str(tmp_path), "--target", "tiny-random-llama", "--drafts", "prompt-lookup", "--baselines",
                 "none", "--tasks", "copy", "--prompts", "1", "--temperatures", "0", "--max-new-tokens", "2",
                 "--replay", "--threads", "1"]) == 0
    assert "\x1b[A" not in capfd.readouterr().err
