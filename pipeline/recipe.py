"""``scylla recipe``: for a training-token budget and a serving batch size, the head to train (width, depth, tokens),
its draft shape and dtype, from the joint law of the capacity study (fit/capacity.py) and the cost model.

Every size of the study is a candidate, in every cost table's dtype: its MAT is the joint law's at (its parameters,
the budget) with the law's 95% confidence interval, its cost per step the cost table's (scylla.costs.step_cost of a
head of that width and depth), re-based on the fastest plain decoding of all the tables (pipeline.select), so its
predicted speed-up is MAT / cost. As in ``scylla select``, the recommendation is the candidate with the highest lower
95% bound, and a draft is recommended over plain decoding only when that bound is above 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from fit.results import JointLaw
from pipeline.evaluate import parse_shape
from pipeline.select import fastest_plain, rebased_step_cost, speedup_interval, uncalibrated_note
from scylla.costs import CostTable
from scylla.drafters.eagle import serving_engines
from scylla.errors import InputError, ScyllaError


def load_capacity(path: str | Path) -> dict:
    """A ``scylla capacity --json`` file, with its joint law as a JointLaw under "law"."""
    try:
        payload = json.loads(Path(path).read_text())
        joint = dict(payload["joint"])
        joint["centre"], joint["sizes"], joint["tokens"] = (tuple(joint[k]) for k in ("centre", "sizes", "tokens"))
        joint["ci95"] = {k: tuple(v) for k, v in joint["ci95"].items()}
        payload["law"] = JointLaw(**joint)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{path} is not a capacity file: write one with scylla capacity RUN_DIR --json FILE") from None
    return payload


def law3_shape(path: str | Path, batch: int) -> str:
    """The draft shape law 3 (``scylla law3``'s law3.json) recommends at this batch size: its best shape where the
    batch size was measured, else the chain of the grid length nearest (in ln length) to its law k*(b)."""
    import math

    try:
        payload = json.loads(Path(path).read_text())
        choices = {c["batch"]: c for c in payload["choices"]}
        law = next((law for law in payload["laws"] if law["family"] == "chain"), None)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{path} is not a law-3 file: write one with scylla law3 RUN_DIR --cost TABLE") from None
    if batch in choices:
        c = choices[batch]
        return (f"{c['best']} at batch {batch}, law 3's best measured-cost shape there (tied: "
                f"{', '.join(c['tied']) or 'none'}; {payload.get('draft')}, {payload.get('prompt_set')} set)")
    if not law:
        raise InputError(f"{path} has no law of the best length and no choice at batch {batch}: measure batch {batch} "
                         "with scylla costs and re-run scylla law3")
    k = law["intercept"] + law["slope"] * math.log(batch)
    length = min(law["lengths"], key=lambda g: abs(math.log(g) - math.log(max(k, 0.5))))
    return (f"{law['family']}:{length} at batch {batch}, law 3's k*(b) = {law['intercept']:.2f} + {law['slope']:.2f} "
            f"ln b = {k:.2f} (fitted at batch sizes {', '.join(map(str, law['batches']))})")


def recipe(capacity_path: str | Path, cost_paths: list[str], tokens: int, batch: int,
           layout: str = "eagle", law3: str | Path | None = None) -> list[str]:
    """The lines ``scylla recipe`` prints: every candidate's predicted MAT and speed-up, then the recommendation (and
    with ``law3``, law 3's draft shape at this batch size)."""
    payload = load_capacity(capacity_path)
    law: JointLaw = payload["law"]
    shape_text, target_width = payload["shape"], payload.get("target_hidden_size")
    shape = parse_shape(shape_text)
    costs = [CostTable.load(p) for p in cost_paths]
    plain_dtype, plain_seconds = fastest_plain(costs, batch)
    if layout == "eagle3" and payload.get("layout", "eagle") != "eagle3":
        raise InputError(f"{capacity_path} studied {payload.get('layout', 'eagle')}-layout heads: its law says nothing "
                         "of eagle3 heads (train a capacity study with layout: eagle3 at the target's width)")
    rows, best = [], None
    for size in payload["sizes"]:
        params, width, layers = size["draft_params"], size["draft_width"], size["draft_layers"]
        mat, lo, hi = (max(1.0, v) for v in law.predict(params, tokens))
        slope_d = law.coefficients["train_tokens"] + law.coefficients["draft_params:train_tokens"] * (
            law.row(params, tokens)[1])
        for cost in costs:
            try:
                c, c_lo, c_hi = rebased_step_cost(cost, layers, width, shape, batch, plain_seconds)
            except ScyllaError:
                continue
            speed = (mat / c, *speedup_interval((mat, lo, hi), (c, c_lo, c_hi)))
            row = dict(width=width, layers=layers, params=params, dtype=cost.dtype, mat=(mat, lo, hi), speedup=speed,
                       more_tokens_help=slope_d > 0)
            rows.append(row)
            if best is None or (speed[1], speed[0]) > (best["speedup"][1], best["speedup"][0]):
                best = row
    if best is None:
        raise InputError(f"no cost table has heads of the study's sizes at batch {batch}: run scylla costs "
                         f"--batch-sizes {batch} --head-layers ... --head-width ... (scylla recipe --help)")
    lines = [f"Recipe for {tokens:,} training tokens, served at batch {batch}: {shape_text} drafts (the study's shape), "
             f"speed-ups over plain decoding in {plain_dtype}, the fastest at this batch size",
             "width x layers  params   dtype     MAT [95% CI]            speed-up [95% CI]"]
    for r in sorted(rows, key=lambda r: -r["speedup"][1]):
        m, s = r["mat"], r["speedup"]
        lines.append(f"{r['width']:>5} x {r['layers']:<6} {r['params'] / 1e6:6.2f}M  {r['dtype']:<9} {m[0]:.2f} "
                     f"[{m[1]:.2f}, {m[2]:.2f}]      {s[0]:.2f}x [{s[1]:.2f}, {s[2]:.2f}]")
    far = law.extrapolation(best["params"], tokens)
    if best["speedup"][1] > 1:
        lines.append(f"Recommended: width {best['width']} x {best['layers']} layer(s) ({best['params'] / 1e6:.2f}M "
                     f"parameters), trained on {tokens:,} tokens"
                     + ("" if best["more_tokens_help"] else " (the law gains nothing from more tokens at this size: "
                        "fewer would do)")
                     + f", served as {shape_text} in {best['dtype']}: predicted {best['speedup'][0]:.2f}x "
                     f"[{best['speedup'][1]:.2f}, {best['speedup'][2]:.2f}]. Loads in: "
                     + serving_engines(best["width"], payload.get("layout", "eagle"), target_width) + ".")
    else:
        lines.append(f"Recommended: plain decoding in {plain_dtype}. No head's predicted speed-up has its lower 95% "
                     f"bound above 1 at batch {batch} (best: width {best['width']} x {best['layers']}, "
                     f"{best['speedup'][0]:.2f}x [{best['speedup'][1]:.2f}, {best['speedup'][2]:.2f}]).")
    if law3:
        lines.append(f"Draft shape: {law3_shape(law3, batch)}. The speed-ups above are for {shape_text}, the shape "
                     "the joint law was fitted in.")
    lines.append(f"Extrapolation: {far}." if far else
                 f"Inside the fitted ranges ({law.sizes[0]:.3g}-{law.sizes[1]:.3g} parameters, "
                 f"{law.tokens[0]:.3g}-{law.tokens[1]:.3g} tokens).")
    note = uncalibrated_note(costs)
    return lines + ([note] if note else [])
