"""Table 5: throughput of the Scylla configuration against the EAGLE-2-style baseline and the untrained drafters per
task, temperature and batch size, from online eval records alone, as markdown and LaTeX (booktabs).

Also the rules naming the drafts that the paper's comparisons (this table, tasks.py) put side by side:
- Scylla: the drafts of a Scylla configuration's ``selection`` (pipeline/select.py), or given; by default the trained
  draft with the highest mean MAT (on the select prompt set where it has records);
- the EAGLE-2-style baseline: given, or by default the 1-layer trained draft evaluated with a tree (else any 1-layer
  trained draft), the one trained on the most tokens;
- every method at its own best shape (``own_best``): the shape is chosen on the select prompt set and the number
  reported is the confirm set's, so no method's figure is the maximum of its own noisy measurements (the winner's
  curse); where a method lacks either set, it is chosen and reported on the same records and marked in-sample.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Callable

from paper_figs.laws import LABELS
from scylla.atomic import atomic_path
from scylla.selection import entry_for, load_selection

UNTRAINED = ("none", "prompt-lookup", "truncated", "suffix", "hybrid")  # drafter kinds without training
TABLE_NAME = "table5_throughput"
TEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {"\\": "\\textbackslash{}", "~": "\\textasciitilde{}",
                                                "^": "\\textasciicircum{}"}
HEADER = ("task", "T", "batch size", "method", "shape", "MAT", "tokens/s", "speed-up")
CHOSEN_ON, REPORTED_ON = "select", "confirm"  # scylla.data.prompt_sets: shapes chosen on one, reported on the other
IN_SAMPLE_MARK = "†"


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


def own_best(records: list[dict], score: Callable[[dict], float | None]) -> tuple[list[dict], bool]:
    """A method's records at its own best (method, shape): the pair with the highest mean ``score`` on the select
    prompt set, reported by that pair's records on the confirm set. Returns (records, out_of_sample). With one pair
    there is nothing to choose: its confirm records where it has some. Where the select or the confirm set lacks the
    records, the pair is chosen and reported on all of ``records`` (out_of_sample False). ([], False) when no record
    scores."""
    scored = [r for r in records if score(r) is not None]
    pairs = {(r["method"], r.get("draft_shape")) for r in scored}
    on = {name: [r for r in scored if r.get("prompt_set") == name] for name in (CHOSEN_ON, REPORTED_ON)}

    def best(pool: list[dict]) -> tuple:
        by_pair = defaultdict(list)
        for r in pool:
            by_pair[r["method"], r.get("draft_shape")].append(score(r))
        return max(by_pair, key=lambda k: (mean(by_pair[k]), str(k)))

    def of(pair: tuple, pool: list[dict]) -> list[dict]:
        return [r for r in pool if (r["method"], r.get("draft_shape")) == pair]

    if len(pairs) == 1 and on[REPORTED_ON]:
        return on[REPORTED_ON], True
    if on[CHOSEN_ON] and on[REPORTED_ON] and of(pair := best(on[CHOSEN_ON]), on[REPORTED_ON]):
        return of(pair, on[REPORTED_ON]), True
    return (of(best(scored), scored), len(pairs) == 1) if scored else ([], False)


def draft_label(record: dict) -> str:
    """'eagle 2-layer, 262k tokens' for a trained draft, 'plain decoding', else its method."""
    if not is_trained(record):
        return "plain decoding" if record["method"] == "none" else record["method"]
    tokens = record["train_tokens"]
    count = f"{tokens / 1e6:.3g}M" if tokens >= 1e6 else f"{tokens / 1e3:.3g}k" if tokens >= 1e3 else str(tokens)
    return f"{record['drafter_type']} {record['draft_layers']}-layer, {count} tokens"


def default_scylla_methods(records: list[dict], scylla_config: str | Path | None = None) -> set[str]:
    """The configuration's selected drafts (its best draft where it chose plain decoding), else the trained draft
    with the highest mean MAT in ``records`` (in those on the select prompt set where there are any)."""
    if scylla_config:
        chosen = {e.draft if e.draft not in (None, "none") else e.best_draft
                  for e in load_selection(scylla_config).values()}
        return chosen - {None}
    mats = defaultdict(list)
    trained = [r for r in records if r["kind"] == "eval" and is_trained(r) and r.get("mean_accepted_length") is not None]
    for r in [r for r in trained if r.get("prompt_set") == CHOSEN_ON] or trained:
        mats[r["method"]].append(r["mean_accepted_length"])
    return {max(mats, key=lambda m: (mean(mats[m]), m))} if mats else set()


def default_baseline(records: list[dict]) -> str | None:
    """The EAGLE-2-style baseline's method: the 1-layer trained draft evaluated with a tree (else any 1-layer
    trained draft) trained on the most tokens, one measured on the confirm prompt set if any is; None when there is
    none."""
    ones = [r for r in records if r["kind"] == "eval" and is_trained(r) and r["draft_layers"] == 1]
    pool = [r for r in ones if r.get("tree_total_tokens") is not None] or ones
    confirmed = {r["method"] for r in pool if r.get("prompt_set") == REPORTED_ON}
    return max(pool, key=lambda r: (r["train_tokens"], r["method"] in confirmed, r["method"]))["method"] if pool else None


def compared(records: list[dict], scylla_methods: set[str], baseline: str | None,
             baseline_shape: str | None = None) -> list[tuple[str, list[dict]]]:
    """(name, records) of each method the paper compares: Scylla, the EAGLE-2-style baseline (at ``baseline_shape``
    only, when given) and every untrained drafter but plain decoding (by its method), each with all its shapes."""
    base = [r for r in records if r["method"] == baseline and baseline_shape in (None, r.get("draft_shape"))]
    found = [("Scylla", [r for r in records if r["method"] in scylla_methods]), ("EAGLE-2-style", base)]
    untrained = sorted({r["method"] for r in records if r["method"] != "none" and not is_trained(r)})
    return found + [(m, [r for r in records if r["method"] == m]) for m in untrained]


def table_rows(records: list[dict], scylla_config: str | Path | None = None, scylla_methods: set[str] | None = None,
               baseline: str | None = None, baseline_shape: str | None = None) -> list[dict]:
    """One row per method (Scylla, the baseline, untrained drafters) and (task, temperature, batch size) that has
    timed records; each method at its own best shape there (``own_best`` on the speed-up: chosen on the select
    prompt set, reported on the confirm set).

    Scylla's row: the configuration's selected draft and shape for that batch size when ``scylla_config`` is given
    (and ``scylla_methods`` is not), else ``scylla_methods`` (default: the trained draft with the highest mean MAT).
    The baseline's row: ``baseline`` (default ``default_baseline``), at ``baseline_shape`` only when given.
    """
    timed = timed_evals(records)
    selection = load_selection(scylla_config) if scylla_config and not scylla_methods else None
    methods = set() if selection else scylla_methods or default_scylla_methods(timed)
    baseline = baseline or default_baseline(timed)
    rows = []
    for task, temp, batch in sorted({(r["task"], r["temperature"], r["batch_size"]) for r in timed}):
        here = [r for r in timed if (r["task"], r["temperature"], r["batch_size"]) == (task, temp, batch)]
        plain = defaultdict(list)  # tokens/s of plain decoding per prompt set, for records without a speed-up
        for r in here:
            if r["method"] == "none":
                plain[r.get("prompt_set")].append(r["tokens_per_second"])
        groups = compared(here, methods, baseline, baseline_shape)
        if selection:
            entry = entry_for(selection, batch)
            use_plain = entry.draft == "none"  # the configuration chose plain decoding at this batch size
            chosen = ("none", "chain:0") if use_plain else (entry.draft, entry.draft_shape)
            groups[0] = ("Scylla", [r for r in here if (r["method"], r.get("draft_shape")) == chosen])

        def up(r: dict) -> float | None:
            at = plain.get(r.get("prompt_set"))
            return speedup(r, mean(at) if at else None)

        for name, group in groups:
            found, out_of_sample = own_best(group, up)
            if found:
                rows.append(dict(task=task, temperature=temp, batch_size=batch, name=name, record=found[0],
                                 speedup=up(found[0]), out_of_sample=out_of_sample))
    return rows


def _setting(row: dict) -> tuple:
    return row["task"], row["temperature"], row["batch_size"]


def _cells(row: dict, best: bool, tex: bool) -> list[str]:
    r = row["record"]
    label = draft_label(r)
    method = row["name"] if row["name"] == label else f"{row['name']} ({label})"
    shape, mark = r.get("draft_shape") or "n/a", "" if row["out_of_sample"] else IN_SAMPLE_MARK
    up = "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}" + ("$\\times$" if tex else "×")
    if tex:
        method, shape = _tex(method), f"\\texttt{{{_tex(shape)}}}" + ("$^\\dagger$" if mark else "")
        up = f"\\textbf{{{up}}}" if best else up
    else:
        shape, up = f"`{shape}`{mark}", f"**{up}**" if best else up
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
    caption = ("Throughput of the Scylla configuration, the EAGLE-2-style baseline (1-layer head) and the untrained "
               f"drafters per batch size: {LABELS['mean_accepted_length']}, new tokens per second, speed-up over plain "
               f"decoding; each method at its own best shape, chosen on the {CHOSEN_ON} prompt set and reported on the "
               f"{REPORTED_ON} set")
    in_sample = [row for row in rows if not row["out_of_sample"]]
    caption += (f" ({IN_SAMPLE_MARK}: chosen and reported on the same records, {len(in_sample)} of {len(rows)} "
                "rows; an upward-biased maximum)." if in_sample else ".")
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
