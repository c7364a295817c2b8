"""Scylla configuration selection: from fitted laws and the cost model, the draft configuration predicted to be
fastest at each decoding batch size.

A candidate is (draft layers, draft width, draft shape, training tokens). Its MAT comes from the log-linear law
fitted for its group (``scylla fit --by draft_layers[,draft_width][,draft_shape] --json``: per width too on a
capacity study's records), with the law's 95% confidence interval; its cost per step, relative to one plain target
step at the same batch size, from the cost table (``scylla costs --head-layers ... --head-width ...``; heads named
by depth and width, scylla.costs.head_name): a chain of g tokens costs g head steps of 1 token plus one target call on g+1 tokens, a tree
costs depth head steps of top_k tokens plus one target call on total_tokens+1 tokens. The predicted speed-up is
MAT / that cost (scylla.costs.predicted_speedup); its interval maps the MAT interval through the same formula.

The dtype is part of the configuration: given one cost table per dtype (``scylla costs --dtype float32,bfloat16``),
every candidate is costed in each, and every speed-up is over the fastest plain decoding of all of them at that
batch size (``plain_dtype``), so that a dtype never wins by slowing the baseline: on a CPU with bf16 units plain
float32 may beat plain bfloat16 at batch 1 while drafting in bfloat16 beats both. The law's MAT is used in every
dtype (the MAT of a head served in the other dtype is measured in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from fit.results import LogLinearFit
from pipeline.evaluate import EvalConfig, evaluate, parse_shape
from scylla.atomic import atomic_path
from scylla.costs import CostTable, plain_step_seconds, predicted_speedup, step_cost_interval
from scylla.drafters.eagle import serving_engines
from scylla.errors import InputError, ScyllaError
from scylla.records import find_checkpoints, method_as_read, read_records
from scylla.config import read_yaml
from scylla.selection import SelectionEntry, config_as_stored, load_selection
from scylla.timing import chunked, regret


@dataclass
class Candidate:
    """One configuration at one batch size, with its predicted MAT and speed-up (mean and 95% interval); the
    Scylla configuration stores the chosen one's fields (scylla.selection.SelectionEntry)."""

    batch_size: int
    draft_layers: int
    draft_shape: str
    train_tokens: int
    predicted_mat: float
    predicted_mat_ci95: tuple[float, float]
    step_cost: float  # (draft + verify) / one target step
    predicted_speedup: float
    predicted_speedup_ci95: tuple[float, float]
    extrapolated: bool  # train_tokens beyond the largest fitted x
    dtype: str = "float32"  # the target's and draft's, as the cost table it was costed from
    plain_dtype: str = "float32"  # the fastest plain decoding's at this batch size: the speed-up's baseline
    draft_width: int | None = None  # the head's, where the fits are per width (scylla fit --by ...,draft_width)


