"""The cost model: measured forward costs of the target and of drafts, and the speed-up they predict.

Costs are seconds per forward of ``tokens`` new tokens per row, at a batch size, on a KV cache already holding
``context`` tokens (median of repeats, with the fastest and slowest repeat; this engine's RaggedKV, so the same code
path as decoding). They are saved per device as JSON. With c = draft step / target step and v = verify of g+1
tokens / target step (both at the same batch size), a chain drafter with mean accepted length MAT is predicted to
run at MAT / (g c + v) times plain decoding (Leviathan et al. 2023's expected speed-up, with the measured MAT in
place of the i.i.d. model and the verify cost measured rather than assumed to be one step). The per-step work
outside the forwards (sampling, acceptance, cache bookkeeping, Python) enters as a correction per step for plain
decoding, chains and trees, fitted from online runs (``calibrate``); docs/benchmarks.md gives the model's measured
error.

The cost model itself (CostTable, step_cost, plain_step_seconds, calibrate) needs no torch: torch and the models load
only where costs are measured, so fit/batch_law.py (law 3, pure) reuses it.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from scylla.atomic import write_json_atomic
from scylla.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class CostTable:
    """Measured forward costs: entries of {model, batch, tokens, context, seconds (the median of the repeats),
    seconds_min, seconds_max, repeats (every timed repeat, in the order of the interleaved rounds; absent in tables
    written before they were kept)}."""

    device: str
    dtype: str
    entries: list[dict] = field(default_factory=list)
    target_quantization: str = ""  # scylla.models.target_quantization of the measured target ("" in old tables)
    # Per batch size (a string key, JSON's): seconds of per-step work outside the forwards, {"plain", "chain", "tree"},
    # fitted from online runs by ``calibrate``; empty: forwards only.
    overhead: dict = field(default_factory=dict)
    # Per batch size, {"plain", "chain", "tree"}: the steps a batch takes over the steps its average row needs
    # (``batch_lag``), fitted by ``calibrate`` with the overhead; empty: 1 (every row needs as many steps).
    lag: dict = field(default_factory=dict)
    threads: int | None = None  # torch's CPU threads while measuring, and the cores other processes kept busy
    busy_cores: float | None = None
    cpu_capability: str | None = None  # scylla.dtypes.cpu_capability on a CPU (e.g. AVX512-BF16); None on CUDA

    def nearest(self, model: str, batch: int, tokens: int, context: int | None = None, bound: str = "") -> float:
        """The cost at this model, batch and tokens, at the measured context nearest to ``context`` (None: the
        smallest measured): the median of its repeats, or with ``bound`` "min" / "max" the fastest / slowest repeat
        (the median in tables written before they were kept). InputError if the model, batch or tokens were not
        measured."""
        rows = [e for e in self.entries if (e["model"], e["batch"], e["tokens"]) == (model, batch, tokens)]
        if not rows:
            raise InputError(f"no measured cost for {model} at batch {batch}, {tokens} tokens")
        row = min(rows, key=lambda e: e["context"] if context is None else abs(e["context"] - context))
        return row.get(f"seconds_{bound}", row["seconds"]) if bound else row["seconds"]

    def head(self, layers: int, width: int | None = None) -> str:
        """The table's name for an EAGLE-style head of this depth and width (``head_name``). Without a width: the
        one width measured at that depth. Tables written before heads were keyed by width name them ``head:L`` (one
        width a table), read as any width. InputError if the table has no such head."""
        names = {e["model"] for e in self.entries if e["model"].startswith(f"head:{layers}@")}
        if width is not None and head_name(layers, width) in names:
            return head_name(layers, width)
        if width is None and len(names) == 1:
            return names.pop()
        if not names and any(e["model"] == f"head:{layers}" for e in self.entries):
            return f"head:{layers}"
        widths = sorted(int(n.partition("@")[2]) for n in names)
        raise InputError(f"the cost table has no {layers}-layer head" + (f" of width {width}" if width else "")
                         + (f" (widths measured: {', '.join(map(str, widths))})" if widths else "")
                         + f": run scylla costs --head-layers {layers}" + (f" --head-width {width}" if width else ""))

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "CostTable":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise InputError(f"{path} is not a cost table ({type(err).__name__})") from None


def head_name(layers: int, width: int) -> str:
    """A head's name in cost tables: ``head:L@W`` (depth L, width W)."""
    return f"head:{layers}@{width}"


def table_path(out: str | Path, dtype: str) -> Path:
    """Where ``scylla costs --dtype A,B --out costs.json`` writes the table of ``dtype``: costs.DTYPE.json."""
    out = Path(out)
    return out.with_name(f"{out.stem}.{dtype}{out.suffix or '.json'}")


