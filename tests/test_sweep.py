"""The smoke sweep through the real DeepSpeed launcher (one process, gloo), records, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, SMOKE, sweep_process
from scylla import SpeculativeDecoder, load_model
from pipeline.cli import main
from scylla.drafters.eagle import EagleDrafter, EagleHead
from scylla.errors import InputError
from scylla.records import find_checkpoints, read_records, record_key
from train.config import TrainConfig
from train.pretrain_draft import save_draft

EXPECTED = {("train", f"eagle-layers{d}", m) for d in (1, 2) for m in (1024, 2048, 4096)}


def keys(run_dir: Path) -> set:
    return {record_key(r)[:3] for r in read_records(run_dir, kind="train")}


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep, tmp_path_factory) -> Path:
    """A copy of the session's smoke sweep (conftest.smoke_sweep), which this module's tests add records to."""
    run_dir = tmp_path_factory.mktemp("sweep") / "smoke"
    shutil.copytree(smoke_sweep, run_dir)
    return run_dir


def test_smoke_sweep_records(smoke_run):
    records = read_records(smoke_run, kind="train")
    assert {record_key(r)[:3] for r in records} == EXPECTED
    for r in records:
        assert r["sweep"] == "smoke" and r["drafter_type"] == "eagle" and r["target"] == "tiny-random-llama"
        assert r["target_quantization"] == "none"  # full-precision weights (the packaged SmolLM2: Q4_1)
        assert 0 < r["draft_params"] < r["draft_params_with_embeddings"]
        assert r["mean_accepted_length"] >= 1.0 and len(r["per_position_acceptance"]) == 3
        assert r["heldout_loss"] > 0 and 0 <= r["heldout_accuracy"] <= 1
        assert Path(smoke_run, r["checkpoint"], "model.safetensors").is_file()  # relative to the run folder
    depth2 = sorted((r for r in records if r["draft_layers"] == 2), key=lambda r: r["train_tokens"])
    assert depth2[0]["draft_params"] > min(r["draft_params"] for r in records)  # capacity axis is recorded
    assert all((smoke_run / "jobs" / f"eagle-layers{d}" / "DONE").exists() for d in (1, 2))
    assert list((smoke_run / "jobs" / "eagle-layers1" / "wandb").glob("offline-run-*"))
    log = (smoke_run / "jobs" / "eagle-layers1" / "train.log").read_text()
    assert "[INFO]" in log and "wandb:" in log and "[eagle-layers1] 4096 tokens: MAT" in log
    for d in (1, 2):  # the WSD branches repeat steps, which wandb drops when logged as its step: train/step is the x axis
        assert "Tried to log to step" not in (smoke_run / "jobs" / f"eagle-layers{d}" / "train.log").read_text()


def test_trained_head_drafts_losslessly(smoke_run):
    target, tokenizer = load_model("tiny-random-llama")
    head = EagleHead.load(smoke_run / "jobs" / "eagle-layers2" / "tokens-4096", target)
    ids, mask = tokenizer(["What is 2 + 3?", "Natalia sold 48 clips"], return_tensors="pt", padding=True).values()
    ref = target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = SpeculativeDecoder(target, EagleDrafter(head, 3)).generate(
        ids, mask, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    assert torch.equal(out.sequences, ref)


def test_rerun_skips_finished_jobs(smoke_run, capsys):
    assert main(["sweep", str(SMOKE), "--run-dir", str(smoke_run)]) == 0
    assert "2 jobs, 2 finished, 0 to run" in capsys.readouterr().out
    assert keys(smoke_run) == EXPECTED


def test_sigkill_mid_sweep_then_rerun_loses_and_doubles_nothing(smoke_run, tmp_path):
    """A sweep killed (SIGKILL, its whole process group) after its job's first milestone, then re-run: the job
    resumes, every milestone has exactly one record and the checkpoints are those of an unkilled sweep. One job
    (layers 1) of the smoke grid: the kill lands inside a job, the case a resume must get right."""
    grid = yaml.safe_load(SMOKE.read_text())
    grid["grid"] = {"layers": [1]}
    path = tmp_path / "one-job.yaml"
    path.write_text(yaml.safe_dump(grid))
    expected = {k for k in EXPECTED if k[1] == "eagle-layers1"}
    run_dir = tmp_path / "killed"
    proc = sweep_process(run_dir, path, start_new_session=True)
    records = run_dir / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_text().splitlines():
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len(keys(run_dir)) < len(expected)
    again = sweep_process(run_dir, path)
    out, _ = again.communicate(timeout=480)
    assert again.returncode == 0, out[-3000:]
    assert keys(run_dir) == expected and expected < keys(smoke_run)
    assert len(read_records(run_dir)) == len(expected)  # read_records also rejects duplicate keys
    unkilled = {r["train_tokens"]: r["heldout_loss"] for r in read_records(smoke_run, kind="train", where=dict(
        draft_layers=1))}
    assert {r["train_tokens"]: r["heldout_loss"] for r in read_records(run_dir, kind="train")} == unkilled


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"grid": {"layers": []}}, "non-empty list"),
        ({"base": {"target": "/no/such/model"}}, "target"),
        ({"grid": {"widht": [1]}}, "unknown key 'widht'"),
        ({"base": {"optim": {"lr": 0.1, "los": "ce"}}}, "unknown key 'los'"),
        ({"launcher": "kubernetes"}, "launcher"),
        ({"launcher": "hostfile", "hosts": ["localhost slots=2"]}, "set processes to 2"),
        ({"launcher": "hostfile", "hosts": ["localhost"]}, "'NAME slots=N'"),
        ({"launcher": "slurm", "slurm": {"nodes": 2}}, "must divide processes (1)"),
        ({"launcher": "slurm", "slurm": {"gpus_per_node": 4}}, "processes / nodes (1"),
        ({"launcher": "slurm", "slurm": {"array": "0-9"}}, "is written by the sweep"),
    ],
)
def test_bad_grids_fail_before_launch(tmp_path, capsys, change, message):
    grid = yaml.safe_load(SMOKE.read_text())
    for key, value in change.items():
        if isinstance(value, dict) and key == "base":
            grid["base"] = {**grid["base"], **value}
        else:
            grid[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["sweep", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scylla: error:") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_variants_cross_the_grid(tmp_path):
    from pipeline.sweep import load_sweep

    grid = yaml.safe_load(SMOKE.read_text())
    grid["grid"] = {"seed": [0, 1]}
    grid["variants"] = {"base": {}, "ttt4": {"unroll": 4, "optim.feature_weight": 0.0}}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(grid))
    jobs = {job.run_id: job for job in load_sweep(path).jobs}
    assert sorted(jobs) == ["eagle-base-seed0", "eagle-base-seed1", "eagle-ttt4-seed0", "eagle-ttt4-seed1"]
    assert (jobs["eagle-ttt4-seed1"].unroll, jobs["eagle-ttt4-seed1"].optim.feature_weight) == (4, 0.0)
    assert jobs["eagle-ttt4-seed1"].optim.lr == jobs["eagle-base-seed0"].optim.lr  # the rest of optim is kept
    assert (jobs["eagle-base-seed1"].unroll, jobs["eagle-base-seed1"].seed) == (2, 1)  # a head's default


def test_milestone_not_reachable_is_refused(tmp_path, capsys):
    grid = yaml.safe_load(SMOKE.read_text())
    grid["base"]["milestones"] = [1000]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["sweep", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert "not a multiple of the tokens per step" in capsys.readouterr().err


def sbatch_directives(text: str) -> list[str]:
    """The #SBATCH lines as sbatch reads them: only those before the first line that is neither blank nor a comment
    (the rest are ignored)."""
    read = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            break
        read += [line] if line.startswith("#SBATCH") else []
    return read


def multi_node_grid(tmp_path: Path, launcher: str, milestones: list[int] | None = None, **extra) -> Path:
    """The smoke grid for 2 processes (64 tokens a step), written for ``launcher``."""
    grid = yaml.safe_load(SMOKE.read_text())
    grid["base"]["data"]["block_size"] = 32
    grid["base"]["milestones"] = milestones or grid["base"]["milestones"]
    path = tmp_path / f"{launcher}.yaml"
    path.write_text(yaml.safe_dump({**grid, "launcher": launcher, "processes": 2, **extra}))
    return path


def test_multi_node_scripts_are_written_not_run(tmp_path, capsys):
    """sweep.sbatch: every directive where sbatch reads it, nodes and GPUs per node from the grid, torchrun on
    each node with Slurm's rendezvous; launch.sh: the DeepSpeed launcher on the hostfile. Both name no path of this
    machine, only paths inside the run folder."""
    scripts = {"slurm": "sweep.sbatch", "hostfile": "launch.sh"}
    extra = {"slurm": {"slurm": {"nodes": 2, "partition": "gpu", "time": "04:00:00"}},
             "hostfile": {"hosts": ["node1 slots=1", "node2 slots=1"]}}
    for launcher, script in scripts.items():
        run_dir = tmp_path / launcher
        argv = ["sweep", str(multi_node_grid(tmp_path, launcher, **extra[launcher])), "--run-dir", str(run_dir)]
        assert main(argv + ["--dry-run"]) == 0 and not run_dir.exists()
        assert f"would write {run_dir / script} for them" in capsys.readouterr().out
        assert main(argv) == 0
        text = (run_dir / script).read_text()
        assert subprocess.run(["bash", "-n", str(run_dir / script)]).returncode == 0
        assert sys.executable not in text and str(tmp_path) not in text and str(ROOT) not in text
        assert '"${SCYLLA_PYTHON:-python3}"' in text and "jobs/eagle-layers2/job.yaml" in text
        assert not (run_dir / "records.jsonl").exists()
    sbatch = (tmp_path / "slurm" / "sweep.sbatch").read_text()
    read = sbatch_directives(sbatch)
    assert {"#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=1",
            "#SBATCH --ntasks-per-node=1", "#SBATCH --array=0-1", "#SBATCH --job-name=smoke"} <= set(read)
    assert len(read) == sbatch.count("#SBATCH")  # none after the first command, where sbatch would ignore it
    assert "set -u" not in sbatch and "scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1" in sbatch
    assert "torch.distributed.run --nnodes 2 --nproc_per_node 1 --node_rank \"$SLURM_NODEID\"" in sbatch
    assert "--hostfile hostfile" in (tmp_path / "hostfile" / "launch.sh").read_text()
    assert (tmp_path / "hostfile" / "hostfile").read_text() == "node1 slots=1\nnode2 slots=1\n"
    outside = subprocess.run(["bash", str(tmp_path / "slurm" / "sweep.sbatch")], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert outside.returncode == 2 and outside.stderr.startswith("sweep.sbatch: submit it with sbatch")


def test_an_evaluation_is_written_as_a_slurm_array_not_run(smoke_run, capsys):
    """scylla eval --slurm-array N: RUN_DIR/eval.sbatch runs the same evaluation in N tasks (claims share the
    settings), directives first, the --slurm options as directives and not in the command."""
    argv = ["eval", str(smoke_run), "--tasks", "gsm", "--temperatures", "0", "--baselines", "none",
            "--device", "cpu"]
    before = (smoke_run / "records.jsonl").read_bytes()
    assert main(argv + ["--slurm-array", "4", "--slurm", "time=01:00:00", "--slurm=gpus-per-task=1"]) == 0
    text = (smoke_run / "eval.sbatch").read_text()
    assert f"sbatch {smoke_run / 'eval.sbatch'}" in capsys.readouterr().out
    read = sbatch_directives(text)
    assert {"#SBATCH --array=0-3", "#SBATCH --time=01:00:00", "#SBATCH --gpus-per-task=1"} <= set(read)
    assert len(read) == text.count("#SBATCH")
    assert text.splitlines()[-1].endswith('-m pipeline.cli ' + " ".join(argv))
    assert subprocess.run(["bash", "-n", str(smoke_run / "eval.sbatch")]).returncode == 0
    assert (smoke_run / "records.jsonl").read_bytes() == before  # nothing measured


def test_hostfile_launcher_trains_on_localhost_with_2_processes(tmp_path):
    """launch.sh with the hostfile 'localhost slots=2' trains here, without ssh: 2 processes (gloo), run from
    another directory, one line per job on the terminal and the launchers' logs in each job's train.log."""
    grid = multi_node_grid(tmp_path, "hostfile", hosts=["localhost slots=2"], grid={"layers": [1]}, milestones=[1024])
    run_dir = tmp_path / "run"
    assert main(["sweep", str(grid), "--run-dir", str(run_dir)]) == 0
    env = {**os.environ, "SCYLLA_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(run_dir / "launch.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    log = run_dir / "jobs" / "eagle-layers1" / "train.log"
    assert proc.returncode == 0, proc.stderr + log.read_text()[-3000:]
    assert proc.stdout.splitlines() == ["training jobs/eagle-layers1 (log jobs/eagle-layers1/train.log)"]
    assert "dist_world_size=2" in log.read_text() and "wandb:" in log.read_text()
    assert keys(run_dir) == {("train", "eagle-layers1", 1024)}


def test_an_evaluation_shards_its_settings_over_a_hostfile_launch(tmp_path):
    """The DeepSpeed launcher on the hostfile 'localhost slots=2' runs one eval in 2 processes (README, "Many
    machines"): each setting is measured once, by one of them, and the other names it as held."""
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(tmp_path / "hostfile"),
            "--no_ssh_check", "--master_addr", "127.0.0.1", "--no_local_rank", "--module", "pipeline.cli", "eval",
            str(run), "--drafts", "truncated:1", "--target", "tiny-random-llama", "--tasks", "copy", "--temperatures",
            "0", "--batch-sizes", "1,2", "--baselines", "none", "--prompts", "2", "--max-new-tokens", "4"]
    proc = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dist_world_size=2" in proc.stdout + proc.stderr
    measured = [(r["method"], r["batch_size"]) for r in read_records(run, kind="eval")]
    assert sorted(measured) == [("none", 1), ("none", 2), ("truncated:1", 1), ("truncated:1", 2)]