def load_fits(path: str | Path) -> list[dict]:
    """The ``fits`` of a ``scylla fit --json`` file, each with ``group``, ``intercept``, ``slope``, ``cov``, ``n``."""
    if not Path(path).is_file():
        raise InputError(f"fits file {path} does not exist: write one with scylla fit ... --json FILE")
    try:
        payload = json.loads(Path(path).read_text())
        fits = payload["fits"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{path} is not a fits file: write one with scylla fit ... --json FILE") from None
    if payload.get("x") != "train_tokens" or not fits:
        raise InputError(f"{path} must hold laws in x = train_tokens (scylla fit --x train_tokens), with fits")
    if any("draft_layers" not in f["group"] for f in fits):
        raise InputError(f"{path}: fit per draft depth (scylla fit --by draft_layers[,draft_shape])")
    return fits


def law_of(fit: dict) -> LogLinearFit:
    """A fits file entry as the LogLinearFit it was written from."""
    names = LogLinearFit.__dataclass_fields__
    return LogLinearFit(**{k: v for k, v in fit.items() if k in names})


def fastest_plain(costs: list[CostTable], batch: int) -> tuple[str, float]:
    """(dtype, seconds per step) of the fastest plain decoding among the tables at this batch size."""
    found = []
    for cost in costs:
        try:
            found.append((plain_step_seconds(cost, batch), cost.dtype))
        except ScyllaError:
            continue
    if not found:
        raise InputError(f"no cost table measured the target at batch {batch}: run scylla costs --batch-sizes {batch}")
    seconds, dtype = min(found)
    return dtype, seconds


def rebased_step_cost(cost: CostTable, layers: int, width: int | None, shape, batch: int,
                      plain_seconds: float) -> tuple[float, float, float]:
    """(median, low, high: its 95% interval) seconds of one speculative step of a head of this depth and width
    drafting ``shape`` at this batch size (scylla.costs.step_cost_interval: paired by timing round), over
    ``plain_seconds``, the fastest plain decoding's step of all the tables (``fastest_plain``): step_cost is relative
    to its own dtype's plain step, so it is re-based (by the medians). ScyllaError if the table lacks the head or
    the sizes."""
    head = cost.head(layers, width)
    rebase = plain_step_seconds(cost, batch) / plain_seconds
    found = step_cost_interval(cost, head, batch, shape.verify_tokens, shape.draft_forwards, shape.draft_width)
    return tuple(v * rebase for v in found)


def speedup_interval(mat: tuple[float, float, float], step: tuple[float, float, float]) -> tuple[float, float]:
    """The 95% interval of MAT / step from MAT's (point, low, high) and the step cost's: the two are independent
    (prompts against timing rounds), so their relative half-widths add in quadrature on the log scale, each side
    separately."""
    (m, m_lo, m_hi), (c, c_lo, c_hi) = mat, step
    down = math.hypot(math.log(m / m_lo), math.log(c_hi / c))
    up = math.hypot(math.log(m_hi / m), math.log(c / c_lo))
    return m / c * math.exp(-down), m / c * math.exp(up)


def candidates(fits: list[dict], costs: CostTable | list[CostTable], batch_sizes: list[int],
               token_budget: int | None = None, shapes: list[str] | None = None,
               default_shape: str = "chain:2") -> list[Candidate]:
    """Every (fit group, shape, cost table's dtype) at each batch size, trained on token_budget tokens (default: the
    largest fitted), its speed-up over the fastest plain decoding of all the tables (``fastest_plain``).

    A fit whose group has a draft_shape predicts that shape only; a fit without one predicts ``default_shape``
    (the shape its MAT was measured at). ``shapes`` keeps only those shapes.
    """
    costs = costs if isinstance(costs, list) else [costs]
    if len({c.dtype for c in costs}) != len(costs):
        raise InputError(f"give one cost table per dtype, got {', '.join(c.dtype for c in costs)}")
    plain = {}
    for b in batch_sizes:
        try:
            plain[b] = fastest_plain(costs, b)
        except InputError:
            continue
    out = []
    for fit in fits:
        law = law_of(fit)
        shape_text = fit["group"].get("draft_shape", default_shape)
        if shapes and shape_text not in shapes:
            continue
        shape = parse_shape(shape_text)
        tokens = token_budget or int(max(law.x_values))
        mat, lo, hi = law.predict(tokens)
        mat, lo, hi = (max(1.0, v) for v in (mat, lo, hi))  # a step always yields at least one token
        for batch, cost in ((b, cost) for b in batch_sizes if b in plain for cost in costs):
            plain_dtype, plain_seconds = plain[batch]
            try:
                c, c_lo, c_hi = rebased_step_cost(cost, int(fit["group"]["draft_layers"]),
                                                  fit["group"].get("draft_width"), shape, batch, plain_seconds)
            except ScyllaError:
                continue
            out.append(Candidate(batch, int(fit["group"]["draft_layers"]), shape_text, tokens, mat, (lo, hi), c,
                                 predicted_speedup(mat, 1, 0.0, c), speedup_interval((mat, lo, hi), (c, c_lo, c_hi)),
                                 tokens > max(law.x_values), cost.dtype, plain_dtype, fit["group"].get("draft_width")))
    if not out:
        raise InputError("no candidate has measured costs: run scylla costs with --head-layers for the fitted "
                          "depths, the batch sizes and the verify sizes (--tokens) of the shapes")
    return out


def uncalibrated_note(tables: list[CostTable]) -> str | None:
    """A line for ``scylla select`` and ``scylla recipe`` where no table carries the per-step correction (forwards
    only: the engine's own work per step is left out, so every predicted speed-up is optimistic); None otherwise."""
    if any(t.overhead for t in tables):
        return None
    return ("note: the cost table is uncalibrated (forwards only, without the engine's per-step work), so these "
            "speed-ups are optimistic, most at larger batch sizes; calibrate it with scylla costs ... --calibrate "
            "RUN_DIR (a run with online eval records)")


def select(found: list[Candidate]) -> dict[int, Candidate]:
    """The best draft at each batch size: the candidate whose predicted speed-up has the highest lower 95% bound
    (the law's interval, which carries the prompts' spread, with the step cost's over timing rounds:
    ``speedup_interval``), ties going to the higher point prediction. Deciding on the lower bound rather than the
    point keeps the argmax over many candidates from choosing on its own noise (the winner's curse)."""
    best: dict[int, Candidate] = {}
    for c in found:
        key = (c.predicted_speedup_ci95[0], c.predicted_speedup)
        if c.batch_size not in best or key > (best[c.batch_size].predicted_speedup_ci95[0],
                                              best[c.batch_size].predicted_speedup):
            best[c.batch_size] = c
    return dict(sorted(best.items()))


def pays(c: Candidate) -> bool:
    """Whether the draft is chosen over plain decoding: only when even the lower 95% bound of its predicted
    speed-up is above 1. A draft predicted faster whose interval holds 1 is a predicted "no measurable
    difference", and plain decoding, which needs no draft, is kept."""
    return c.predicted_speedup_ci95[0] > 1


def checkpoint_for(run_dirs: list[str], layers: int, tokens: int, width: int | None = None) -> str | None:
    """The trained draft folder of that depth (and width, if given) and token count in these run directories, if one
    exists."""
    where = dict(draft_layers=layers, train_tokens=tokens, **({"draft_width": width} if width else {}))
    for run_dir in run_dirs:
        for r in find_checkpoints(run_dir, where=where):
            return r["checkpoint"]
    return None


def servable_by(folder: str) -> str:
    """Which engines load the trained draft in ``folder`` (scylla.drafters.eagle.serving_engines; a draft LM: any)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown: no readable config.json"
    if config.get("scylla_type") != "eagle_head":
        return "any engine that runs a draft model"
    return serving_engines(config.get("width", 0), config.get("layout", "eagle"), config.get("target_hidden_size"))


def _method(folder: str) -> str:
    """The eval records' method of a trained draft folder (scylla.records.method_as_read)."""
    return method_as_read(f"draft:{folder}")


def measured(check_dir: str | Path, chosen: dict[int, Candidate], drafts: dict[int, str | None]) -> dict:
    """Per batch size, the check's online eval record of its best draft and shape (None if not measured)."""
    out = {}
    for b, c in chosen.items():
        where = dict(method=_method(drafts[b]), batch_size=b, draft_shape=c.draft_shape, mode="online",
                     prompt_set="confirm", dtype=c.dtype)
        rows = read_records(check_dir, kind="eval", where=where)
        out[b] = rows[-1] if rows else None
    return out


def confirmation(check_dir: str | Path, chosen: dict[int, Candidate], drafts: dict[int, str | None]) -> dict:
    """Per batch size, the choice against the best configuration measured online on the confirm prompt set (every
    draft and shape of the check, and plain decoding): {"choice", "choice_speedup", "best", "best_speedup",
    "regret", "regret_ci95"}, the regret being best - choice in median paired speed-up (scylla.timing.regret);
    None where the check has no timed records for that batch size."""
    out: dict = {}
    for b, c in chosen.items():
        rows = [r for r in read_records(check_dir, kind="eval", where=dict(batch_size=b, mode="online",
                                                                           prompt_set="confirm"))
                if r.get("speedup_ratios")]
        # plain decoding: the baseline the speed-ups are over (the fastest dtype's; records before dtypes: the one)
        plain = next((r for r in rows if r["method"] == "none" and r.get("dtype") == r.get("baseline_dtype")),
                     next((r for r in rows if r["method"] == "none"), None))
        pick = next((r for r in rows if r["method"] == _method(drafts[b]) and r["draft_shape"] == c.draft_shape
                     and r.get("dtype", c.dtype) == c.dtype), None) if pays(c) else plain
        if pick is None:
            out[b] = None
            continue
        best, rounds = max(rows, key=lambda r: r["speedup"]), pick["timing_rounds"]
        value, interval = regret(chunked(pick["speedup_ratios"], rounds), chunked(best["speedup_ratios"], rounds))
        out[b] = dict(choice=f"{pick['method']} {pick['draft_shape']}", choice_speedup=pick["speedup"],
                      choice_ci95=pick["speedup_ci95"], best=f"{best['method']} {best['draft_shape']}",
                      best_speedup=best["speedup"], best_ci95=best["speedup_ci95"], regret=value,
                      regret_ci95=interval)
    return out


def write_config(path: str | Path, chosen: dict[int, Candidate], run_dir: str, drafts: dict[int, str | None],
                 target: str, tasks: list[str], also: list[tuple[str, str]] = (), dtypes: list[str] = ()) -> dict:
    """The Scylla configuration: an eval config (``scylla eval --config``) that measures the chosen draft at each batch
    size (and ``also`` these (draft spec, shape) pairs, e.g. a baseline), whose ``selection`` section (read by ``scylla
    generate --config``) holds the choice and its prediction per batch size; it measures on the ``confirm`` prompt set,
    disjoint from the prompts the laws were fitted on. Where the best draft's predicted speed-up is not above 1 at its
    lower 95% bound (``pays``), the choice is plain decoding (``draft: none``) and the best draft stays in
    ``best_draft``. Its check times plain decoding in every dtype of ``dtypes`` (the cost tables') and the chosen
    ones, so that the measured speed-ups are over the faster plain decoding as measured, not as predicted. Written
    atomically, its paths relative to its own folder (scylla.selection.config_as_stored); returns it with paths as the
    working directory sees them."""
    specs = sorted({_method(d) for d in drafts.values() if d} | {method_as_read(spec) for spec, _ in also})
    selection = {}
    for b, c in chosen.items():
        best = _method(drafts[b]) if drafts[b] else None
        selection[str(b)] = {**asdict(c), "best_draft": best, "draft": best if pays(c) else "none",
                             "predicted_mat_ci95": list(c.predicted_mat_ci95),
                             "predicted_speedup_ci95": list(c.predicted_speedup_ci95)}
    chosen_dtypes = [c.dtype for c in chosen.values()]
    config = dict(
        run_dir=run_dir, target=target, drafts=specs, baselines=["none"], tasks=tasks, prompt_set="confirm",
        temperatures=[0.0],
        batch_sizes=sorted(chosen), shapes=sorted({c.draft_shape for c in chosen.values()} | {s for _, s in also}),
        dtype=max(chosen_dtypes, key=chosen_dtypes.count),  # the check measures each batch size in its own dtype
        baseline_dtypes=sorted(set(dtypes) | {c.plain_dtype for c in chosen.values()} | set(chosen_dtypes)),
        selection=selection,
    )
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(config_as_stored(config, path), sort_keys=False))
    return config


