"""Table 5: throughput of the Scylla configuration against the EAGLE-2-style baseline per task, temperature and
batch size, from online eval records alone, as markdown and LaTeX (booktabs).

Also the rules naming the drafts that the paper's comparisons (this table, tasks.py) put side by side:
- Scylla: the drafts of a Scylla configuration's ``selection`` (pipeline/select.py), or given; by default the trained
  draft with the highest mean MAT;
- the EAGLE-2-style baseline: given, or by default the 1-layer trained draft evaluated with a tree (else any 1-layer
  trained draft), the one trained on the most tokens, at one fixed shape: EAGLE-2's default tree when recorded,
  else its tree (else shape) with the most verified tokens per step.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

from paper_figs.laws import LABELS
from scylla.atomic import atomic_path
from scylla.drafters.tree import TreeShape
from scylla.selection import entry_for, load_selection

UNTRAINED = ("none", "prompt-lookup", "truncated", "suffix", "hybrid")  # drafter kinds without training
DEFAULT_TREE = f"tree:{TreeShape().label()}"
TABLE_NAME = "table5_throughput"
TEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {"\\": "\\textbackslash{}", "~": "\\textasciitilde{}",
                                                "^": "\\textasciicircum{}"}
HEADER = ("task", "T", "batch size", "method", "shape", "MAT", "tokens/s", "speed-up")


def is_trained(record: dict) -> bool:
    return record["drafter_type"].split(":")[0] not in UNTRAINED


def width(record: dict) -> int | None:
    """Tokens verified per step: a tree's total_tokens, a chain's length (None when the record has neither)."""
    tree = record.get("tree_total_tokens")
    return tree if tree is not None else record.get("num_draft_tokens")


def timed_evals(records: list[dict]) -> list[dict]:
    """Eval records with a measured throughput (replayed ones have none)."""
    return [r for r in records
            if r["kind"] == "eval" and r.get("mode") != "replay" and r.get("tokens_per_second") is not None]


def speedup(record: dict, plain_tps: float | None) -> float | None:
    """The recorded speed-up over plain decoding, else tokens/s over ``plain_tps`` (None without either)."""
    if record.get("speedup") is not None:
        return record["speedup"]
    return record["tokens_per_second"] / plain_tps if plain_tps else None


def draft_label(record: dict) -> str:
    """'eagle 2-layer, 262k tokens' for a trained draft, else its method."""
    if not is_trained(record):
        return record["method"]
    tokens = record["train_tokens"]
    count = f"{tokens / 1e6:.3g}M" if tokens >= 1e6 else f"{tokens / 1e3:.3g}k" if tokens >= 1e3 else str(tokens)
    return f"{record['drafter_type']} {record['draft_layers']}-layer, {count} tokens"


def default_scylla_methods(records: list[dict], scylla_config: str | Path | None = None) -> set[str]:
    """The configuration's selected drafts, else the trained draft with the highest mean MAT in ``records``."""
    if scylla_config:
        return {e.draft for e in load_selection(scylla_config).values() if e.draft not in (None, "none")}
    mats = defaultdict(list)
    for r in records:
        if r["kind"] == "eval" and is_trained(r) and r.get("mean_accepted_length") is not None:
            mats[r["method"]].append(r["mean_accepted_length"])
    return {max(mats, key=lambda m: (mean(mats[m]), m))} if mats else set()


def default_baseline(records: list[dict]) -> str | None:
    """The EAGLE-2-style baseline's method: the 1-layer trained draft evaluated with a tree (else any 1-layer
    trained draft) trained on the most tokens; None when there is none."""
    ones = [r for r in records if r["kind"] == "eval" and is_trained(r) and r["draft_layers"] == 1]
    pool = [r for r in ones if r.get("tree_total_tokens") is not None] or ones
    return max(pool, key=lambda r: (r["train_tokens"], r["method"]))["method"] if pool else None


def default_baseline_shape(records: list[dict], method: str) -> str | None:
    """The baseline's one shape: EAGLE-2's default tree if recorded, else its widest tree, else its widest shape."""
    shapes = {r["draft_shape"]: width(r) for r in records
              if r.get("method") == method and r.get("draft_shape") and width(r) is not None}
    if DEFAULT_TREE in shapes:
        return DEFAULT_TREE
    pool = {s: w for s, w in shapes.items() if s.startswith("tree:")} or shapes
    return max(pool, key=lambda s: (pool[s], s)) if pool else None


