"""Sweeps: a YAML grid of draft-training jobs, expanded, checked, and launched through DeepSpeed.

Grid file (experiments/*.yaml):

    sweep: NAME                 # names the run directory (runs/NAME unless --run-dir) and the records
    launcher: local             # local: run jobs here one after another | hostfile | slurm: write scripts
    processes: 1                # processes per job (GPUs on CUDA): the hosts' slots, or slurm nodes x GPUs per node
    hosts: []                   # hostfile launcher: lines such as "node1 slots=8"
    slurm: {}                   # slurm launcher: sbatch options (nodes, default 1; gpus_per_node, default
                                # processes / nodes, 0 for none; partition, time, ...)
    base: {...}                 # TrainConfig fields shared by every job (train/config.py)
    grid: {layers: [1, 2], seed: [0, 1], optim.lr: [...]}   # every combination is one job
    variants: {NAME: {unroll: 4, optim.loss: kl}}   # optional: named settings (an ablation; dotted keys for
                                # sections), each crossed with the grid

Every job's config is validated, and the target checked, before anything launches. Re-running a sweep skips
finished jobs (a DONE marker and every milestone's record) and resumes killed ones (each job resumes from its own
stable checkpoint and skips milestones that already have records). Each job's output (DeepSpeed's, wandb's, the
trainer's) goes to RUN_DIR/jobs/ID/train.log; a local sweep shows one progress bar and a line per finished job.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
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
from scylla.models import ALIASES, PACKAGED, packaged_source
from scylla.ports import free_port
from scylla.records import read_records, records_path
from scylla.threads import thread_env
from train.config import UNHASHED, TrainConfig
from train.pretrain_draft import release_shared_memory


LAUNCHERS = ("local", "hostfile", "slurm")
HOST_LINE = re.compile(r"(\S+)\s+slots=(\d+)")  # a DeepSpeed hostfile line
SLURM_OWN = ("array", "job_name", "ntasks_per_node")  # directives the sweep writes itself


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
        for host in self.hosts:
            self.require(HOST_LINE.fullmatch(str(host)) is not None, "hosts",
                         f"each host is 'NAME slots=N' (a DeepSpeed hostfile line), got {host!r}")
        slots = sum(int(HOST_LINE.fullmatch(str(h))[2]) for h in self.hosts)
        self.require(self.launcher != "hostfile" or slots == self.processes, "processes",
                     f"the hosts have {slots} slots in all; set processes to {slots} (one process per slot)")
        for key, value in self.slurm.items():
            self.require(key not in SLURM_OWN, f"slurm.{key}", "is written by the sweep; drop it")
            self.require(isinstance(value, (str, int, float)) and "\n" not in str(value), f"slurm.{key}",
                         f"must be one sbatch option value, got {value!r}")
        nodes = self.slurm.get("nodes", 1)
        self.require(isinstance(nodes, int) and nodes >= 1 and self.processes % nodes == 0, "slurm.nodes",
                     f"must divide processes ({self.processes}) evenly, got {nodes!r}")
        gpus = self.slurm.get("gpus_per_node", self.processes // nodes)
        self.require(gpus in (0, self.processes // nodes), "slurm.gpus_per_node",
                     f"must be processes / nodes ({self.processes // nodes}: one process per GPU) or 0 (CPU nodes), "
                     f"got {gpus!r}")


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
        if name in PACKAGED:
            packaged_source(name)
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


def launch_command(sweep: Sweep, hostfile: str | None = None, port: int | None = None) -> list[str]:
    """This interpreter running the DeepSpeed launcher of the trainer, as an argument list (never a shell string);
    the job's ``--config JOB_YAML`` (and ``--run-dir``) follow. With one host the launcher runs the processes here,
    without ssh."""
    argv = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        argv += ["--hostfile", hostfile] + (["--no_ssh_check", "--master_addr", "127.0.0.1"]
                                            if len(sweep.hosts) == 1 else [])
    else:
        argv += ["--num_gpus", str(sweep.processes)]
    if port is not None:
        argv += ["--master_port", str(port)]
    return argv + ["--module", "train.pretrain_draft"]


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


def finished(sweep: Sweep) -> set[str]:
    """The run ids of the finished jobs: a DONE marker and a train record for each milestone. The records win: a job
    whose record was lost (a cut-off last line, deleted as the error says) runs again and writes it back."""
    records = read_records(sweep.run_dir, kind="train") if records_path(sweep.run_dir).exists() else []
    have = {(r["run_id"], r["train_tokens"]) for r in records}
    return {j.run_id for j in sweep.jobs
            if (j.job_dir / "DONE").exists() and all((j.run_id, m) in have for m in j.milestones)}


def run_sweep(sweep: Sweep, dry_run: bool = False, rerun_changed: bool = False, threads: int | None = None
              ) -> Iterator[str]:
    """Launch (local) or write scripts (hostfile, slurm) for every unfinished job, yielding a line for each thing
    done. A job whose folder holds other settings is refused, or renamed with ``rerun_changed``
    (``guard_changes``). ``threads``: the CPU threads a job's processes share on each machine (OMP_NUM_THREADS and
    MKL_NUM_THREADS, which torch, the on-policy generation and the feature pass follow: scylla.threads.thread_env).
    None: a local job keeps the environment's; the scripts give each process its share of the CPUs it may use, found
    when they run (each host's, or the Slurm task's), unless OMP_NUM_THREADS is set there."""
    yield from guard_changes(sweep, rerun_changed)
    done = finished(sweep)
    todo = [j for j in sweep.jobs if j.run_id not in done]
    yield f"{len(sweep.jobs)} jobs, {len(sweep.jobs) - len(todo)} finished, {len(todo)} to run"
    scripts = {"hostfile": "launch.sh", "slurm": "sweep.sbatch"}
    if dry_run and sweep.launcher in scripts:
        yield f"would write {sweep.run_dir / scripts[sweep.launcher]} for them"
    if dry_run:
        for job in todo if sweep.launcher == "local" else []:
            yield shlex.join(launch_command(sweep) + ["--config", str(job.job_dir / "job.yaml")])
        return
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    if sweep.launcher == "local":
        with sweep_lock(sweep.run_dir):
            yield from _run_local(sweep, todo, threads)
        return
    for job in todo:
        write_job(job)
    jobs = [j.job_dir.relative_to(sweep.run_dir) / "job.yaml" for j in todo]
    path = sweep.run_dir / scripts[sweep.launcher]
    if sweep.launcher == "hostfile":
        (sweep.run_dir / "hostfile").write_text("\n".join(sweep.hosts) + "\n")
        script = _hostfile_script(sweep, jobs, threads)
    else:
        script = _sbatch_script(sweep, jobs, threads)
    path.write_text("\n".join(script) + "\n")
    path.chmod(0o755)
    yield f"wrote {path}" + (f" and {sweep.run_dir / 'hostfile'}" if sweep.launcher == "hostfile" else "")


def _run_local(sweep: Sweep, todo: list[TrainConfig], threads: int | None = None) -> Iterator[str]:
    """Launch the jobs here, one after another, each job's output into its train.log, each of its processes with
    its share of ``threads``; the terminal shows one bar (jobs done, and the running job's training steps) and a
    line per finished job."""
    env = {} if threads is None else thread_env(max(1, threads // sweep.processes))
    with tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="job", file=sys.stderr) as bar:
        for job in todo:
            port = free_port()
            argv = launch_command(sweep, port=port) + ["--config", str(write_job(job))]
            log = job.job_dir / "train.log"
            start = log.stat().st_size if log.exists() else 0  # a resumed job's log keeps the earlier launches
            try:
                code = _run_logged(argv, log, job.run_id, bar.set_postfix_str, env)
            finally:
                release_shared_memory(port)
            if code != 0:
                raise InputError(f"job {job.run_id} failed (exit {code}){_last_error(log, start)}; its log is {log}. "
                                 "Fix it and re-run: finished work is kept")
            bar.update()
            with tqdm.external_write_mode():
                yield f"finished {job.run_id} (log {log})"


def _run_logged(argv: list[str], log: Path, run_id: str, status, env: dict[str, str] | None = None) -> int:
    """Run ``argv`` (with ``env`` added to this environment) with its output appended to ``log``, following the log
    to pass each update of the job's own step bars (the trainer's, named after ``run_id``) to ``status`` as ``DESC
    N/TOTAL``; returns the exit code. The log is followed, not piped, so a process the job leaves behind cannot hold
    the sweep."""
    with log.open("ab") as out, log.open("rb") as follow:
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n".encode())
        out.flush()
        follow.seek(0, os.SEEK_END)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {}), "PYTHONPATH": _pythonpath()})
        pending, code = b"", None
        while code is None:
            code = proc.poll()
            *segments, pending = re.split(rb"[\r\n]", pending + follow.read())
            for segment in segments:
                step = re.match(rf"({re.escape(run_id)} [^:]*):.*?\| *(\d+/\d+)", segment.decode(errors="replace"))
                if step:
                    status(f"{step[1]} {step[2]}")
            time.sleep(0.2 if code is None else 0)
        return code


def _last_error(log: Path, start: int = 0) -> str:
    """``: MESSAGE`` from a job's log from byte ``start`` on: its last ``scylla: error:`` line, or else the last
    exception line ("" if neither)."""
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    for pattern in (r"scylla: error: (.*)", r"(\w+(?:Error|Exception): .*)"):
        found = [m[1] for m in map(re.compile(pattern).match, lines) if m]
        if found:
            return f": {found[-1]}"
    return ""


@contextmanager
def sweep_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN_DIR/sweep.lock (scylla.claims) while jobs run here; a second sweep on the same folder gets an
    InputError saying who holds it."""
    with claim(run_dir / "sweep.lock") as holder:
        if holder:
            raise InputError(f"{run_dir} is being swept by {holder}: wait for it to finish (or stop it), then re-run "
                             "to complete what is missing")
        yield