def forward_seconds(model: torch.nn.Module, batch: int, tokens: int, context: int, reps: int = 10,
                    warmup: int = 2, **kwargs) -> float:
    """Median seconds of one forward of ``tokens`` new tokens per row on a cache of ``context`` tokens."""
    return statistics.median(forward_times(model, batch, tokens, context, reps, warmup, **kwargs))


class _Forwards:
    """One model's KV cache (RaggedKV) holding ``context`` random tokens per row of a batch: ``seconds(n)`` times one
    forward of n new tokens per row and trims them off again, so one cache serves every timing."""

    def __init__(self, model: torch.nn.Module, batch: int, context: int, **kwargs):
        import torch

        from scylla.kv import RaggedKV

        param = next(model.parameters())
        self.device, self.dtype, self.batch, self.kwargs = param.device, param.dtype, batch, kwargs
        self.g = torch.Generator().manual_seed(0)
        self.head = getattr(model, "head_config", None)  # an EAGLE head reads target features with each token
        self.vocab = self.head.target_vocab_size if self.head else int(model.get_input_embeddings().weight.shape[0])
        with torch.inference_mode():
            self.kv = RaggedKV(model)
            self.kv.forward(self._tokens(context), **self._extra(context))

    def _tokens(self, n: int) -> torch.Tensor:
        import torch

        return torch.randint(0, self.vocab, (1, n), generator=self.g).to(self.device).expand(self.batch, -1)

    def _extra(self, n: int) -> dict:
        import torch

        if self.head is None:
            return self.kwargs
        width = len(self.head.feature_layers) * self.head.target_hidden_size
        return {**self.kwargs, "features": torch.randn(self.batch, n, width, generator=self.g).to(self.device,
                                                                                                  self.dtype)}

    def seconds(self, n: int) -> float:
        import torch

        with torch.inference_mode():
            new, extra = self._tokens(n), self._extra(n)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            self.kv.forward(new, **extra)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - start
            self.kv.trim(self.kv.lengths - n)
        return elapsed


def forward_times(model: torch.nn.Module, batch: int, tokens: int, context: int, reps: int = 10,
                  warmup: int = 2, **kwargs) -> list[float]:
    """Seconds of each of ``reps`` forwards (after ``warmup``) of ``tokens`` new tokens per row on a cache of
    ``context`` tokens."""
    forwards = _Forwards(model, batch, context, **kwargs)
    return [forwards.seconds(tokens) for _ in range(warmup + reps)][warmup:]


def measure_costs(models: dict[str, torch.nn.Module], batch_sizes: list[int], tokens: list[int],
                  contexts: list[int], reps: int = 10, warmup: int = 2) -> CostTable:
    """Every (model, batch, tokens, context) combination; the first model is the target (measure_cost_tables)."""
    param = next(next(iter(models.values())).parameters())
    dtype = str(param.dtype).removeprefix("torch.")
    return measure_cost_tables({dtype: models}, batch_sizes, tokens, contexts, reps, warmup)[dtype]


def measure_cost_tables(models: dict[str, dict[str, torch.nn.Module]], batch_sizes: list[int], tokens: list[int],
                        contexts: list[int], reps: int = 10, warmup: int = 2) -> dict[str, CostTable]:
    """One table per dtype of ``models`` ({dtype: {name: model}}, the target first in each): every (model, batch,
    tokens, context) combination. Interleaved across models and dtypes: per (batch, context), each repetition times
    every model of every dtype on every token count once, so a machine that slows down for a while slows the target
    and the drafts, and float32 and bfloat16, alike rather than whichever was being timed (their ratios are the cost
    model, and the choice of dtype per batch size). Each entry keeps its repeats in round order (``repeats``), so that
    a resample of the rounds keeps what a round shared (fit/batch_law.py)."""
    import torch

    from scylla.dtypes import cpu_capability
    from scylla.threads import warn_if_busy

    param = next(next(iter(next(iter(models.values())).values())).parameters())
    timed = dict(threads=torch.get_num_threads(), busy_cores=warn_if_busy(),
                 cpu_capability=cpu_capability() if param.device.type == "cpu" else None)
    tables = {d: CostTable(device=str(param.device), dtype=d, **timed) for d in models}
    flat = {(d, name): model for d, named in models.items() for name, model in named.items()}
    for b in batch_sizes:
        for c in contexts:
            caches = {key: _Forwards(model, b, c) for key, model in flat.items()}
            times: dict[tuple, list[float]] = {(key, n): [] for key in flat for n in tokens}
            for _ in range(warmup + reps):
                for (key, n), found in times.items():
                    found.append(caches[key].seconds(n))
            del caches
            for ((d, name), n), found in times.items():
                kept = found[warmup:]
                tables[d].entries.append(dict(model=name, batch=b, tokens=n, context=c,
                                              seconds=statistics.median(kept), seconds_min=min(kept),
                                              seconds_max=max(kept), repeats=kept))
    for d, table in tables.items():
        table.entries.sort(key=lambda e: list(models[d]).index(e["model"]))  # the target's entries first
    return tables