def selection_for(config_path: str | Path, batch_size: int, target: str | None = None) -> SelectionEntry:
    """The selection entry of a Scylla configuration for this batch size; one InputError line for a batch size it
    chose nothing for, for a configuration selected for another target than ``target``, or for no trained draft."""
    selection = load_selection(config_path)
    selected_for = read_yaml(config_path).get("target")
    if target is not None and selected_for is not None and str(selected_for) != str(target):
        raise InputError(f"{config_path} was selected for target {selected_for}, not {target}: pass --target "
                         f"{selected_for}, or run scylla select for {target}")
    if batch_size not in selection:
        raise InputError(f"{config_path} chose drafts for batch sizes {', '.join(map(str, sorted(selection)))}, not "
                         f"{batch_size}: pass one of them, or run scylla select --batch-sizes with {batch_size}")
    entry = selection[batch_size]
    if not entry.draft:
        raise InputError(f"{config_path}: no trained draft for batch size {batch_size}; train "
                         f"{entry.draft_layers} layers on {entry.train_tokens} tokens first")
    return entry


@dataclass
class Selection:
    """What ``run_selection`` did: every candidate, the chosen one per batch size, its trained draft folder (None if
    none was trained), the configuration written, and the check's eval record per batch size (None unchecked)."""

    candidates: list[Candidate]
    chosen: dict[int, Candidate]
    drafts: dict[int, str | None]
    config: dict
    measured: dict | None
    regrets: dict | None = None  # per batch size: confirmation(...)
    note: str | None = None  # uncalibrated_note of the cost tables


