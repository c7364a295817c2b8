"""Run records: one flat JSON object per line in ``RUN_DIR/records.jsonl`` (docs/records.md).

Every stage appends here (a training checkpoint, an evaluation, a test-time-scaling run) and the fitting stage reads
it back. Records are validated on write and on read; appends are one whole line per ``os.write``, fsynced, under a
file lock, and a record whose key is already in the file is not written again, so a killed sweep can be re-run.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from scylla.errors import InputError, ScyllaError

SCHEMA_VERSION = 1
KINDS = ("train", "eval", "tts")
RECORDS_FILE = "records.jsonl"
# Required fields and their types; "count" is an int >= 0.
REQUIRED = {
    "schema_version": "int",
    "run_id": "str",
    "sweep": "str",
    "kind": "str",
    "target": "str",
    "drafter_type": "str",
    "draft_layers": "count",
    "draft_width": "count",
    "draft_params": "count",
    "draft_params_with_embeddings": "count",
    "train_tokens": "count",
    "data": "str",
    "seed": "int",
    "git_commit": "str",
    "time": "str",
}
# part of the key of eval and tts records (None when absent)
EVAL_KEY_FIELDS = ("task", "prompt_set", "temperature", "batch_size", "method", "draft_shape", "mode", "dtype")
TTS_KEY_FIELDS = EVAL_KEY_FIELDS + ("paradigm",)  # tts records: also the test-time-scaling protocol
_ALLOWED = "numbers, strings, bools, null, lists of those or flat dicts of those"


@functools.lru_cache(maxsize=None)
def _git_commit() -> str:
    """HEAD of the git checkout holding the scylla package, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_record(kind: str, **fields) -> dict:
    """A record of ``kind`` with schema_version, time (UTC now) and git_commit filled in unless given.

    Not validated here: ``append_record`` validates before writing.
    """
    record = {"schema_version": SCHEMA_VERSION, "kind": kind, "time": _utc_now(), "git_commit": _git_commit()}
    record.update(fields)
    return record


