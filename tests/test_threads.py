"""The busy-machine check sees a job started a moment ago (the 1-minute load average did not: issue 15)."""

import os
import subprocess
import sys
import time

import torch

from scylla.threads import busy_cores, warn_if_busy


def test_a_busy_loop_started_just_now_is_seen(capsys):
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    before = torch.get_num_threads()
    try:
        time.sleep(0.3)  # let it start
        assert busy_cores() > 0.5
        torch.set_num_threads(len(os.sched_getaffinity(0)))  # torch's threads fight the loop
        warn_if_busy()
        assert "the machine is busy" in capsys.readouterr().err
        torch.set_num_threads(1)  # as --threads follows the free cores: still said, the ratios hold
        warn_if_busy()
        assert "paired speed-ups, timed in interleaved rounds, hold" in capsys.readouterr().err
    finally:
        loop.kill()
        torch.set_num_threads(before)
