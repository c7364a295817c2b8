"""Law 3: the best draft length against the decoding batch size, from the cost model and MAT per draft shape.

At T=0 a shape's MAT does not depend on the batch size (replay counts it once); the cost of a step does. A target
forward of t new tokens per row at batch b costs c(b, t), and once a batch's tokens fill the device (a GPU, or a CPU
in bf16) verifying more tokens costs more, the more so the larger b. Each shape's predicted speed-up over plain
decoding,

    S(shape, b) = MAT(shape) / scylla.costs.step_cost(shape, b)

(the draft's forwards plus one verify of t = draft tokens + 1, with the calibrated per-step overhead and batch lag
where the table has them, over one plain step at b), then peaks at a draft length that falls as b grows. From a cost
table and replay records this module gives S of every shape at every measured batch size, the best shape per batch
size with the shapes not measurably slower than it, the best length k*(b) of each shape family (between two grid
lengths: the vertex of the parabola in ln length through the best length and its two neighbours), and the law
k*(b) = a + c ln b fitted by least squares over the batch sizes.

Uncertainty, one bootstrap for all of it: each resample draws the prompts (the unit of sampling: a drawn prompt
brings its counts under every shape and every run, so shapes stay paired) and, per batch size and context, the cost
table's timing rounds (a drawn round brings every model's and token count's time in that round, as
scylla.costs.measure_cost_tables interleaved them), and recomputes every S, every k*(b) and the law. Intervals are
the resamples' percentiles, expanded for the number of prompts (``_percentiles``: a plain 95% percentile interval
covers about 90% with 8 prompts and 92% with 16, tests/test_batch_law.py). The calibrated overhead and lag are held
fixed.

Pure: numpy and the cost model (scylla.costs needs no torch for it); no models are loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from fit.results import _jsonable
from scylla.costs import CostTable, draft_cost_name, resampled_costs, step_cost
from scylla.errors import InputError
from scylla.timing import chunked, regret

LEVEL = 95  # percent: every interval here
ONE_PER_LAW = ("target", "task", "prompt_set", "temperature", "dtype")  # fields the records of one law share
LAW3 = "law-3 fit"  # the kind of output folder (scylla.atomic) `scylla law3 --out` writes: only a law-3 fit replaces it


@dataclass(frozen=True)
class ShapeMAT:
    """One draft shape's geometry (record fields: ``num_draft_tokens``, ``tree_*``) and its pooled MAT (new tokens /
    target calls over every prompt and run) with the prompt-bootstrap interval."""

    shape: str
    family: str  # "chain" or "tree"
    length: int  # draft tokens per step: a chain's g, a tree's total_tokens
    draft_forwards: int  # draft-model forwards per step: g, or the tree's depth
    draft_width: int  # new tokens per draft forward: 1, or the tree's top_k
    verify_tokens: int  # tokens the target scores per step: length + 1
    mat: float
    mat_ci95: tuple[float, float]


@dataclass(frozen=True)
class ShapeSpeedup:
    """S(shape, b): the predicted speed-up over plain decoding at this batch size, its interval, and step_cost."""

    shape: str
    batch: int
    step_cost: float
    speedup: float
    speedup_ci95: tuple[float, float]


@dataclass(frozen=True)
class BatchChoice:
    """The best shape at one batch size (highest point S), the shapes whose paired difference from it holds 0 at
    95% (``tied``: not measurably slower), and whether the best pays (its lower bound above 1)."""

    batch: int
    best: str
    speedup: float
    speedup_ci95: tuple[float, float]
    tied: list[str]
    pays: bool


@dataclass(frozen=True)
class LengthLaw:
    """k*(b) = intercept + slope ln b over one shape family, fitted to the best lengths at ``batches``.

    ``best_lengths`` (with ``best_lengths_ci95``) are k*(b) of the point estimates; ``curve`` holds (b, law, lo, hi)
    on a grid of batch sizes for the figure (the band: the law refitted on every resample); ``predictions`` the
    same at batch sizes measured but left out of the fit, keyed by the batch size as a string (JSON's keys)."""

    family: str
    lengths: list[int]  # the family's grid of draft lengths
    batches: list[int]
    best_lengths: list[float]
    best_lengths_ci95: list[tuple[float, float]]
    intercept: float
    slope: float
    intercept_ci95: tuple[float, float]
    slope_ci95: tuple[float, float]
    curve: list[tuple[float, float, float, float]]
    predictions: dict[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaveOut:
    """The law fitted without batch size ``batch``, asked for its best length there: the shape of the grid length
    nearest to it (in ln length), the shapes whose length lies in its band, and, for comparison, the best shape and
    length from that batch size's own costs (which the law did not see)."""

    batch: int
    family: str
    law_length: float
    law_length_ci95: tuple[float, float]
    predicted_shape: str
    shapes_in_band: list[str]
    direct_best: str
    direct_tied: list[str]
    direct_length: float


@dataclass
class BatchLaw:
    """Law 3 of one draft on one set of prompts: every result above, and what it was computed from."""

    draft: str | None  # the cost table's name of the draft model (None: prompt lookup)
    methods: list[str]  # the records' drafts (one per run pooled)
    target: str
    task: str
    prompt_set: str
    records_dtype: str
    cost_dtype: str
    device: str
    cpu_capability: str | None
    prompts: int
    resamples: int
    seed: int
    shapes: list[ShapeMAT]
    speedups: list[ShapeSpeedup]
    choices: list[BatchChoice]
    laws: list[LengthLaw]
    leave_out: LeaveOut | None = None
    notes: list[str] = field(default_factory=list)

    def law(self, family: str = "chain") -> LengthLaw | None:
        return next((law for law in self.laws if law.family == family), None)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _percentiles(values: np.ndarray, axis: int = 0, units: int | None = None) -> np.ndarray:
    """The (lower, upper) percentiles of the LEVEL interval along ``axis``; with ``units``, expanded for that few
    units of sampling (Hesterberg 2015's expanded percentile interval: the tail probability whose normal quantile is
    sqrt(n / (n - 1)) t_{n-1}, so that a resample's spread, which is sqrt((n - 1) / n) of the sampling spread, and
    the t quantile of a small sample are both accounted for)."""
    tail = (1 - LEVEL / 100) / 2
    if units and units > 1:
        tail = float(stats.norm.sf(math.sqrt(units / (units - 1)) * stats.t.isf(tail, units - 1)))
    return np.percentile(values, [100 * tail, 100 * (1 - tail)], axis=axis)


def _geometry(record: dict) -> dict:
    """A record's shape fields as step_cost's arguments (the same reading as scylla.costs for online records)."""
    tree = bool(record.get("tree_depth"))
    length = record["tree_total_tokens"] if tree else record["num_draft_tokens"]
    return dict(family="tree" if tree else "chain", length=int(length),
                draft_forwards=int(record["tree_depth"] if tree else length),
                draft_width=int(record["tree_top_k"] if tree else 1), verify_tokens=int(length) + 1)


def shape_counts(records: Sequence[dict]) -> tuple[dict[str, dict], list[str], np.ndarray, np.ndarray]:
    """Replay records of drafted shapes -> ({shape: its geometry}, prompt ids, new tokens and target calls per
    (shape, prompt), each summed over the runs that measured it). One InputError line when a record has no
    per-prompt counts, when the records mix targets, tasks, prompt sets, temperatures, dtypes or draft models, or
    when the shapes were not measured on the same prompts."""
    records = [r for r in records if r.get("drafter_type") != "none"]
    if not records:
        raise InputError("no drafted eval records to fit law 3 on: replay the draft at several shapes first (scylla "
                         "eval RUN_DIR --replay --shapes 'chain:1;chain:2;chain:4;chain:8;chain:16')")
    for name in ONE_PER_LAW:
        values = sorted({str(r.get(name)) for r in records})
        if len(values) > 1:
            raise InputError(f"the records mix {name} {', '.join(values)}: law 3 takes one; narrow them with "
                             f"--where {name}={values[0]}")
    drafts = sorted({str(draft_cost_name(r)) for r in records})
    if len(drafts) > 1:
        raise InputError(f"the records are of several draft models ({', '.join(drafts)}): law 3 takes one; narrow "
                         "them with --where (e.g. draft_layers=1,train_tokens=N)")
    geometry, counts = {}, {}
    for r in records:
        if not r.get("prompt_ids"):
            raise InputError(f"record {r.get('run_id', '?')} has no per-prompt counts (prompt_ids): re-run its eval")
        geometry[r["draft_shape"]] = _geometry(r)
        shape = counts.setdefault(r["draft_shape"], {})
        for pid, new, calls in zip(r["prompt_ids"], r["prompt_new_tokens"], r["prompt_target_calls"]):
            before = shape.get(pid, (0, 0))
            shape[pid] = (before[0] + new, before[1] + calls)
    prompts = sorted(next(iter(counts.values())))
    for shape, found in counts.items():
        if sorted(found) != prompts:
            raise InputError(f"{shape} was replayed on other prompts than {next(iter(counts))}: replay every shape on "
                             "the same prompt set and count (scylla eval --prompt-set, --prompts)")
    order = sorted(geometry, key=lambda s: (geometry[s]["family"], geometry[s]["length"], s))
    new = np.array([[counts[s][p][0] for p in prompts] for s in order], dtype=float)
    calls = np.array([[counts[s][p][1] for p in prompts] for s in order], dtype=float)
    return {s: geometry[s] for s in order}, prompts, new, calls


def best_length(lengths: Sequence[int], speedups: np.ndarray) -> np.ndarray:
    """k* of one family: ``speedups`` (..., len(lengths)) at the sorted grid ``lengths`` -> (...,) the length of
    the highest speed-up, moved between its neighbours to the vertex of the parabola in ln length through the three
    (the grid's end lengths stay where they are)."""
    x = np.log(np.asarray(lengths, dtype=float))
    s = np.asarray(speedups, dtype=float)
    i = np.argmax(s, axis=-1)
    if len(x) < 3:
        return np.exp(x[i])
    inner = np.clip(i, 1, len(x) - 2)
    x0, x1, x2 = x[inner - 1], x[inner], x[inner + 1]
    y0, y1, y2 = (np.take_along_axis(s, (inner + k)[..., None], -1)[..., 0] for k in (-1, 0, 1))
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(den != 0, x1 - 0.5 * num / den, x1)
    vertex = np.clip(vertex, x0, x2)
    edge = (i == 0) | (i == len(x) - 1)
    return np.exp(np.where(edge, x[i], vertex))


def _line(log_b: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Least squares of k (..., batches) on ln b: (..., 2) = (intercept, slope)."""
    design = np.stack([np.ones_like(log_b), log_b], axis=1)
    return np.linalg.lstsq(design, np.moveaxis(k, -1, 0).reshape(len(log_b), -1), rcond=None)[0].T.reshape(
        *k.shape[:-1], 2)


def _law(family: str, lengths: list[int], batches: list[int], k0: np.ndarray, kr: np.ndarray,
         predict_at: Sequence[int], all_batches: list[int], units: int) -> LengthLaw:
    """The law of one family from k* at ``batches`` (point (B,), resamples (R, B)); intervals for ``units``
    prompts."""
    log_b = np.log(np.asarray(batches, dtype=float))
    point, draws = _line(log_b, k0), _line(log_b, kr)
    grid = np.exp(np.linspace(math.log(min(all_batches)), math.log(max(all_batches)), 41))

    def at(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return point[0] + point[1] * np.log(b), draws[:, :1] + draws[:, 1:] * np.log(b)[None, :]

    mean, band = at(grid)
    lo, hi = _percentiles(band, units=units)
    ci_k = _percentiles(kr, units=units)
    ci_a, ci_c = _percentiles(draws, units=units).T
    predictions = {}
    for b in predict_at:
        m, d = at(np.array([float(b)]))
        low, high = _percentiles(d[:, 0], units=units)
        predictions[str(b)] = (float(m[0]), float(low), float(high))
    return LengthLaw(family, lengths, list(batches), k0.tolist(), list(zip(ci_k[0].tolist(), ci_k[1].tolist())),
                     float(point[0]), float(point[1]), tuple(ci_a.tolist()), tuple(ci_c.tolist()),
                     [(float(g), float(m), float(a), float(z)) for g, m, a, z in zip(grid, mean, lo, hi)], predictions)


def fit_batch_law(records: Sequence[dict], cost: CostTable, batches: Sequence[int] | None = None,
                  leave_out: int | None = None, resamples: int = 1000, seed: int = 0) -> BatchLaw:
    """Law 3 from replay ``records`` of one draft at several shapes (T=0; several runs of it pool by prompt) and a
    cost table measuring the target at every shape's verify size and the draft at its width, at ``batches`` (default:
    every batch size the table has the target's 1-token step at). ``leave_out``: the law is fitted without that
    batch size and asked for it (LeaveOut). Needs 2+ batch sizes in the fit."""
    if resamples < 100:
        raise InputError(f"resamples must be >= 100 for a {LEVEL}% percentile interval, got {resamples}")
    geometry, prompts, new, calls = shape_counts(records)
    shapes = list(geometry)
    draft = draft_cost_name(next(r for r in records if r.get("drafter_type") != "none"), cost)
    measured = sorted({e["batch"] for e in cost.entries if e["model"] == "target" and e["tokens"] == 1})
    batches = sorted(batches or measured)
    missing = [b for b in batches if b not in measured]
    if missing or (leave_out is not None and leave_out not in batches):
        raise InputError(f"the cost table has no target step at batch {(missing or [leave_out])[0]} (it has "
                         f"{', '.join(map(str, measured))}): measure it with scylla costs --batch-sizes")
    fitted = [b for b in batches if b != leave_out]
    if len(fitted) < 2:
        raise InputError(f"law 3 needs 2 or more batch sizes to fit, got {fitted}: measure more with scylla costs "
                         "--batch-sizes")
    rng = np.random.default_rng(seed)
    draw = rng.integers(len(prompts), size=(resamples, len(prompts)))
    mat0 = new.sum(1) / calls.sum(1)  # (S,)
    mats = new[:, draw].sum(-1) / calls[:, draw].sum(-1)  # (S, R)
    costs_r = resampled_costs(cost, resamples, rng)
    step0 = np.empty((len(shapes), len(batches)))
    stepr = np.empty((len(shapes), len(batches), resamples))
    for i, shape in enumerate(shapes):
        g = geometry[shape]
        args = (g["verify_tokens"], g["draft_forwards"] if draft is not None else 0, g["draft_width"])
        for j, b in enumerate(batches):
            try:
                step0[i, j] = step_cost(cost, draft, b, *args)
                stepr[i, j] = step_cost(costs_r, draft, b, *args)
            except InputError as err:
                raise InputError(f"{err}: law 3 costs {shape} at every batch size (scylla costs --batch-sizes "
                                 f"{','.join(map(str, batches))} --tokens with every verify size, and the draft: "
                                 "--head-layers for a head)") from None
    s0 = mat0[:, None] / step0  # (S, B)
    sr = mats[:, None, :] / stepr  # (S, B, R)
    n = len(prompts)
    lo, hi = _percentiles(sr, axis=-1, units=n)
    mat_lo, mat_hi = _percentiles(mats, axis=-1, units=n)
    shape_mats = [ShapeMAT(s, **geometry[s], mat=float(mat0[i]), mat_ci95=(float(mat_lo[i]), float(mat_hi[i])))
                  for i, s in enumerate(shapes)]
    speedups = [ShapeSpeedup(s, b, float(step0[i, j]), float(s0[i, j]), (float(lo[i, j]), float(hi[i, j])))
                for i, s in enumerate(shapes) for j, b in enumerate(batches)]

    def choice(j: int, among: list[int]) -> BatchChoice:
        best = max(among, key=lambda i: s0[i, j])
        tied = [shapes[i] for i in among if i != best and _percentiles(sr[best, j] - sr[i, j], units=n)[0] <= 0]
        return BatchChoice(batches[j], shapes[best], float(s0[best, j]), (float(lo[best, j]), float(hi[best, j])),
                           tied, bool(lo[best, j] > 1))

    everything = list(range(len(shapes)))
    choices = [choice(j, everything) for j in range(len(batches))]
    laws, leave = [], None
    fit_cols = [batches.index(b) for b in fitted]
    for family in ("chain", "tree"):
        members = [i for i in everything if geometry[shapes[i]]["family"] == family]
        lengths = sorted({geometry[shapes[i]]["length"] for i in members})
        if len(lengths) < 3:
            continue
        # per length, the family's best shape of that length (trees of one size may differ in top_k and depth)
        by_length = [[i for i in members if geometry[shapes[i]]["length"] == n] for n in lengths]
        per0 = np.stack([s0[idx].max(0) for idx in by_length], axis=-1)  # (B, L)
        perr = np.stack([sr[idx].max(0) for idx in by_length], axis=-1)  # (B, R, L)
        k0, kr = best_length(lengths, per0), best_length(lengths, perr).T  # (B,), (R, B)
        law = _law(family, lengths, fitted, k0[fit_cols], kr[:, fit_cols],
                   [] if leave_out is None else [leave_out], batches, n)
        laws.append(law)
        if leave_out is not None and family == "chain":
            mean, low, high = law.predictions[str(leave_out)]
            nearest = min(lengths, key=lambda n: abs(math.log(n) - math.log(max(mean, 1e-9))))
            j = batches.index(leave_out)
            pick = {n: shapes[max(idx, key=lambda i: s0[i, j])] for n, idx in zip(lengths, by_length)}
            direct = choice(j, members)
            leave = LeaveOut(leave_out, family, mean, (low, high), pick[nearest],
                             [pick[n] for n in lengths if low <= n <= high or n == nearest], direct.best, direct.tied,
                             float(k0[j]))
    notes = []
    if not laws:
        notes.append("no shape family has 3 or more lengths: no law of the best length (replay chain:1, 2, 4, 8, 16)")
    if leave_out is not None and leave is None:
        notes.append(f"--leave-out {leave_out}: no chain law to predict it with")
    if not any(e.get("repeats") for e in cost.entries):
        notes.append("the cost table keeps no repeats (measured before they were kept): the intervals hold its "
                     "medians fixed and carry the prompts' spread only")
    calibrated = sorted(int(b) for b in cost.overhead)
    if calibrated and set(batches) - set(calibrated):
        notes.append(f"the per-step overhead is calibrated at batch {', '.join(map(str, calibrated))} only: other "
                     "batch sizes are costed from their forwards alone")
    first = next(r for r in records if r.get("drafter_type") != "none")
    if first.get("dtype", cost.dtype) != cost.dtype:
        notes.append(f"MAT replayed in {first.get('dtype')}, costs measured in {cost.dtype}")
    return BatchLaw(draft, sorted({r["method"] for r in records if r.get("drafter_type") != "none"}),
                    str(first.get("target")), str(first.get("task")), str(first.get("prompt_set")),
                    str(first.get("dtype")), cost.dtype, cost.device, cost.cpu_capability, len(prompts), resamples,
                    seed, shape_mats, speedups, choices, laws, leave, notes)


def online_check(online: Sequence[dict], law: BatchLaw) -> dict:
    """The left-out batch size measured online (``scylla eval`` at that batch size with the law's shapes, T=0):
    the predicted shape's measured speed-up against the best measured one (every shape and plain decoding), and the
    regret, best - predicted in median paired speed-up with its 95% interval (scylla.timing.regret)."""
    if law.leave_out is None:
        raise InputError("an online check needs a left-out batch size: give --leave-out B")
    b, shapes = law.leave_out.batch, {s.shape for s in law.shapes}
    rows = [r for r in online if r.get("mode") == "online" and r.get("batch_size") == b and r.get("speedup_ratios")
            and r.get("temperature") == 0 and (r["method"] == "none" or r.get("draft_shape") in shapes)]
    drafts = sorted({r["method"] for r in rows if r["method"] != "none"})
    if len(drafts) != 1:
        raise InputError(f"the online records at batch {b} hold {len(drafts)} drafts ({', '.join(drafts) or 'none'}): "
                         "the check takes one draft's shapes and plain decoding at that batch size")
    pick = next((r for r in rows if r["method"] != "none" and r["draft_shape"] == law.leave_out.predicted_shape), None)
    if pick is None:
        raise InputError(f"no online record of {law.leave_out.predicted_shape} at batch {b}: run scylla eval there "
                         f"with --batch-sizes {b} and every shape of the law")
    best, rounds = max(rows, key=lambda r: r["speedup"]), pick["timing_rounds"]
    value, interval = regret(chunked(pick["speedup_ratios"], rounds), chunked(best["speedup_ratios"], rounds))
    return _jsonable(dict(batch=b, draft=drafts[0], predicted=law.leave_out.predicted_shape,
                          predicted_speedup=pick["speedup"], predicted_ci95=pick["speedup_ci95"],
                          best="plain decoding" if best["method"] == "none" else best["draft_shape"],
                          best_speedup=best["speedup"], best_ci95=best["speedup_ci95"], regret=value,
                          regret_ci95=interval,
                          measured={r["draft_shape"] if r["method"] != "none" else "plain": r["speedup"]
                                    for r in rows}))


def table_lines(law: BatchLaw) -> list[str]:
    """The law as text: MAT per shape, S per shape and batch size, the best shape per batch size, the laws, the
    left-out prediction."""
    def iv(pair) -> str:
        return f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    batches = sorted({s.batch for s in law.speedups})
    lines = [f"law 3: {law.draft or 'prompt lookup'} ({len(law.methods)} run(s)) on {law.prompts} prompts of "
             f"{law.task}/{law.prompt_set}, replayed in {law.records_dtype}; costs in {law.cost_dtype} on "
             f"{law.cpu_capability or law.device}; {law.resamples} resamples of prompts and timing rounds, "
             f"{LEVEL}% intervals", "", "shape                                  length  MAT"]
    lines += [f"{s.shape:<38} {s.length:>6}  {s.mat:.3f} {iv(s.mat_ci95)}" for s in law.shapes]
    lines += ["", "predicted speed-up over plain decoding at each batch size:",
              f"{'shape':<38} " + " ".join(f"{'b=' + str(b):>19}" for b in batches)]
    by = {(s.shape, s.batch): s for s in law.speedups}
    for s in law.shapes:
        lines.append(f"{s.shape:<38} " + " ".join(
            f"{by[s.shape, b].speedup:5.2f} {iv(by[s.shape, b].speedup_ci95):>13}" for b in batches))
    lines += ["", "best shape per batch size (tied: not measurably slower, paired):"]
    for c in law.choices:
        tied = f"; tied: {', '.join(c.tied)}" if c.tied else ""
        pays = "" if c.pays else "  (does not beat plain decoding at its lower bound)"
        lines.append(f"  batch {c.batch:>3}: {c.best} {c.speedup:.2f}x {iv(c.speedup_ci95)}{tied}{pays}")
    for f in law.laws:
        lines += ["", f"law ({f.family}s): k*(b) = {f.intercept:.2f} {iv(f.intercept_ci95)} + {f.slope:.3f} "
                  f"[{f.slope_ci95[0]:.3f}, {f.slope_ci95[1]:.3f}] ln b, fitted at batch "
                  f"{', '.join(map(str, f.batches))}; k* per batch size:"]
        lines += [f"  batch {b:>3}: k* {k:.2f} {iv(ci)}" for b, k, ci in zip(f.batches, f.best_lengths,
                                                                            f.best_lengths_ci95)]
    if law.leave_out:
        o = law.leave_out
        lines += ["", f"left out batch {o.batch}: the law fitted without it predicts k* {o.law_length:.2f} "
                  f"{iv(o.law_length_ci95)} -> {o.predicted_shape} (shapes in the band: "
                  f"{', '.join(o.shapes_in_band)}); "
                  f"batch {o.batch}'s own costs pick {o.direct_best} (k* {o.direct_length:.2f})"
                  + (f" (tied: {', '.join(o.direct_tied)})" if o.direct_tied else "")]
    lines += [f"note: {n}" for n in law.notes]
    return lines
