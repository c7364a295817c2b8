"""Dependencies point one way: pipeline -> {train, fit, paper_figs} -> scylla (paper_figs draws fits, so it may
import fit). Read from the source with ast, so an import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "scylla": set(),
    "train": {"scylla"},
    "fit": {"scylla"},
    "paper_figs": {"scylla", "fit"},
    "pipeline": {"scylla", "train", "fit", "paper_figs"},
}


def imports_between_packages() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the modules that do it."""
    edges: dict[tuple[str, str], list[str]] = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in ALLOWED and top != package:
                        edges.setdefault((package, top), []).append(module)
    return edges


def test_no_upward_import_and_no_cycle():
    edges = imports_between_packages()
    upward = {edge: sorted(set(mods)) for edge, mods in edges.items() if edge[1] not in ALLOWED[edge[0]]}
    assert not upward, f"imports against the layers (importer, imported): {upward}"
    assert ("pipeline", "scylla") in edges and ("train", "scylla") in edges  # the walk sees real imports


def test_the_library_imports_no_other_layer():
    assert not [edge for edge in imports_between_packages() if edge[0] == "scylla"]