PYTHON = '"${SCYLLA_PYTHON:-python3}"'  # the scripts' interpreter: the environment that has Scylla


def _thread_lines(threads: int | None, per_host: int, cpus: str, whose: str) -> list[str]:
    """Script lines exporting each job process's CPU threads (as scylla.threads.thread_env): its share of the sweep's
    ``threads`` where given, else of ``cpus`` (a shell expression counting ``whose`` CPUs) found when the script runs,
    unless OMP_NUM_THREADS is set there; ``per_host`` processes share a host's."""
    if threads is not None:
        share = max(1, threads // per_host)
        return [f"export OMP_NUM_THREADS={share} MKL_NUM_THREADS={share}  # sweep --threads {threads}, shared by a "
                f"host's {per_host} process(es)"]
    return [f"THREADS=$(( {cpus} / {per_host} ))  # {whose} CPUs, shared by a host's {per_host} process(es)",
            '[ "$THREADS" -ge 1 ] || THREADS=1',
            'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$THREADS}"',
            'export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"']


def _hostfile_script(sweep: Sweep, jobs: list[Path], threads: int | None = None) -> list[str]:
    """launch.sh: the unfinished jobs one after another on the hosts of ./hostfile, through the DeepSpeed launcher;
    paths relative to the run folder, the interpreter from ``$SCYLLA_PYTHON``. Each process's threads: its share of
    ``threads``, or of the CPUs of the host running the script (hosts alike); the trainer gets them as --threads too,
    as the launcher passes no OMP_NUM_THREADS to other hosts."""
    launcher = shlex.join(launch_command(sweep, hostfile="hostfile")[1:])
    per_host = max(int(HOST_LINE.fullmatch(host)[2]) for host in sweep.hosts)
    return ["#!/usr/bin/env bash",
            f"# Sweep {sweep.name}: trains its unfinished jobs on the hosts of ./hostfile (DeepSpeed launcher). Run it",
            "# on the first host: bash RUN_DIR/launch.sh. SCYLLA_PYTHON (default python3) is the interpreter of the",
            "# environment that has Scylla. Each job's output goes to jobs/ID/train.log.",
            "set -eo pipefail",
            'cd "$(dirname "$0")"',
            *_thread_lines(threads, per_host, "$(nproc)", "this host's"),
            'train() {  # $1: a job.yaml',
            '  echo "training ${1%/job.yaml} (log ${1%/job.yaml}/train.log)"',
            f'  {PYTHON} {launcher} --config "$1" --run-dir . --threads "$OMP_NUM_THREADS" '
            '>> "${1%/job.yaml}/train.log" 2>&1 ||',
            '    { echo "launch.sh: ${1%/job.yaml} failed: see ${1%/job.yaml}/train.log" >&2; exit 1; }',
            "}",
            *[f"train {shlex.quote(str(job))}" for job in jobs]]


def _sbatch_script(sweep: Sweep, jobs: list[Path], threads: int | None = None) -> list[str]:
    """sweep.sbatch: a Slurm array, one task per unfinished job. Its directives come first (sbatch stops reading them
    at the first command): nodes and GPUs per node from the grid, one launcher task per node. Each task runs torchrun
    on every node of its allocation, the rendezvous (first node, a port from the job id, the node rank) taken from
    Slurm's environment. Each process's threads: its share of ``threads``, or of the node's launcher task's CPUs
    (--cpus-per-task, else the CPUs Slurm gave it on the node). Submitted from the run folder; it stops with one line
    run outside Slurm or elsewhere."""
    slurm = {"nodes": 1, "gpus_per_node": sweep.processes // sweep.slurm.get("nodes", 1), **sweep.slurm}
    per_node = sweep.processes // slurm["nodes"]
    directives = {"job_name": sweep.name, "array": f"0-{max(0, len(jobs) - 1)}", "ntasks_per_node": 1,
                  **{k: v for k, v in slurm.items() if not (k == "gpus_per_node" and v == 0)}}
    torchrun = shlex.join(["-m", "torch.distributed.run", "--nnodes", str(slurm["nodes"]),
                           "--nproc_per_node", str(per_node)])
    # one per node, under srun; the threads expand there, from the environment srun passes on
    node = (f'{PYTHON} {torchrun} --node_rank "$SLURM_NODEID" --master_addr "$MASTER_ADDR" --master_port '
            '"$MASTER_PORT" -m train.pretrain_draft --config "$1" --run-dir . --threads "$OMP_NUM_THREADS"')
    return ["#!/usr/bin/env bash",
            *[f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in directives.items()],
            f"# Sweep {sweep.name}: submit from its run folder (cd RUN_DIR && sbatch sweep.sbatch). SCYLLA_PYTHON",
            "# (default python3) is the interpreter of the environment that has Scylla; MASTER_PORT may be set.",
            "# Each job's output goes to jobs/ID/train.log.",
            "set -eo pipefail",
            'if [ -z "${SLURM_ARRAY_TASK_ID:-}" ] || [ ! -f sweep.sbatch ]; then',
            '  echo "sweep.sbatch: submit it with sbatch from its run folder: cd RUN_DIR && sbatch sweep.sbatch" >&2',
            "  exit 2",
            "fi",
            *_thread_lines(threads, per_node, "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}", "the task's"),
            "JOBS=(" + " ".join(shlex.quote(str(job)) for job in jobs) + ")",
            'JOB="${JOBS[$SLURM_ARRAY_TASK_ID]}"',
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
            'MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"',
            "export MASTER_ADDR MASTER_PORT",
            'echo "training ${JOB%/job.yaml} on $SLURM_JOB_NUM_NODES node(s) (log ${JOB%/job.yaml}/train.log)"',
            f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(node)} bash "
            '"$JOB" >> "${JOB%/job.yaml}/train.log" 2>&1']


def array_script(name: str, argv: list[str], tasks: int, options: dict[str, str], script: str) -> list[str]:
    """A Slurm array of ``tasks`` tasks, each running ``scylla ARGV`` (an evaluation or a tts benchmark) in the
    directory it is submitted from; the tasks share the settings through their claims (scylla.claims), so each
    measures what the others have not. Directives first (the ``options`` become ``#SBATCH --KEY=VALUE``); the
    command is ARGV as given, quoted, never a config string through a shell."""
    directives = {"job_name": name, "array": f"0-{tasks - 1}", "ntasks": 1, **options}
    return ["#!/usr/bin/env bash",
            *[f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in directives.items()],
            f"# {tasks} tasks of `scylla {shlex.join(argv[:2])} ...`, sharing its settings through claims. Submit it from",
            f"# the directory the paths below are relative to: sbatch {script}. SCYLLA_PYTHON (default python3) is the",
            "# interpreter of the environment that has Scylla. A re-run (or a re-submission) completes what is missing.",
            "set -eo pipefail",
            'if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then',
            f'  echo "{Path(script).name}: submit it with sbatch: sbatch {script}" >&2',
            "  exit 2",
            "fi",
            f"exec {PYTHON} -m pipeline.cli {shlex.join(argv)}"]


def _pythonpath() -> str:
    """Jobs import train/ from this checkout even when it is not installed."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
