"""A Scylla configuration (written by `scylla select`, pipeline/select.py): an eval config whose ``selection``
section maps each batch size to the chosen draft (``draft``: a draft spec, or ``none`` for plain decoding), its
``draft_shape`` and its prediction. `load_selection` is the one reader that `scylla generate --config`, the figures
and the tables share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scylla.config import Config, read_yaml
from scylla.errors import ConfigError


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
    train_tokens: int | None = None
    predicted_mat: float | None = None
    predicted_mat_ci95: tuple[float, float] | None = None
    step_cost: float | None = None
    predicted_speedup: float | None = None
    predicted_speedup_ci95: tuple[float, float] | None = None
    extrapolated: bool | None = None


def load_selection(path: str | Path) -> dict[int, SelectionEntry]:
    """batch size -> selection entry of the Scylla configuration at ``path``; one ConfigError line otherwise."""
    raw = read_yaml(path)
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