def _show(value) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _check_value(name: str, value) -> None:
    """A metric or setting: a JSON scalar (finite numbers only), a list of them, or a flat dict of them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(
            f"record field '{name}' is {value}, which JSON cannot hold; write None (null) for a missing value"
        )
    if _is_scalar(value):
        return
    if isinstance(value, list):
        items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise InputError(f"record field '{name}' has a non-string key {_show(k)}; use string keys")
        items = [(f"{name}.{k}", v) for k, v in value.items()]
    else:
        hint = "use a list" if isinstance(value, tuple) else "convert it (e.g. float(x), int(x), str(x))"
        raise InputError(f"record field '{name}' is {_show(value)}; records hold {_ALLOWED}: {hint}")
    for item_name, item in items:
        if not _is_scalar(item):
            raise InputError(
                f"record field '{item_name}' is {_show(item)}; records are flat and hold {_ALLOWED}: "
                "flatten it into separate fields"
            )
        _check_value(item_name, item)  # a scalar: rejects nan and inf


def _check_time(value: str) -> None:
    try:
        stamp = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        stamp = None
    if stamp is None or stamp.utcoffset() is None or stamp.utcoffset().total_seconds() != 0:
        raise InputError(
            f"record field 'time' must be an ISO 8601 UTC time such as '2025-01-31T12:00:00Z', got {value!r}; "
            "leave it out and new_record fills it in"
        )


def validate_record(record: dict) -> dict:
    """Check a record against the schema (docs/records.md); return it, or raise a one-line ScyllaError."""
    if not isinstance(record, dict):
        raise InputError(f"a record must be a dict (JSON object), got {_show(record)}")
    version = record.get("schema_version")
    if _is_int(version) and version > SCHEMA_VERSION:
        raise InputError(
            f"record has schema_version {version} but this scylla reads up to {SCHEMA_VERSION}; upgrade scylla"
        )
    missing = [name for name in REQUIRED if name not in record]
    if missing:
        raise InputError(
            f"record is missing required field(s) {', '.join(missing)}; pass them to new_record (docs/records.md)"
        )
    for name, value in record.items():
        if not isinstance(name, str):
            raise InputError(f"record has a non-string field name {_show(name)}; use string names")
        kind = REQUIRED.get(name)
        if kind == "str" and not isinstance(value, str):
            raise InputError(f"record field '{name}' must be a str, got {_show(value)}; pass a string")
        if kind == "int" and not _is_int(value):
            raise InputError(f"record field '{name}' must be an int, got {_show(value)}; pass a plain int")
        if kind == "count" and not (_is_int(value) and value >= 0):
            raise InputError(f"record field '{name}' must be an int >= 0, got {_show(value)}; pass a plain int >= 0")
        if kind is None:
            _check_value(name, value)
    if record["schema_version"] < 1:
        raise InputError(f"record field 'schema_version' must be >= 1, got {record['schema_version']}")
    if not record["run_id"]:
        raise InputError("record field 'run_id' is empty; give every run a non-empty id")
    if record["kind"] not in KINDS:
        raise InputError(f"record field 'kind' must be one of {', '.join(KINDS)}, got {record['kind']!r}")
    for name in _key_fields(record["kind"]):
        if not _is_scalar(record.get(name)):
            raise InputError(
                f"record field '{name}' is part of the record key and must be a number, string, bool or null, "
                f"got {_show(record[name])}"
            )
    _check_time(record["time"])
    return record


def _key_fields(kind: str) -> tuple[str, ...]:
    return {"train": (), "tts": TTS_KEY_FIELDS}.get(kind, EVAL_KEY_FIELDS)


def record_key(record: dict) -> tuple:
    """What makes a record unique: (kind, run_id, train_tokens), plus task, prompt_set, temperature, batch_size,
    method, draft_shape, mode, dtype (None when absent) for eval and tts records, and paradigm for tts records.
    Records written before the dtype was recorded were measured in that device's default of the time (float32 on
    CPU, bfloat16 on CUDA)."""
    key = (record["kind"], record["run_id"], record["train_tokens"])
    return key + tuple(_key_value(record, name) for name in _key_fields(record["kind"]))


def _key_value(record: dict, name: str):
    value = record.get(name)
    if name == "dtype" and value is None:
        return "bfloat16" if str(record.get("device", "cpu")).startswith("cuda") else "float32"
    return value


def records_path(path_or_run_dir: str | Path) -> Path:
    """``RUN_DIR/records.jsonl``, or the path itself when it names a .jsonl file."""
    path = Path(path_or_run_dir)
    return path if path.suffix == ".jsonl" else path / RECORDS_FILE


@contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold a lock on the sidecar ``records.jsonl.lock``: exclusive to append, shared to read.

    A reader takes the lock only if the lock file exists (read-only run directories still read).
    """
    lock = path.with_name(path.name + ".lock")
    if exclusive:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _parse(path: Path) -> list[dict]:
    """Every record in ``path``, validated; the first bad line raises ``PATH:LINE: what is wrong``."""
    if not path.is_file():
        raise InputError(f"no records yet: {path} does not exist; run a stage that writes records there first")
    lines = path.read_bytes().split(b"\n")
    complete = lines.pop() == b""  # the text after the last newline: empty unless a write was cut off
    records, seen = [], {}
    for number, raw in enumerate(lines if complete else lines + [None], start=1):
        try:
            if raw is None:
                raise InputError(
                    "last line has no newline: a write was cut off; delete that line and re-run the stage that wrote it"
                )
            if not raw.strip():
                raise InputError("empty line; delete it")
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"not valid JSON ({err}); fix or delete the line") from None
            key = record_key(validate_record(record))
            if key in seen:
                raise InputError(f"same key as line {seen[key]} {key}; delete one of the two lines")
        except ScyllaError as err:
            raise InputError(f"{path}:{number}: {err}") from None
        seen[key] = number
        records.append(record)
    return records


def _matches(value, wanted) -> bool:
    """Equal, equal as text ("true" matches True, "0" matches 0), or equal as numbers ("0" matches 0.0)."""

    def text(v):
        return v if isinstance(v, str) else json.dumps(v)

    def number(v):
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            return None
        try:
            return float(v)
        except ValueError:
            return None

    if value == wanted or text(value) == text(wanted):
        return True
    a, b = number(value), number(wanted)
    return a is not None and b is not None and a == b