def test_a_sweeps_threads_reach_its_jobs(tmp_path, monkeypatch):
    """sweep --threads N: each job's processes share N threads through OMP_NUM_THREADS (issue 28: a training job
    held 13 threads on 2 cores, whatever the sweep was given)."""
    import pipeline.sweep

    envs = []
    monkeypatch.setattr(pipeline.sweep, "_run_logged",
                        lambda argv, log, run_id, status, env=None: envs.append(env) or 0)  # each job "succeeds"
    assert main(["sweep", str(SMOKE), "--run-dir", str(tmp_path), "--threads", "2"]) == 0
    assert envs == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 2  # smoke.yaml: 2 jobs of one process


def fake_commands(folder: Path) -> dict[str, str]:
    """An environment whose nproc says 8, whose srun and scontrol stand in for Slurm's (srun runs its command here),
    and whose SCYLLA_PYTHON prints the threads a process would get instead of training: a written script runs
    through to each job's launch, and each job's train.log says what that launch got."""
    folder.mkdir()
    commands = {"nproc": "echo 8", "scontrol": "echo node1", "srun": 'shift 2; exec "$@"',
                "python": 'echo "OMP=$OMP_NUM_THREADS MKL=$MKL_NUM_THREADS ${*: -2}"'}  # the last 2: --threads N
    for name, body in commands.items():
        (folder / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (folder / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "SLURM_"))}
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}", "SCYLLA_PYTHON": str(folder / "python")}