def step_cost(cost: CostTable, draft: str | None, batch: int, verify_tokens: int, draft_forwards: int = 0,
              draft_width: int = 1, bound: str = "") -> float:
    """Seconds of one speculative step / seconds of one plain target step, at this batch size: ``draft_forwards``
    forwards of the draft model named ``draft`` in the table on ``draft_width`` new tokens each (a chain of g: g
    forwards of 1; a tree: depth forwards of top_k; none for a drafter without a model, draft=None), plus one target
    forward on ``verify_tokens``; with a calibrated table, plus the per-step overhead, and per step of an average
    row (times the table's ``lag``: a batch steps until its slowest row is done). A chain drafter with mean accepted
    length MAT is predicted to run at MAT / step_cost times plain decoding. With ``bound`` "min" / "max": the lowest
    / highest ratio the repeats allow (fastest speculative forwards over the slowest plain step, and the reverse).
    InputError if the table lacks a size."""
    flip = {"min": "max", "max": "min"}.get(bound, bound)
    extra = cost.overhead.get(str(batch), {})
    drafting = (draft_forwards * cost.nearest(draft, batch, draft_width, bound=bound)
                if draft is not None and draft_forwards else 0.0)
    kind = "tree" if draft_width > 1 else "chain"
    lag = cost.lag.get(str(batch), {})
    speculative = drafting + cost.nearest("target", batch, verify_tokens, bound=bound) + extra.get(kind, 0.0)
    return speculative * lag.get(kind, 1.0) / plain_step_seconds(cost, batch, flip)


