"""A Scylla configuration (written by `scylla select`, pipeline/select.py): an eval config whose ``selection``
section maps each batch size to the chosen draft (``draft``: a draft spec, or ``none`` for plain decoding), its
``draft_shape`` and its prediction. `load_selection` is the one reader that `scylla generate --config`, the figures
and the tables share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scylla.config import Config, read_yaml
from scylla.errors import ConfigError
from scylla.records import method_as_read, method_as_stored


@dataclass
class SelectionEntry(Config):
    """The choice at one batch size: ``draft`` (a draft spec; ``none``: plain decoding, where even the best
    draft's predicted speed-up is not above 1 at its lower 95% bound; None: no draft was trained for it) and
    ``draft_shape``. `scylla select` also writes the chosen candidate's prediction (pipeline/select.py Candidate)
    and ``best_draft``, the trained draft folder."""

    draft_shape: str
    draft: str | None = None
    best_draft: str | None = None
    batch_size: int | None = None
    draft_layers: int | None = None
    draft_width: int | None = None
    train_tokens: int | None = None
    predicted_mat: float | None = None
    predicted_mat_ci95: tuple[float, float] | None = None
    step_cost: float | None = None
    predicted_speedup: float | None = None
    predicted_speedup_ci95: tuple[float, float] | None = None
    extrapolated: bool | None = None
    dtype: str | None = None  # the draft's and target's (None: configurations written before dtypes were chosen)
    plain_dtype: str | None = None  # plain decoding's: where the choice is plain decoding, run it in this dtype


def _paths(config: dict, convert) -> dict:
    """``config`` with ``convert`` applied to its run_dir and every draft spec (drafts, each selection's draft and
    best_draft)."""
    out = dict(config, run_dir=convert(config["run_dir"], is_folder=True)) if "run_dir" in config else dict(config)
    if isinstance(out.get("drafts"), list):
        out["drafts"] = [convert(spec) for spec in out["drafts"]]
    if isinstance(out.get("selection"), dict):
        out["selection"] = {b: {**e, **{k: convert(e[k]) for k in ("draft", "best_draft") if e.get(k)}}
                            if isinstance(e, dict) else e for b, e in out["selection"].items()}
    return out


def config_as_stored(config: dict, path: str | Path) -> dict:
    """A Scylla configuration as written at ``path``: its run folder and draft folders relative to the file's own
    folder, so the run folder holding it can be copied or moved whole."""
    home = os.path.abspath(Path(path).parent)

    def convert(value: str, is_folder: bool = False) -> str:
        return os.path.relpath(os.path.abspath(value), home) if is_folder else method_as_stored(value, home)

    return _paths(config, convert)


def config_as_read(config: dict, path: str | Path) -> dict:
    """The inverse of ``config_as_stored``: paths as the working directory sees them. A path written relative to
    the working directory by an older version is kept when it exists and the file-relative one does not."""
    home = Path(path).parent

    def convert(value: str, is_folder: bool = False) -> str:
        if not is_folder:
            return method_as_read(value, home)
        mine = home / value
        return os.path.relpath(os.path.abspath(mine)) if mine.exists() or not Path(value).exists() else value

    return _paths(config, convert)


def read_scylla_config(path: str | Path) -> dict:
    """The Scylla configuration at ``path`` (``config_as_read``); a plain eval config is returned as it is."""
    raw = read_yaml(path)
    return config_as_read(raw, path) if "selection" in raw else raw


def load_selection(path: str | Path) -> dict[int, SelectionEntry]:
    """batch size -> selection entry of the Scylla configuration at ``path``; one ConfigError line otherwise."""
    raw = read_scylla_config(path)
    selection = raw.get("selection")
    if not isinstance(selection, dict) or not selection:
        raise ConfigError(f"{path}: selection: missing: this is not a Scylla configuration (write one with scylla "
                          "select)")
    out = {}
    for b, entry in selection.items():
        Config.require(str(b).isdigit(), f"{path}: selection", f"keys are batch sizes, got {b!r}")
        out[int(b)] = SelectionEntry.from_dict(entry, str(path), f"selection: {b}: ")
    return out


def entry_for(selection: dict[int, SelectionEntry], batch_size: int) -> SelectionEntry:
    """The entry for a batch size: the nearest chosen batch size at or below it, else the smallest."""
    below = [b for b in selection if b <= batch_size]
    return selection[max(below) if below else min(selection)]
