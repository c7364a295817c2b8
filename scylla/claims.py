"""Claims on work in a shared run folder: an exclusive flock on a file, held while the work runs and released by the
kernel when the process ends, however it ends (so a claim is never left stale by a crash or Ctrl-C). Each file says
who holds it. flock works across the machines of a cluster on NFSv4 (Linux emulates it with POSIX locks); on Lustre
mount with ``-o flock``.

Used by the sweep (one sweep per run folder) and by evaluation (one process per eval setting, so that any number of
`scylla eval` processes on one folder share its settings without doing any twice).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def claim(path: str | Path) -> Iterator[str | None]:
    """Try to hold ``path`` exclusively: yields None while held, or, when another process holds it, who that is
    ("pid 12 on host since 10:00:00"), holding nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield path.read_text().strip() or "another process"
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode())
        yield None
    finally:
        os.close(fd)


def claim_path(run_dir: str | Path, *key) -> Path:
    """RUN_DIR/claims/<key>.lock: the claim file of one unit of work (an eval setting, a tts setting), readable and
    unique (a hash of the whole key)."""
    readable = "".join(c if c.isalnum() or c in "." else "-" for c in "_".join(map(str, key)))
    return Path(run_dir) / "claims" / f"{readable[:80]}-{hashlib.sha1(repr(key).encode()).hexdigest()[:8]}.lock"


def report_held(held: list[str]) -> None:
    """One stderr line naming the units of work (with their holders) that this process left to others."""
    if held:
        print(f"scylla: {len(held)} setting(s) left to the processes measuring them: {'; '.join(held)}; "
              "re-run when they finish to check that nothing is missing", file=sys.stderr)
