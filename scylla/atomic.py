"""No half-written outputs: files and folders are built under a temporary name beside their target, then renamed.

No surprises either: a folder is replaced only if this kind of output wrote it (its MARKER says so) or it is empty;
``force`` replaces another, but never one holding records, the current folder or one above it, or a source.
Files and folders get the usual permissions (the umask's), not tempfile's private ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from scylla.errors import InputError
from scylla.records import RECORDS_FILE

MARKER = ".scylla-output"  # in every folder atomic_folder writes; its text names the kind of output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; when the block succeeds it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_replaceable(path: str | os.PathLike, kind: str, force: bool = False,
                      sources: Iterable[str | os.PathLike] = ()) -> None:
    """Raise InputError (one line) unless an output folder of ``kind`` may be written at ``path``: it is missing or
    empty, or an earlier output of the same kind (its MARKER), or ``force`` is given. Never, even forced: the
    current folder or one above it, a folder holding records (records.jsonl), a source or a folder holding one."""
    path = Path(path)
    if not path.exists():
        return
    where = path.resolve()
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise InputError(f"{path} is the current folder or one above it: give a new folder for the {kind}")
    for source in sources:
        source = Path(source).resolve()
        if where == source or where in source.parents:
            raise InputError(f"{path} is {'' if where == source else 'a folder holding '}the source {source}: give "
                             f"another folder for the {kind}")
    if not path.is_dir():
        raise InputError(f"{path} is a file: give a folder path for the {kind}")
    if next(path.rglob(RECORDS_FILE), None) is not None:
        raise InputError(f"{path} holds records ({RECORDS_FILE}), which a {kind} never replaces: give another folder")
    marker = path / MARKER
    ours = marker.is_file() and marker.read_text().strip() == kind
    if not (ours or force or not any(path.iterdir())):
        raise InputError(f"{path} is not empty and is no {kind} scylla wrote: give a new or empty folder, or --force "
                         "to replace what it holds")


@contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = True, kind: str = "draft", force: bool = False
                  ) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds it becomes ``path``. An existing folder is
    swapped out (replace=True: only where check_replaceable allows, checked before the block runs; the new folder
    is marked as a ``kind`` by MARKER) or kept, the new one dropped (replace=False: a concurrent builder won)."""
    path = Path(path)
    if replace:
        check_replaceable(path, kind, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if replace:
            (tmp / MARKER).write_text(kind + "\n")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private
        for file in tmp.rglob("*"):
            if file.is_file() and not file.stat().st_mode & 0o044:  # private, as safetensors writes its files
                os.chmod(file, 0o666 & ~_umask())
        if path.exists() and replace:
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        elif not path.exists():
            try:
                os.replace(tmp, path)
            except OSError:
                if not path.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """JSON (indented) written through a temporary file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