def read_records(path_or_run_dir: str | Path, kind: str | None = None, where: dict | None = None) -> list[dict]:
    """The records of a run directory (or a .jsonl file), in file order, optionally of one ``kind`` and with
    fields equal to those in ``where``."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown record kind {kind!r}; use one of {', '.join(KINDS)}")
    path = records_path(path_or_run_dir)
    with _locked(path, exclusive=False):
        records = _parse(path)
    for r in records:
        if "method" in r:
            r["method"] = method_as_read(r["method"], path.parent)
    return [
        r
        for r in records
        if (kind is None or r["kind"] == kind)
        and all(name in r and _matches(r[name], wanted) for name, wanted in (where or {}).items())
    ]


def append_record(run_dir: str | Path, record: dict) -> bool:
    """Validate ``record`` and append it to ``RUN_DIR/records.jsonl`` (one write, fsynced).

    Returns False, writing nothing, when a record with the same key (``record_key``) is already there.
    """
    validate_record(record)
    path = records_path(run_dir)
    if "method" in record:
        record = {**record, "method": method_as_stored(record["method"], path.parent)}
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = record_key(record)
    with _locked(path, exclusive=True):
        is_new = not path.exists()
        if not is_new and any(record_key(r) == key for r in _parse(path)):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if is_new:  # make the new directory entry durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    if written != len(line):
        raise OSError(f"{path}: wrote {written} of {len(line)} bytes (disk full?); delete the partial last line")
    return True


def checkpoint_folder(run_dir: str | Path, checkpoint: str) -> Path | None:
    """The draft folder a train record's ``checkpoint`` names, or None if none exists. Records store it relative to
    the run directory (``jobs/RUN_ID/tokens-N``), so a run folder copied or moved anywhere finds its own drafts;
    older records stored the path as typed at launch (``runs/demo/jobs/...``, or absolute), which is resolved by its
    part from ``jobs`` on, inside run_dir, before it is taken as it is."""
    path, run_dir = Path(checkpoint), Path(run_dir)
    tries = [run_dir / path] if not path.is_absolute() else []
    if "jobs" in path.parts:
        tries.append(run_dir.joinpath(*path.parts[len(path.parts) - path.parts[::-1].index("jobs") - 1:]))
    tries.append(path)
    return next((Path(os.path.normpath(t)) for t in tries if checkpoint and os.path.isdir(os.path.normpath(t))), None)


def _split_draft(method: str) -> tuple[str, str] | None:
    """(the spec's head, FOLDER) of a method naming a draft folder (``draft:FOLDER``, ``hybrid:draft:FOLDER``)."""
    head, sep, folder = method.partition("draft:") if isinstance(method, str) else ("", "", "")
    return (head + sep, folder) if sep and folder and head in ("", "hybrid:") else None


def method_as_read(method: str, run_dir: str | Path = ".") -> str:
    """A record's ``method`` as the code compares and loads it: a draft folder named relative to ``run_dir`` (how
    records store it, ``method_as_stored``; or, in older records, as typed at launch) becomes that folder's path
    relative to the working directory (absolute when outside it), normalised, so the same draft has one name
    whichever run folder's records name it, and a copied or moved run folder names its own drafts. Other methods
    (and folders that no longer exist, or hub ids) are returned as they are. ``method_as_read(spec)`` normalises a
    spec typed on the command line."""
    split = _split_draft(method)
    folder = checkpoint_folder(run_dir, split[1]) if split else None
    if folder is None:
        return method
    absolute = os.path.abspath(folder)
    relative = os.path.relpath(absolute)
    return split[0] + (absolute if relative.startswith("..") else relative)


def method_as_stored(method: str, run_dir: str | Path) -> str:
    """How a record in ``run_dir`` stores ``method``: a local draft folder relative to run_dir (``jobs/ID/tokens-N``
    for its own drafts, ``../jobs/...`` from its check folder), so the folder can be copied or moved whole."""
    split = _split_draft(method)
    if split is None or not Path(split[1]).is_dir():
        return method
    return split[0] + os.path.relpath(os.path.abspath(split[1]), os.path.abspath(run_dir))


def find_checkpoints(run_dir: str | Path, where: dict | None = None) -> list[dict]:
    """The train records of ``run_dir`` (with fields equal to those in ``where``) whose draft folder exists, with
    ``checkpoint`` set to that folder (``checkpoint_folder``), in file order; [] when run_dir has no records file.
    The one place that maps train records to trained drafts."""
    if not records_path(run_dir).is_file():
        return []
    found = []
    for r in read_records(run_dir, kind="train", where=where):
        folder = checkpoint_folder(run_dir, r.get("checkpoint", ""))
        if folder is not None:
            found.append({**r, "checkpoint": str(folder)})
    return found
