"""CPU threads for torch: by default the cores that are free, and one warning line when the machine is too busy
for timings to mean much.

torch's default takes every core; when another job shares them, the two fight and a timed pass can take four times
as long (16 new tokens: 27.7 s with the default threads, 6.1 s with one, beside another job on 2 cores).
"""

from __future__ import annotations

import os
import sys
import time

import torch

BUSY_WINDOW_S = 0.5  # how long the other processes' use of the cores is watched


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(window: float = BUSY_WINDOW_S) -> float:
    """Cores kept busy by other processes, watched over ``window`` seconds (this process's own use is taken out).

    The 1-minute load average lags a job started seconds ago, so it is only the fallback where /proc/stat is missing.
    """
    start, own = _cpu_jiffies(), time.process_time()
    if start is None:
        return os.getloadavg()[0]
    time.sleep(window)
    end, own = _cpu_jiffies(), time.process_time() - own
    busy, total = end[0] - start[0], end[1] - start[1]
    if total <= 0:
        return 0.0
    cores = os.cpu_count() or 1  # /proc/stat counts every core of the machine
    return max(0.0, busy / total * cores - own / window)


def free_cores() -> int:
    """OMP_NUM_THREADS if set, else the cores of this process's affinity that other processes leave free (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, round(_cores() - busy_cores()))


def use_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads (None: free_cores()); returns the thread count. One warning line when more threads
    are asked for than this process has cores (they would take turns on them)."""
    if threads is not None and threads > _cores():
        print(f"scylla: warning: --threads {threads} is more than the {_cores()} core(s) this process may use: the "
              "threads will take turns and run slower than with at most that many", file=sys.stderr)
    threads = threads or free_cores()
    torch.set_num_threads(threads)
    return threads


def thread_env(threads: int) -> dict[str, str]:
    """The environment that gives a process ``threads`` CPU threads: OMP_NUM_THREADS (torch's threads, the on-policy
    generation's and the feature pass's) and MKL_NUM_THREADS. OpenMP's wait policy stays its default: PASSIVE made
    on-policy generation 23% slower quiet and no faster beside busy processes (benchmarks/crowded.py,
    docs/benchmarks.md)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def warn_if_busy() -> float:
    """One warning line on stderr when other processes keep half a core or more busy: called before timed work
    (online eval, cost tables, the tts bench). Returns the busy cores seen, for the records."""
    busy, cores, threads = busy_cores(), _cores(), torch.get_num_threads()
    if busy >= 0.5:
        fight = cores - busy < threads - 0.5  # torch's threads and the other work contend for the same cores
        print(f"scylla: warning: the machine is busy (other processes use {busy:.1f} of {cores} cores; {threads} "
              "thread(s)): " + ("timings will be slower and noisier than on a quiet machine"
                                + (" (--threads 1 helps)" if threads > 1 else "") if fight else
                                "tokens/s will be lower than on a quiet machine; paired speed-ups, timed in "
                                "interleaved rounds, hold"), file=sys.stderr)
    return round(busy, 2)
