"""CPU threads for torch: by default the cores that are free, and one warning line when the machine is too busy
for timings to mean much.

torch's default takes every core; when another job shares them, the two fight and a timed pass can take four times
as long (16 new tokens: 27.7 s with the default threads, 6.1 s with one, beside another job on 2 cores).
"""

from __future__ import annotations

import os
import sys

import torch


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores() -> int:
    """OMP_NUM_THREADS if set, else the cores not taken by the last minute's load (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, round(_cores() - os.getloadavg()[0]))


def use_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads (None: free_cores()); returns the thread count."""
    threads = threads or free_cores()
    torch.set_num_threads(threads)
    return threads


def warn_if_busy() -> None:
    """One warning line on stderr when the load leaves fewer cores free than torch's threads: called before
    timed work (online eval, cost tables, the tts bench)."""
    load, cores, threads = os.getloadavg()[0], _cores(), torch.get_num_threads()
    if cores - load < threads - 0.5:
        print(f"scylla: warning: the machine is busy (load {load:.1f} on {cores} cores, {threads} thread(s)): "
              "timings will be slower and noisier than on a quiet machine", file=sys.stderr)