def test_the_written_scripts_give_each_process_its_share_of_the_threads(tmp_path):
    """launch.sh and sweep.sbatch export OMP_NUM_THREADS and MKL_NUM_THREADS to every process of a job, and pass
    them to the trainer (the DeepSpeed launcher takes no OMP_NUM_THREADS to other hosts): a host's or a Slurm task's
    CPUs shared by its processes, found when the script runs; OMP_NUM_THREADS set there wins; sweep --threads N
    is N shared by a host's processes (issue 28: the jobs of a written script took every core)."""
    env = fake_commands(tmp_path / "bin")
    slurm = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_ID": "7", "SLURM_NODEID": "0",
             "SLURM_JOB_NUM_NODES": "1"}
    cases = {  # launcher: [(sweep's --threads, the environment the script runs in, what each process gets)]
        "hostfile": [(None, {}, 4), (None, {"OMP_NUM_THREADS": "3"}, 3), ("6", {}, 3)],  # 8 CPUs, slots=2
        "slurm": [(None, {"SLURM_CPUS_PER_TASK": "8", **slurm}, 4), (None, {"SLURM_CPUS_ON_NODE": "3", **slurm}, 1),
                  (None, {"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "3", **slurm}, 3),
                  ("6", {"SLURM_CPUS_PER_TASK": "8", **slurm}, 3)]}
    extra = {"hostfile": {"hosts": ["node1 slots=2"]}, "slurm": {"slurm": {"gpus_per_node": 0}}}
    for launcher, script in (("hostfile", "launch.sh"), ("slurm", "sweep.sbatch")):
        grid = multi_node_grid(tmp_path, launcher, grid={"layers": [1]}, **extra[launcher])
        for i, (threads, there, share) in enumerate(cases[launcher]):
            run_dir = tmp_path / f"{launcher}{i}"
            given = ["--threads", threads] if threads else []
            assert main(["sweep", str(grid), "--run-dir", str(run_dir)] + given) == 0
            proc = subprocess.run(["bash", script], cwd=run_dir, env={**env, **there}, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            launched = (run_dir / "jobs" / "eagle-layers1" / "train.log").read_text().splitlines()
            assert launched == [f"OMP={share} MKL={share} --threads {share}"], (launcher, threads, there)


def test_a_job_s_output_goes_to_its_log_and_its_error_to_one_line(tmp_path):
    """A local job's output (DeepSpeed's, wandb's, the trainer's) goes to its train.log; the sweep's bar gets the
    job's step counts, and a failure is summed up by the job's last error line of this launch."""
    from pipeline.sweep import _last_error, _run_logged

    log, steps = tmp_path / "train.log", []
    log.write_text("scylla: error: an earlier launch's error\n")
    start = log.stat().st_size
    job = ("import sys; print('[INFO] launcher noise'); "
           "sys.stderr.write('eagle-x stable:  50%|#    | 1/2 [00:01]\\r'); "
           "sys.stderr.write('eagle-x stable: 100%|##   | 2/2 [00:02]\\n'); print('wandb: syncing', flush=True); "
           "sys.exit('scylla: error: data source jsonl:x does not exist')")
    assert _run_logged([sys.executable, "-c", job], log, "eagle-x", steps.append) == 1
    assert steps == ["eagle-x stable 1/2", "eagle-x stable 2/2"]
    text = log.read_text()
    assert "[INFO] launcher noise" in text and "wandb: syncing" in text and "=== " in text
    assert _last_error(log, start) == ": data source jsonl:x does not exist"


def test_generate_cli_drafts_with_a_trained_head(smoke_run, capsys):
    head = smoke_run / "jobs" / "eagle-layers1" / "tokens-4096"
    argv = ["generate", "--target", "tiny-random-llama", "--drafter", f"draft:{head}", "--prompt", "What is 2 + 3?",
            "--max-new-tokens", "8", "--quiet"]
    assert main(argv) == 0
    assert f"[draft:{head}]" in capsys.readouterr().out


def test_draft_lm_trains_without_the_launcher(tmp_path):
    """python -m train.pretrain_draft in one process (it sets the distributed env itself); a small draft LM. Its
    records keep the threads it ran on (--threads over the environment's). A checkpoint folder of its own written
    before scylla.atomic's marker existed, whose record was lost, is trained again and replaced (issue 28: the
    resumed job was refused its own folder)."""
    job = {"run_dir": str(tmp_path), "target": "tiny-random-llama", "drafter": "draft-lm", "layers": 1, "width": 32,
           "milestones": [512, 1024], "data": {"source": "gsm", "examples": 60, "block_size": 32},
           "optim": {"batch_blocks": 1}, "eval": {"prompts": 2, "max_new_tokens": 8},
           "wandb": "disabled", "sweep": "unit"}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    old = TrainConfig.from_dict(job).job_dir / "tokens-1024"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_text("an older run's weights, no marker")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "train.pretrain_draft", "--config", str(path), "--threads", "1"],
                          cwd=ROOT, env={**env, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = find_checkpoints(tmp_path)
    assert [r["train_tokens"] for r in records] == [512, 1024]
    assert records[0]["drafter_type"] == "draft-lm" and records[0]["draft_width"] == 32
    assert [r["threads"] for r in records] == [1, 1]
    model, _ = load_model(records[-1]["checkpoint"])  # a self-contained HF folder
    assert model.config.num_hidden_layers == 1


@pytest.mark.parametrize("drafter", ["eagle", "draft-lm"])
def test_a_job_replaces_its_own_draft_folders_and_no_one_elses(tmp_path, drafter):
    """save_draft: a folder inside the job's folder that no marker names (written before the marker existed) is the
    job's own and is replaced; a user's folder elsewhere is refused and kept as it was (scylla.atomic)."""
    from conftest import tiny_llama
    from scylla.drafters.eagle import EagleConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    target = tiny_llama()
    cfg = TrainConfig.from_dict({"run_dir": str(tmp_path / "run"), "target": "tiny-random-llama", "drafter": drafter,
                                 "width": 32, "milestones": [640], "data": {"block_size": 32},
                                 "optim": {"batch_blocks": 2}})
    if drafter == "eagle":
        model = EagleHead(EagleConfig.for_target(target, num_layers=1, feature_layers=[-1]),
                          target.get_input_embeddings())
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=1, num_key_value_heads=1))
    tokenizer = load_model("tiny-random-llama")[1] if drafter == "draft-lm" else None
    own, user = cfg.job_dir / "tokens-640", tmp_path / "mine"
    for folder in (own, user):
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("kept")
    save_draft(cfg, model, tokenizer, own, {"train_tokens": 640})
    assert (own / "config.json").is_file() and not (own / "notes.txt").exists()
    with pytest.raises(InputError, match="is not empty and is no draft scylla wrote"):
        save_draft(cfg, model, tokenizer, user, {"train_tokens": 640})
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_figs_are_drawn_from_records_alone(smoke_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figs", str(smoke_run), "--out", str(out)]) == 0
    for suffix in ("png", "pdf"):
        path = out / f"law1_tokens_heldout_accuracy.{suffix}"
        assert path.stat().st_size > 1000
    assert not list(out.glob("law2_*"))  # the capacity law needs 3 or more depths; the smoke grid has 2
    err = capsys.readouterr().err  # and the command says so, and what each missing figure needs
    assert "scylla: figs: no law2_capacity figure: it needs train records of 3+ depths" in err
    assert "scylla: figs: no --config: the trained draft with the highest mean MAT stands for Scylla" in err


def test_a_copied_run_folder_uses_its_own_drafts_from_any_directory(smoke_run, tmp_path, monkeypatch):
    """Records name draft folders relative to the run folder: a copy, read from another working directory,
    evaluates its own drafts and fits the same laws (issue 16)."""
    from fit.cli import run_fit

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(smoke_run, copy)
    monkeypatch.chdir(tmp_path)
    drafts = find_checkpoints("elsewhere/copy")
    assert len(drafts) == 6 and all(Path(d["checkpoint"]).resolve().is_relative_to(copy) for d in drafts)
    assert all(not Path(r["checkpoint"]).is_absolute() for r in read_records(copy, kind="train"))
    argv = ["eval", "elsewhere/copy", "--tasks", "gsm", "--temperatures", "0", "--replay", "--prompts", "2",
            "--max-new-tokens", "4", "--baselines", "none"]
    assert main(argv) == 0
    methods = {r["method"] for r in read_records(copy, kind="eval") if r["method"] != "none"}
    assert len(methods) == 6 and all(Path(m.partition(":")[2]).resolve().is_relative_to(copy) for m in methods)
    stored = [json.loads(line).get("method", "") for line in (copy / "records.jsonl").read_text().splitlines()]
    drafted = {m for m in stored if m.startswith("draft:")}  # stored relative to the run folder: jobs/ID/tokens-N
    assert len(drafted) == 6 and all(m.startswith("draft:jobs/") and m.count("/") == 2 for m in drafted)
    evaluated = len(read_records(copy, kind="eval"))
    moved = tmp_path / "moved"  # a moved folder reuses its eval records: the same 6 drafts, nothing re-measured
    shutil.move(copy, moved)
    assert main(["eval", "moved", *argv[2:]]) == 0
    assert len(read_records(moved, kind="eval")) == evaluated
    law = dict(kind="train", by="draft_layers", y="heldout_accuracy")
    assert run_fit(["moved"], **law) == run_fit([str(smoke_run)], **law)


def test_a_changed_setting_is_refused_or_run_as_a_new_run(smoke_run, capsys):
    """Re-running a finished grid with another learning rate names the setting and exits 2; --rerun-changed
    trains the changed jobs as new runs (RUN_ID~HASH), and fits refuse to mix them with the old ones."""
    from fit.loglinear import fit_log_linear
    from pipeline.sweep import load_sweep, run_sweep

    changed = smoke_run.parent / "changed.yaml"
    grid = yaml.safe_load(SMOKE.read_text())
    grid["base"]["optim"]["lr"] = 0.5
    changed.write_text(yaml.safe_dump(grid))
    assert main(["sweep", str(changed), "--run-dir", str(smoke_run)]) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings (optim.lr: " in err and "-> 0.5" in err and "--rerun-changed" in err
    lines = list(run_sweep(load_sweep(changed, smoke_run), dry_run=True, rerun_changed=True))
    assert sum("~" in line and "trained as a new run" in line for line in lines) == 2
    assert "2 jobs, 0 finished, 2 to run" in lines
    assert main(["sweep", str(SMOKE), "--run-dir", str(smoke_run), "--dry-run"]) == 0  # unchanged: nothing to run
    mixed = [dict(r, run_id=r["run_id"] + "~abcdef") for r in read_records(smoke_run, kind="train")]
    with pytest.raises(Exception, match="mixes runs of one job trained with different settings"):
        fit_log_linear(read_records(smoke_run, kind="train") + mixed, by=("draft_layers",))


def test_a_second_sweep_on_a_folder_being_swept_exits_2(smoke_run, capsys):
    from pipeline.sweep import sweep_lock

    with sweep_lock(smoke_run):  # as a running sweep holds it (another process: the same flock)
        assert main(["sweep", str(SMOKE), "--run-dir", str(smoke_run)]) == 2
    assert f"{smoke_run} is being swept by pid {os.getpid()} on " in capsys.readouterr().err
    assert main(["sweep", str(SMOKE), "--run-dir", str(smoke_run)]) == 0  # released


def test_eval_writes_records_for_every_draft_and_resumes(smoke_run, capsys):
    """Also: a setting another process is measuring (it holds the setting's claim) is left to it, not measured
    twice, and a re-run completes it."""
    from pipeline.evaluate import _claim_path
    from scylla.claims import claim

    argv = ["eval", str(smoke_run), "--tasks", "gsm", "--temperatures", "0,0.6", "--batch-sizes", "1,2",
            "--prompts", "2", "--max-new-tokens", "6", "--repeats", "2"]
    held = dict(task="gsm", prompt_set="fit", temperature=0.6, batch_size=2, mode="online")
    with claim(_claim_path(smoke_run, held)):  # as a second `scylla eval` on this folder would hold it
        assert main(argv) == 0
    assert (f"1 setting(s) left to the processes measuring them: gsm T=0.6 batch 2 (pid {os.getpid()} on "
            in capsys.readouterr().err)
    assert len(read_records(smoke_run, kind="eval")) == (6 + 2) * 2 * 2 - (6 + 2)
    assert main(argv) == 0  # released: the re-run completes what is missing
    evals = read_records(smoke_run, kind="eval")
    assert main(argv[:-4] + ["--max-new-tokens", "7", "--repeats", "2"]) == 2  # not skipped as done: refused
    assert ("records measured with max_new_tokens 6, and this evaluation asks for 7: evaluate into another run "
            "folder (or with max_new_tokens 6)") in capsys.readouterr().err
    assert len(evals) == (6 + 2) * 2 * 2  # (drafts + baselines) x temperatures x batch sizes
    plain = [r for r in evals if r["method"] == "none"]
    assert all(r["mean_accepted_length"] == 1.0 for r in plain)  # speed-ups: tests/test_timing.py, on a fake clock
    assert {r["train_tokens"] for r in evals if r["drafter_type"] == "eagle"} == {1024, 2048, 4096}
    assert main(argv) == 0
    assert "wrote 0 eval records" in capsys.readouterr().out
    assert len(read_records(smoke_run, kind="eval")) == len(evals)


def test_eval_replay_trees_costs_and_best_shape(smoke_run, tmp_path, capsys):
    """Replay at T=0 gives the online MAT; trees and chains are separate records; the cost model predicts."""
    from pipeline.evaluate import best_settings

    head = find_checkpoints(smoke_run)[-1]["checkpoint"]
    cost = tmp_path / "costs.json"
    assert main(["costs", "--target", "tiny-random-llama", "--draft", f"draft:{head}", "--batch-sizes", "1,2",
                 "--tokens", "1,2,3,7", "--contexts", "16", "--reps", "2", "--out", str(cost), "--threads", "2"]) == 0
    run = tmp_path / "run"
    common = ["eval", str(run), "--target", "tiny-random-llama", "--drafts", f"draft:{head}", "--baselines",
              "none,truncated:1", "--tasks", "copy",
              "--temperatures", "0", "--prompts", "2", "--max-new-tokens", "8",
              "--shapes", "chain:2;tree:top_k=2,depth=2,total_tokens=6", "--cost", str(cost)]
    capsys.readouterr()
    threads = torch.get_num_threads()
    assert main(common + ["--batch-sizes", "1,2", "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    assert f"{cost} was measured on 2 thread(s) and this evaluation runs on 1" in capsys.readouterr().err
    assert main(common + ["--batch-sizes", "1", "--replay"]) == 0
    evals = read_records(run, kind="eval")
    online = {(r["method"], r["draft_shape"], r["batch_size"]): r for r in evals if r["mode"] == "online"}
    replayed = {(r["method"], r["draft_shape"]): r for r in evals if r["mode"] == "replay"}
    assert len(online) == 1 * 2 + 2 * 2 * 2 and len(replayed) == 1 + 2 * 2  # plain + methods x shapes (x batches)
    for (method, shape), r in replayed.items():
        assert r["mean_accepted_length"] == online[(method, shape, 1)]["mean_accepted_length"]
        assert r["tokens_per_second"] is None or method == "none"  # plain decoding is always run (and timed)
        for b in (1, 2):  # per prompt, replay equals online decoding at every batch size
            for field in ("prompt_ids", "prompt_new_tokens", "prompt_target_calls", "prompt_accepted",
                          "prompt_accepted_at"):
                assert r[field] == online[(method, shape, b)][field], (method, shape, b, field)
    for r in evals:  # the per-prompt counts add up to the record's own
        assert len(r["prompt_ids"]) == r["n_prompts"] == 2 and len(set(r["prompt_ids"])) == 2
        assert sum(r["prompt_new_tokens"]) / sum(r["prompt_target_calls"]) == r["mean_accepted_length"]
        assert len(r["prompt_accepted_at"]) == 2 * r["prompt_positions"]
    tree = online[(f"draft:{head}", "tree:top_k=2,depth=2,total_tokens=6", 1)]
    assert tree["tree_total_tokens"] == 6 and tree["num_draft_tokens"] is None
    assert tree["predicted_speedup"] > 0
    best = best_settings(run)
    assert {(r["method"], r["batch_size"]) for r in best} == {(m, b) for m in (f"draft:{head}", "truncated:1")
                                                               for b in (1, 2)}
    assert "fastest draft shape" in capsys.readouterr().out


def test_eval_bad_input(tmp_path, smoke_run, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no records.jsonl" in capsys.readouterr().err
    assert main(["eval", str(smoke_run), "--tasks", "poetry"]) == 2
    assert "unknown task 'poetry'" in capsys.readouterr().err
    assert main(["eval", str(smoke_run), "--shapes", "tree:top_k=2,depth=4,total_tokens=3"]) == 2
    assert "total_tokens=3 < depth=4" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "RUN_DIR or --config" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\nwidths: [1]\n")
    assert main(["eval", "--config", str(bad)]) == 2
    assert "unknown key 'widths'" in capsys.readouterr().err


def test_select_writes_a_scylla_config_and_checks_it(smoke_run, tmp_path, capsys):
    """fit -> costs -> select: the chosen draft per batch size, its prediction, and the measured check."""
    fits, cost, out = tmp_path / "fits.json", tmp_path / "costs.json", tmp_path / "scylla.yaml"
    assert main(["fit", str(smoke_run), "--kind", "train", "--by", "draft_layers", "--json", str(fits)]) == 0
    assert main(["costs", "--target", "tiny-random-llama", "--head-layers", "1,2", "--head-width", "64",
                 "--batch-sizes", "1,2", "--tokens", "1,3", "--contexts", "16", "--reps", "2", "--out", str(cost)]) == 0
    argv = ["select", "--fits", str(fits), "--cost", str(cost), "--batch-sizes", "1,2", "--run-dir", str(smoke_run),
            "--fitted-shape", "chain:2", "--out", str(out), "--check", "--prompts", "2", "--max-new-tokens", "8"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "predicted vs measured" in text and text.count("batch ") >= 2
    config = yaml.safe_load(out.read_text())
    assert set(config["selection"]) == {"1", "2"}
    entry = config["selection"]["1"]
    lo, hi = entry["predicted_speedup_ci95"]
    assert lo <= entry["predicted_speedup"] <= hi and entry["best_draft"].startswith("draft:")
    assert entry["draft"] == (entry["best_draft"] if lo > 1 else "none")  # pipeline.select.pays: the lower bound
    assert main(["generate", "--target", "tiny-random-llama", "--config", str(out), "--prompt", "1 2 3",
                 "--max-new-tokens", "6", "--quiet", "--no-chat-template"]) == 0
    assert main(["select", "--fits", str(cost), "--cost", str(cost), "--target", "tiny-random-llama"]) == 2
    assert "not a fits file" in capsys.readouterr().err