def step_cost_interval(cost: CostTable, draft: str | None, batch: int, verify_tokens: int, draft_forwards: int = 0,
                       draft_width: int = 1, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``step_cost`` with its 95% interval: (median, low, high). The interval is the percentile bootstrap of
    step_cost over the table's timing rounds (``resampled_costs``): a drawn round brings the speculative forwards
    and the plain step it is divided by together, so load that slowed a whole round cancels in the ratio, as in an
    online run's paired ratios (scylla.timing). Tables written before repeats were kept get the widest ratios their
    fastest and slowest repeats allow (``bound``)."""
    args = (draft, batch, verify_tokens, draft_forwards, draft_width)
    point = step_cost(cost, *args)
    here = [e for e in cost.entries if e["batch"] == batch]
    if not all(e.get("repeats") for e in here):
        return point, step_cost(cost, *args, bound="min"), step_cost(cost, *args, bound="max")
    import numpy as np

    draws = step_cost(resampled_costs(replace(cost, entries=here), resamples, np.random.default_rng(seed)), *args)
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def resampled_costs(cost: CostTable, resamples: int, rng: "np.random.Generator") -> CostTable:
    """The table as ``resamples`` bootstrap draws at once: every entry's ``seconds`` an array (resamples,) of medians
    of its repeats drawn with replacement by round (per batch size and context, one draw of rounds serves every entry
    there, as they were timed interleaved). ``step_cost`` takes it as it is and returns an array. Entries without
    repeats (tables older than them) keep their median."""
    import numpy as np

    entries, picks = [], {}
    for e in cost.entries:
        repeats = e.get("repeats")
        if not repeats:
            entries.append({**e, "seconds": np.full(resamples, float(e["seconds"]))})
            continue
        key = (e["batch"], e["context"], len(repeats))
        if key not in picks:
            picks[key] = rng.integers(len(repeats), size=(resamples, len(repeats)))
        entries.append({**e, "seconds": np.median(np.asarray(repeats, dtype=float)[picks[key]], axis=1)})
    return replace(cost, entries=entries)


def plain_step_seconds(cost: CostTable, batch: int, bound: str = "") -> float:
    """Seconds of one plain decoding step at this batch size in the table's dtype: a 1-token target forward (its
    median, or with ``bound`` its fastest / slowest repeat), with the calibrated per-step overhead and batch lag
    (step_cost's denominator)."""
    step = cost.nearest("target", batch, 1, bound=bound) + cost.overhead.get(str(batch), {}).get("plain", 0.0)
    return step * cost.lag.get(str(batch), {}).get("plain", 1.0)


def draft_cost_name(record: dict, cost: CostTable | None = None) -> str | None:
    """The cost table's name of an eval record's draft model: an EAGLE head by its depth and width (``head_name``;
    with ``cost``, as that table names it: CostTable.head), a truncated target or draft LM by its spec (as ``scylla
    costs --draft`` names it), None for plain decoding and prompt lookup (no model forward)."""
    if record["drafter_type"] == "eagle":
        width = record.get("draft_width") or None
        return cost.head(record["draft_layers"], width) if cost else head_name(record["draft_layers"], width or 0)
    return None if record["drafter_type"] in ("none", "prompt-lookup") else record["method"]


def _forward_seconds(cost: "CostTable", record: dict) -> float:
    """Seconds of the forwards of one step of this online eval record's method, from the table (step_cost without
    the correction, times one plain step)."""
    bare, b = replace(cost, overhead={}, lag={}), record["batch_size"]
    draft = draft_cost_name(record, cost)
    forwards = record.get("tree_depth") or record.get("num_draft_tokens") or 0
    verify = (record.get("tree_total_tokens") or record.get("num_draft_tokens") or 0) + 1
    ratio = step_cost(bare, draft, b, verify, forwards, record.get("tree_top_k") or 1)
    return ratio * bare.nearest("target", b, 1)


def batch_lag(record: dict) -> float | None:
    """Steps a batch took / steps its average row needed, over an eval record's batches of prompts (consecutive
    ``batch_size`` prompts; the per-prompt ``prompt_target_calls``): a batch steps until its slowest row is done, so
    rows that accept more wait (at batch 1, and for plain decoding without early stops, 1). None without the counts.

    sum over batches of max(calls) / sum over batches of mean(calls)."""
    calls, b = record.get("prompt_target_calls"), record["batch_size"]
    if not calls:
        return None
    chunks = [calls[i : i + b] for i in range(0, len(calls), b)]
    return sum(max(c) for c in chunks) / sum(sum(c) / len(c) for c in chunks)


def calibrate(cost: "CostTable", records: list[dict]) -> "CostTable":
    """The table with a per-step overhead and lag fitted from online eval records: per batch size, separately for
    plain decoding, chains and trees, the median over records of (their measured seconds per decoding step,
    ``step_seconds``, prefill excluded - the table's forwards), and of their ``batch_lag``. Records in another dtype
    than the table's, and of drafters whose costs the table lacks, are skipped."""
    gaps: dict[str, dict[str, list[float]]] = {}
    lags: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r.get("mode") != "online" or not r.get("step_seconds") or r.get("dtype", "float32") != cost.dtype:
            continue
        try:
            predicted = _forward_seconds(cost, r)
        except InputError:
            continue
        measured, b = r["step_seconds"], str(r["batch_size"])
        kind = "plain" if r["method"] == "none" else "tree" if r.get("tree_depth") else "chain"
        gaps.setdefault(b, {}).setdefault(kind, []).append(measured - predicted)
        if (lag := batch_lag(r)) is not None:
            lags.setdefault(b, {}).setdefault(kind, []).append(lag)

    def medians(found: dict) -> dict:
        return {b: {k: float(statistics.median(v)) for k, v in kinds.items()} for b, kinds in found.items()}

    return replace(cost, overhead={**cost.overhead, **medians(gaps)}, lag={**cost.lag, **medians(lags)})


def untrained_heads(target: torch.nn.Module, layers: list[int], width: int | list[int] = 0,
                    draft_vocab: int = 0) -> dict[str, torch.nn.Module]:
    """EAGLE-style heads of these depths x widths for ``target``, untrained, named ``head:L@W`` (``head_name``) as
    in cost tables: a head's cost depends on its shape only, so the cost model measures these before any head is
    trained. width and draft_vocab 0: the target's (a draft vocabulary shrinks the head's LM head, most of a step on
    a 262k vocabulary)."""
    from scylla.drafters.eagle import EagleConfig, EagleHead

    param = next(target.parameters())
    heads = {}
    for w in width if isinstance(width, list) else [width]:
        for n in layers:
            config = EagleConfig.for_target(target, num_layers=n, width=w, draft_vocab_size=draft_vocab)
            heads[head_name(n, config.width)] = EagleHead(config, target.get_input_embeddings()).to(param.device,
                                                                                                   param.dtype)
    return heads


def predicted_speedup(mat: float, g: int, draft_cost: float, verify_cost: float) -> float:
    """MAT / (g c + v): c = one draft step and v = verifying g+1 tokens, both relative to one target step."""
    return mat / (g * draft_cost + verify_cost)