def run_selection(fits_path: str | Path, cost_path: str | Path | list, batch_sizes: list[int], run_dirs: list[str],
                  out: str | Path, check_dir: str, target: str, tasks: list[str], token_budget: int | None = None,
                  fitted_shape: str = "chain:2", also: list[tuple[str, str]] = (),
                  check: tuple[int, int] | None = None) -> Selection:
    """The selection workflow of ``scylla select`` and the demo: candidates from the fits and the cost tables (one
    path, or one per dtype), the fastest per batch size, its trained draft, the Scylla configuration at ``out``; with
    ``check`` = (prompts, new tokens), the chosen drafts (and ``also``) measured online into check_dir, each batch
    size in its chosen dtype against plain decoding in every dtype of the tables."""
    paths = cost_path if isinstance(cost_path, list) else [cost_path]
    fits = load_fits(fits_path)
    tables = [CostTable.load(p) for p in paths]
    found = candidates(fits, tables, batch_sizes, token_budget, default_shape=fitted_shape)
    chosen = select(found)
    drafts = {b: checkpoint_for(run_dirs, c.draft_layers, c.train_tokens, c.draft_width) for b, c in chosen.items()}
    config = write_config(out, chosen, check_dir, drafts, target, tasks, also, [t.dtype for t in tables])
    checked = regrets = None
    if check is not None:
        if not all(drafts.values()):
            raise InputError("checking the choice needs a trained draft for every batch size: give the run "
                              "directories that hold them")
        prompts, new_tokens = check
        for dtype in sorted({c.dtype for c in chosen.values()}):
            sizes = [b for b, c in chosen.items() if c.dtype == dtype]
            evaluate(EvalConfig(**{**config, "prompts": prompts, "max_new_tokens": new_tokens, "dtype": dtype,
                                   "batch_sizes": sizes}))
        checked = measured(check_dir, chosen, drafts)
        regrets = confirmation(check_dir, chosen, drafts)
    return Selection(found, chosen, drafts, config, checked, regrets, uncalibrated_note(tables))
