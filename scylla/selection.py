"""Reading a Scylla configuration (written by `scylla select`, pipeline/select.py): its ``selection`` section maps
each batch size to the chosen draft (``draft``: a draft spec, or ``none`` for plain decoding) and ``draft_shape``.
The one reader that `scylla generate --config`, the figures and the tables share."""

from __future__ import annotations

from pathlib import Path

import yaml

from scylla.errors import ScyllaError


def load_selection(path: str | Path) -> dict[int, dict]:
    """batch size -> selection entry of the Scylla configuration at ``path``; one clear ScyllaError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ScyllaError(f"Scylla configuration {path} does not exist (write one with scylla select)")
    try:
        selection = yaml.safe_load(path.read_text())["selection"]
        return {int(b): entry for b, entry in selection.items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        raise ScyllaError(f"{path} is not a Scylla configuration (write one with scylla select)") from None


def entry_for(selection: dict[int, dict], batch_size: int) -> dict:
    """The entry for a batch size: the nearest chosen batch size at or below it, else the smallest."""
    below = [b for b in selection if b <= batch_size]
    return selection[max(below) if below else min(selection)]