def table_rows(records: list[dict], scylla_config: str | Path | None = None, scylla_methods: set[str] | None = None,
               baseline: str | None = None, baseline_shape: str | None = None) -> list[dict]:
    """One row per draft (Scylla, baseline) and (task, temperature, batch size) that has timed records.

    Scylla's row: the configuration's selected draft and shape for that batch size when ``scylla_config`` is given
    (and ``scylla_methods`` is not), else the fastest record of ``scylla_methods`` there (default: the trained draft
    with the highest mean MAT). The baseline's row: ``baseline`` (default ``default_baseline``) at
    ``baseline_shape`` (default ``default_baseline_shape``).
    """
    timed = timed_evals(records)
    selection = load_selection(scylla_config) if scylla_config and not scylla_methods else None
    methods = set() if selection else scylla_methods or default_scylla_methods(timed)
    baseline = baseline or default_baseline(timed)
    baseline_shape = baseline_shape or (baseline and default_baseline_shape(timed, baseline))
    rows = []
    for task, temp, batch in sorted({(r["task"], r["temperature"], r["batch_size"]) for r in timed}):
        here = [r for r in timed if (r["task"], r["temperature"], r["batch_size"]) == (task, temp, batch)]
        plain = [r["tokens_per_second"] for r in here if r["method"] == "none"]
        if selection:
            entry = entry_for(selection, batch)
            use_plain = entry.draft == "none"  # the configuration chose plain decoding at this batch size
            chosen = ("none", "chain:0") if use_plain else (entry.draft, entry.draft_shape)
            scylla = [r for r in here if (r["method"], r.get("draft_shape")) == chosen]
        else:
            scylla = [r for r in here if r["method"] in methods]
        base = [r for r in here if (r["method"], r.get("draft_shape")) == (baseline, baseline_shape)]
        for name, found in (("Scylla", scylla), ("EAGLE-2-style", base)):
            if found:
                best = max(found, key=lambda r: r["tokens_per_second"])
                rows.append(dict(task=task, temperature=temp, batch_size=batch, name=name, record=best,
                                 speedup=speedup(best, mean(plain) if plain else None)))
    return rows


def _setting(row: dict) -> tuple:
    return row["task"], row["temperature"], row["batch_size"]


def _cells(row: dict, best: bool, tex: bool) -> list[str]:
    r = row["record"]
    method, shape = f"{row['name']} ({draft_label(r)})", r.get("draft_shape") or "n/a"
    up = "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}" + ("$\\times$" if tex else "×")
    if tex:
        method, shape = _tex(method), f"\\texttt{{{_tex(shape)}}}"
        up = f"\\textbf{{{up}}}" if best else up
    else:
        shape, up = f"`{shape}`", f"**{up}**" if best else up
    return [row["task"], f"{row['temperature']:g}", str(row["batch_size"]), method, shape,
            f"{r['mean_accepted_length']:.2f}", f"{r['tokens_per_second']:.1f}", up]


def _tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(c, c) for c in text)


def throughput_table(records: list[dict], out_dir: Path, scylla_config: str | Path | None = None,
                     scylla_methods: set[str] | None = None, baseline: str | None = None,
                     baseline_shape: str | None = None) -> str:
    """Table 5 as markdown (returned), also written atomically to ``out_dir/table5_throughput.md`` and, booktabs,
    ``.tex``; where both drafts have a row, the higher speed-up is in bold. Returns "" and writes nothing when no
    row has records."""
    rows = table_rows(records, scylla_config, scylla_methods, baseline, baseline_shape)
    if not rows:
        return ""
    ups = defaultdict(list)
    for row in rows:
        ups[_setting(row)].append(row["speedup"] or 0.0)
    marks = [len(ups[_setting(row)]) > 1 and row["speedup"] == max(ups[_setting(row)]) for row in rows]
    caption = ("Throughput of the Scylla configuration and the EAGLE-2-style baseline (1-layer head, tree) per batch "
               f"size: {LABELS['mean_accepted_length']}, new tokens per second, speed-up over plain decoding.")
    md = [caption, "", f"| {' | '.join(HEADER)} |", "|---|---|---:|---|---|---:|---:|---:|"]
    md += [f"| {' | '.join(_cells(row, best, tex=False))} |" for row, best in zip(rows, marks)]
    tex = [f"% {caption}", "\\begin{tabular}{llrllrrr}", "\\toprule",
           " & ".join(["task", "$T$", *HEADER[2:]]) + " \\\\", "\\midrule"]
    tex += [" & ".join(_cells(row, best, tex=True)) + " \\\\" for row, best in zip(rows, marks)]
    tex += ["\\bottomrule", "\\end{tabular}"]
    text = "\n".join(md) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, content in (("md", text), ("tex", "\n".join(tex) + "\n")):
        with atomic_path(out_dir / f"{TABLE_NAME}.{suffix}") as tmp:
            tmp.write_text(content)
    return text
