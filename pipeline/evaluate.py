"""The evaluation stage: drafts of a run directory (and baselines) on tasks x temperatures x batch sizes x draft
shapes (chains of g tokens, dynamic trees).

Each measurement becomes one "eval" record (docs/records.md) keyed by task, temperature, batch size, method, draft
shape and mode:
- mode "online": decoding by the engine, timed; the speed-up is over plain decoding measured in the same call, at
  the same task, temperature and batch size, in interleaved rounds with paired ratios (scylla.timing): the record
  holds the median ratio, its 95% interval and a verdict ("no measurable difference" when the interval holds 1).
  Plain decoding is timed in every dtype of ``baseline_dtypes`` (float32 and bfloat16 on a CPU with bf16 units,
  scylla.dtypes.plain_dtypes) and every speed-up is over the faster of them (``baseline_dtype``), so that a dtype
  never wins by slowing the baseline.
- mode "replay" (T=0 only, ``replay=True``): exact counts by scylla.replay (the fast path for sweeps), no timing.
With a cost table (scylla.costs) each record also carries the speed-up the cost model predicts from its MAT.
Finished measurements (their record exists) are skipped, so a killed evaluation resumes. ``best_settings`` reads
the records back and picks the fastest draft shape per batch size (the batch-size study, experiments/batch.yaml).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scylla.claims import claim, claim_path, report_held
from scylla.config import Config
from scylla.costs import CostTable, step_cost
from scylla.data.prompt_sets import PROMPT_SETS, problem_set
from scylla.data.tasks import get_task
from scylla.drafters.spec import drafter_from_spec, parse_spec
from scylla.drafters.tree import TREE_FORM, TreeShape, parse_tree
from scylla.dtypes import cpu_capability, dtype_name, plain_dtypes
from scylla.engine import SpeculativeDecoder
from scylla.errors import ConfigError, InputError, ScyllaError
from scylla.metrics import DecodeStats
from scylla.models import load_model, target_quantization
from scylla.prompts import encode_prompts, prompt_id
from scylla.records import (append_record, find_checkpoints, method_as_read, new_record, read_records, record_key,
                            records_path)
from scylla.replay import replay
from scylla.threads import warn_if_busy
from scylla.timing import Speedup, paired_speedup, rounds_for

DEFAULT_BASELINES = ("none", "prompt-lookup")
# Eval settings outside the record key: records measured with other values are not the same measurement.
CHANGEABLE = ("n_prompts", "max_new_tokens", "seed", "target_quantization", "device", "cpu_capability")
SETTING = ("task", "prompt_set", "temperature", "batch_size", "mode")  # one setting: measured under one claim
IDENTITY = ("run_id", "sweep", "drafter_type", "draft_layers", "draft_width", "draft_params",
            "draft_params_with_embeddings", "train_tokens", "data", "config_hash")
SHAPE_FORM = f"chain:G (G draft tokens) or tree:{TREE_FORM}"


@dataclass(frozen=True)
class DraftShape:
    """A chain of ``num_draft_tokens`` tokens, or a dynamic ``tree``."""

    num_draft_tokens: int | None = None
    tree: TreeShape | None = None

    @property
    def label(self) -> str:
        return f"tree:{self.tree.label()}" if self.tree else f"chain:{self.num_draft_tokens}"

    @property
    def draft_forwards(self) -> int:
        """Draft-model forwards per step: one per chain token, one per tree depth."""
        return self.tree.depth if self.tree else self.num_draft_tokens

    @property
    def draft_width(self) -> int:
        """New tokens per draft-model forward: 1 for a chain, top_k for a tree."""
        return self.tree.top_k if self.tree else 1

    @property
    def verify_tokens(self) -> int:
        """Tokens the target scores per step: the draft plus the newest committed token."""
        return (self.tree.total_tokens if self.tree else self.num_draft_tokens) + 1

    def fields(self) -> dict:
        t = self.tree
        return dict(draft_shape=self.label, num_draft_tokens=None if t else self.num_draft_tokens,
                    tree_top_k=t and t.top_k, tree_depth=t and t.depth, tree_total_tokens=t and t.total_tokens)


def parse_shape(text: str) -> DraftShape:
    kind, _, arg = text.strip().partition(":")
    if kind == "chain" and arg.isdigit() and int(arg) >= 1:
        return DraftShape(num_draft_tokens=int(arg))
    if kind == "tree" and arg:
        return DraftShape(tree=parse_tree(arg))
    raise InputError(f"bad draft shape {text!r}: use {SHAPE_FORM}")


@dataclass
class EvalConfig(Config):
    """What ``scylla eval`` measures; the YAML form (experiments/batch.yaml) has these keys."""

    run_dir: str
    drafts: list[str] | None = None  # draft specs; None: every trained draft of run_dir
    target: str | None = None  # None: the target of run_dir's drafts, else smollm2-135m
    tasks: list[str] = field(default_factory=lambda: ["gsm", "code"])
    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.6])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    shapes: list[str] = field(default_factory=lambda: ["chain:2"])
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    prompts: int = 16  # a law fitted on these needs 16 or more prompts as its units (docs/fitting.md)
    prompt_set: str = "fit"  # fit | select | confirm: disjoint sets of each task's problems (scylla.data.prompt_sets)
    repeats: int = 3  # online: interleaved timing rounds of plain decoding and every method (scylla.timing)
    max_new_tokens: int = 64
    replay: bool = False
    cost: str | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None  # the dtype of the target and drafts; None: scylla.dtypes.default_dtype
    baseline_dtypes: list[str] | None = None  # plain decoding's, online; None: scylla.dtypes.plain_dtypes
    selection: dict | None = None  # a Scylla configuration's choice per batch size (pipeline/select.py); not read here

    def validate(self) -> None:
        for name in ("tasks", "temperatures", "batch_sizes", "shapes"):
            self.require(bool(getattr(self, name)), name, "is empty: give at least one value")
        self.require(min(self.batch_sizes) >= 1, "batch_sizes", f"must be >= 1, got {self.batch_sizes}")
        self.require(self.prompts >= 1, "prompts", f"must be >= 1, got {self.prompts}")
        self.require(self.prompt_set in PROMPT_SETS, "prompt_set",
                     f"must be one of {', '.join(PROMPT_SETS)}, got {self.prompt_set!r}")
        self.require(self.repeats >= 1, "repeats", f"must be >= 1, got {self.repeats}")
        self.require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        self.require(min(self.temperatures) >= 0, "temperatures", f"must be >= 0, got {self.temperatures}")
        for dtype in [self.dtype] + list(self.baseline_dtypes or []):
            try:
                dtype_name(dtype, self.device)
            except ScyllaError as err:
                raise ConfigError(f"dtype: {err}") from None
        for key, check, values in (("tasks", get_task, self.tasks), ("shapes", parse_shape, self.shapes),
                                   ("drafts", parse_spec, self.drafts or []),
                                   ("baselines", parse_spec, self.baselines)):
            for value in values:
                try:
                    check(value)
                except ScyllaError as err:
                    raise ConfigError(f"{key}: {err}") from None


def _trained_drafts(run_dir: Path) -> list[dict]:
    """Train records whose draft folder exists."""
    if not records_path(run_dir).exists():
        raise InputError(f"{run_dir} has no records.jsonl: train drafts there first (scylla sweep)")
    drafts = find_checkpoints(run_dir)
    if not drafts:
        raise InputError(f"{run_dir} has no trained draft folders to evaluate")
    return drafts


def _train_record_of(spec: str) -> dict | None:
    """For ``draft:FOLDER``: the train record of that folder, from the run directory holding it, if any."""
    folder = Path(spec.partition(":")[2]).resolve()
    if not spec.startswith("draft:") or not folder.is_dir():
        return None
    for parent in folder.parents:
        if records_path(parent).exists():
            return next((r for r in find_checkpoints(parent) if Path(r["checkpoint"]).resolve() == folder), None)
    return None


def _baseline_identity(method: str, seed: int) -> dict:
    return dict(run_id="baseline", sweep="", config_hash=None, drafter_type=method, draft_layers=0, draft_width=0,
                draft_params=0, draft_params_with_embeddings=0, train_tokens=0, data="", seed=seed)


def _predicted(cost, method: str, shape: DraftShape, batch: int, mat: float) -> float | None:
    """The cost model's speed-up for this MAT, or None when the table lacks the draft or the sizes."""
    if cost is None or method == "none":
        return None
    draft = None if method == "prompt-lookup" else method  # a lookup costs no model forward
    try:
        return mat / step_cost(cost, draft, batch, shape.verify_tokens, shape.draft_forwards, shape.draft_width)
    except ScyllaError:
        return None


class _Runner:
    """Decodes one method on one task's prompts, batch by batch (replayed when given the greedy references);
    each draft loads once, since shapes are drafter settings. ``targets``: the target in each dtype it runs in
    (``config.dtype`` first; plain decoding's other baseline dtypes load when first timed)."""

    def __init__(self, config: EvalConfig, targets: dict, tokenizer, texts: dict[str, list[str]], target_name: str):
        self.config, self.targets, self.tokenizer, self.texts = config, targets, tokenizer, texts
        self.target_name = target_name
        self.dtype = next(iter(targets))  # the methods' dtype
        self.cache: dict = {}
        self.features: dict = {}  # the target's hidden states per replayed prompt, shared by every head

    @property
    def target(self):
        return self.targets[self.dtype]

    def target_in(self, dtype: str):
        if dtype not in self.targets:
            self.targets[dtype] = load_model(self.target_name, device=self.config.device, dtype=dtype)[0]
        return self.targets[dtype]

    def drafter(self, spec: str, shape: DraftShape):
        if (spec, shape) not in self.cache:
            self.cache[(spec, shape)] = drafter_from_spec(spec, self.target, shape.num_draft_tokens,
                                                          device=self.config.device, dtype=self.dtype,
                                                          tree=shape.tree)
        return self.cache[(spec, shape)]

    def _chunks(self, task: str, batch: int):
        """(first prompt index, input_ids, attention_mask) per batch of the task's prompts."""
        texts = self.texts[task]
        for start in range(0, len(texts), batch):
            yield start, *encode_prompts(self.tokenizer, texts[start : start + batch], device=self.config.device)

    def _kwargs(self) -> dict:
        return dict(max_new_tokens=self.config.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                    pad_token_id=self.tokenizer.pad_token_id)

    def _generate(self, method: str, shape: DraftShape, ids, mask, temperature: float, start: int,
                  dtype: str | None = None, max_new_tokens: int | None = None):
        d = None if method == "none" else self.drafter(method, shape)
        target = self.target_in(dtype or self.dtype)
        kwargs = {**self._kwargs(), **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
        return SpeculativeDecoder(target, d).generate(ids, mask, temperature=temperature,
                                                      seed=self.config.seed + start, **kwargs)

    def __call__(self, method: str, shape: DraftShape, task: str, temperature: float, batch: int,
                 references: list[list[int]] | None = None) -> tuple[DecodeStats, list[list[int]]]:
        """Stats and generated tokens of ``method`` on ``task`` (one untimed pass, or replayed on ``references``)."""
        d = None if method == "none" else self.drafter(method, shape)
        parts, generated = [], []
        for start, ids, mask in self._chunks(task, batch):
            if references is not None:
                parts.append(replay(self.target, d, ids, mask, references=references[start : start + batch],
                                    feature_cache=self.features, **self._kwargs()))
            else:
                out = self._generate(method, shape, ids, mask, temperature, start)
                parts.append(out.stats)
                generated += out.generated
        return DecodeStats.merge(parts), generated

    def rounds(self, methods: list[tuple[str, DraftShape]], task: str, temperature: float, batch: int,
               plain_dtypes: list[str]) -> tuple[list[DecodeStats], list[tuple[float, float, float]],
                                                 list[tuple[Speedup, list[list[float]]]], str]:
        """Plain decoding in each of ``plain_dtypes`` and ``methods`` (in the runner's dtype) timed in interleaved
        rounds (``config.repeats``, raised by scylla.timing.rounds_for where the prompts make few batches): per run,
        plain ones first, its first round's stats, its median tokens/s, seconds per decoding step and paired speed-up
        with the prefill excluded (what the cost model predicts) over rounds, and its paired speed-up over the
        baseline with the ratios behind it ([chunk][round]); and the baseline's dtype: the plain decoding with the
        highest median tokens/s."""
        runs = [("none", DraftShape(num_draft_tokens=0), d) for d in plain_dtypes]
        runs += [(m, shape, self.dtype) for m, shape in methods]
        chunks = list(self._chunks(task, batch))
        repeats = rounds_for(self.config.repeats, len(chunks))
        timed = [[[None] * repeats for _ in chunks] for _ in runs]  # [run][chunk][round]
        for method, shape, dtype in runs:  # untimed: a first call compiles kernels (oneDNN's bf16 ones for a while)
            self._generate(method, shape, *chunks[0][1:], temperature, chunks[0][0], dtype, max_new_tokens=2)
        # Bars below eval's move the cursor up to redraw (ESC [A), which a log keeps: only a terminal shows them.
        bar = tqdm(total=repeats * len(chunks), desc=f"{task} batch {batch}: timing rounds", unit="batch",
                   leave=False, disable=not sys.stderr.isatty())
        for k in range(repeats):
            for c, (start, ids, mask) in enumerate(chunks):
                bar.update()
                for i in list(range(len(runs)))[:: -1 if k % 2 else 1]:
                    method, shape, dtype = runs[i]
                    timed[i][c][k] = self._generate(method, shape, ids, mask, temperature, start, dtype).stats
        bar.close()
        merged = [[DecodeStats.merge([run[c][k] for c in range(len(chunks))]) for k in range(repeats)]
                  for run in timed]  # [run][round]
        base = max(range(len(plain_dtypes)), key=lambda i: np.median([m.tokens_per_second for m in merged[i]]))

        def paired(i: int, rate: str) -> list[list[float]]:
            return [[getattr(timed[i][c][k], rate) / getattr(timed[base][c][k], rate) for k in range(repeats)]
                    for c in range(len(chunks))]

        ratios = [paired(i, "tokens_per_second") for i in range(len(runs))]
        tps = [(float(np.median([m.tokens_per_second for m in run])),
                float(np.median([m.step_seconds or 0.0 for m in run])),
                float(np.median(paired(i, "decode_tokens_per_second")))) for i, run in enumerate(merged)]
        return [run[0] for run in merged], tps, [(paired_speedup(r), r) for r in ratios], plain_dtypes[base]


def _metrics(s: DecodeStats, predicted: float | None, prompt_ids: list[str], tps: float | None = None,
             speedup: Speedup | None = None, rounds: int | None = None,
             ratios: list[list[float]] | None = None) -> dict:
    """The metric fields of an eval record, with the per-prompt counts; the timing ones (``tps``, ``speedup``: see
    _Runner.rounds) null for replay."""
    return dict(**s.per_prompt(prompt_ids), new_tokens=s.new_tokens, target_calls=s.target_calls,
                mean_accepted_length=s.mean_accepted_length,
                acceptance_rate=s.acceptance_rate if s.drafted else None,
                per_position_acceptance=s.per_position_acceptance, tokens_per_second=tps,
                speedup=speedup.median if speedup else None,
                speedup_ci95=list(speedup.ci95) if speedup else None,
                speedup_verdict=speedup.verdict if speedup else None, timing_rounds=rounds,
                speedup_ratios=[r for chunk in ratios for r in chunk] if ratios else None,
                predicted_speedup=predicted)


def _sources(config: EvalConfig, run_dir: Path) -> list[tuple[str, dict | None]]:
    """(draft spec, its train record or None) for every draft to evaluate."""
    if config.drafts is None:
        return [(f"draft:{r['checkpoint']}", r) for r in _trained_drafts(run_dir)]
    sources = [(spec, _train_record_of(spec)) for spec in config.drafts]
    if not sources and not config.baselines:
        raise InputError("nothing to evaluate: no drafts and no baselines")
    return sources


def evaluate(config: EvalConfig) -> int:
    """Append eval records for the drafts and baselines of ``config``; returns how many were written. Each setting
    (task, temperature, batch size) is measured under a claim (scylla.claims), so any number of processes running
    the same evaluation on one run folder (a Slurm array, a hostfile launch, two terminals) share the settings and
    none is measured twice; a setting another process holds is left to it and named at the end."""
    run_dir = Path(config.run_dir)
    if config.device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():  # a launcher's process: its own GPU
        config = replace(config, device=f"cuda:{os.environ['LOCAL_RANK']}")
    sources = _sources(config, run_dir)
    has_records = (run_dir / "records.jsonl").exists()
    trained = read_records(run_dir, kind="train") if has_records else []
    target_name = config.target or (trained[0]["target"] if trained else "smollm2-135m")
    cost = CostTable.load(config.cost) if config.cost else None
    problems = {task: problem_set(task, config.prompt_set, config.prompts) for task in config.tasks}
    texts = {task: [p.prompt for p in ps] for task, ps in problems.items()}
    # each prompt's template where the task has templates (gsm): the fit's independent unit (fit/prompt_unit.py)
    templates = {task: {"prompt_templates": [p.template for p in ps]} if any(p.template for p in ps) else {}
                 for task, ps in problems.items()}
    dtype = dtype_name(config.dtype, config.device)
    baseline_dtypes = [dtype_name(d, config.device) for d in config.baseline_dtypes or plain_dtypes(config.device)]
    baseline_dtypes = list(dict.fromkeys(baseline_dtypes + [dtype]))  # plain decoding in the methods' own dtype too
    target, tokenizer = load_model(target_name, device=config.device, dtype=dtype)
    quantization = target_quantization(target_name, target)
    capability = cpu_capability() if torch.device(config.device).type == "cpu" else None
    shapes = [parse_shape(s) for s in config.shapes]
    methods = [(b, None, shape) for b in config.baselines if b != "none" for shape in shapes]
    methods += [(spec, source, shape) for spec, source in sources for shape in shapes]
    run = _Runner(config, {dtype: target}, tokenizer, texts, target_name)
    timed = {}  # online settings are timed: the records say on how many threads and how busy the machine was
    if not (config.replay and set(config.temperatures) == {0.0}):
        timed = dict(threads=torch.get_num_threads(), busy_cores=warn_if_busy())
        if cost is not None and cost.dtype != dtype:
            print(f"scylla: warning: {config.cost} was measured in {cost.dtype} and this evaluation runs in {dtype}: "
                  f"predicted speed-ups are for {cost.dtype} (measure a table with scylla costs --dtype {dtype})",
                  file=sys.stderr)
        if cost is not None and config.device == "cpu" and cost.threads not in (None, timed["threads"]):
            print(f"scylla: warning: {config.cost} was measured on {cost.threads} thread(s) and this evaluation runs on "
                  f"{timed['threads']}: the relative costs of a step change with the threads (the demo's cost model "
                  f"erred by +20% to +40% more on 1 thread with a 2-thread table), so predicted speed-ups are for "
                  f"{cost.threads}; measure a table with scylla costs --threads {timed['threads']}", file=sys.stderr)

    def identity(method, source):
        base = source or _baseline_identity(method, config.seed)
        # config_hash: None in records older than it; train_seed: the draft's training seed (lines across sizes)
        return {**{k: base.get(k) for k in IDENTITY}, "train_seed": source.get("seed") if source else None}

    def measure(settings: dict) -> int:
        """Measure every method of ``methods`` not yet recorded at this setting (under its claim), and plain decoding;
        append their records; returns how many were written."""
        task, temperature, batch, mode = (settings[k] for k in ("task", "temperature", "batch_size", "mode"))
        plain_shape = DraftShape(num_draft_tokens=0)
        # read under the claim: a process that held it before may have finished some of the work
        previous = read_records(run_dir, kind="eval") if records_path(run_dir).exists() else []
        done = {record_key(r) for r in previous}
        written = 0

        def record(method, source, shape, in_dtype=dtype, **metrics):
            return new_record("eval", **identity(method, source), target=target_name, seed=config.seed,
                              method=method_as_read(method), **settings, dtype=in_dtype, **shape.fields(),
                              **templates[task], **metrics)

        _refuse_changed_settings(run_dir, previous, {**settings, "seed": config.seed})

        todo = [m for m in methods if record_key(record(*m)) not in done]
        # online: plain decoding in each baseline dtype (the faster is every speed-up's baseline); replay: its own
        plain_runs = baseline_dtypes if mode == "online" else [dtype]
        plain_todo = [d for d in plain_runs if record_key(record("none", None, plain_shape, d)) not in done]
        if not todo and not plain_todo:
            return 0
        ids = [prompt_id(t) for t in texts[task]]
        if mode == "online":  # every method timed against plain decoding in interleaved rounds
            stats, tps, speedups, base = run.rounds([(m, shape) for m, _, shape in todo], task, temperature, batch,
                                                    plain_runs)
            runs = [("none", None, plain_shape, d) for d in plain_runs] + [(*m, dtype) for m in todo]
            for (method, source, shape, in_dtype), s, t, (up, ratios) in zip(runs, stats, tps, speedups):
                if method == "none" and in_dtype not in plain_todo:
                    continue
                predicted = _predicted(cost, method, shape, batch, s.mean_accepted_length)
                new = record(method, source, shape, in_dtype,
                             **_metrics(s, predicted, ids, t[0], up, len(ratios[0]), ratios), step_seconds=t[1],
                             decode_speedup=t[2], prefill_share=s.prefill_seconds / s.wall_seconds,
                             baseline_dtype=base, **timed)
                written += append_record(run_dir, new)
            return written
        todo = [("none", None, plain_shape)] * bool(plain_todo) + todo
        # Replay: plain decoding gives the greedy references every draft is replayed on.
        plain, references = run("none", plain_shape, task, temperature, batch)
        for method, source, shape in tqdm(todo, desc=f"{task} T={temperature} batch {batch}", unit="method",
                                          leave=False, disable=not sys.stderr.isatty()):
            s = plain if method == "none" else run(method, shape, task, temperature, batch, references)[0]
            predicted = _predicted(cost, method, shape, batch, s.mean_accepted_length)
            new = record(method, source, shape, **_metrics(s, predicted, ids))
            written += append_record(run_dir, new)
        return written

    written, elsewhere = 0, []
    grid = [(t, temp, b) for t in config.tasks for temp in config.temperatures for b in config.batch_sizes]
    for task, temperature, batch in tqdm(grid, desc="eval", unit="setting"):
        mode = "replay" if config.replay and temperature == 0 else "online"
        if mode == "replay" and batch != config.batch_sizes[0]:
            continue  # replay counts do not depend on the batch size: one set of records per task
        settings = dict(task=task, temperature=temperature, batch_size=batch, mode=mode, device=config.device,
                        prompt_set=config.prompt_set, n_prompts=len(texts[task]), max_new_tokens=config.max_new_tokens,
                        target_quantization=quantization, cpu_capability=capability)
        with claim(_claim_path(run_dir, settings)) as holder:
            if holder:  # another process (a shard, a second eval) is measuring this setting now
                elsewhere.append(f"{task} T={temperature:g} batch {batch} ({holder})")
                continue
            written += measure(settings)
    report_held(elsewhere)
    return written


def _refuse_changed_settings(run_dir: Path, previous: list[dict], settings: dict) -> None:
    """One InputError line when the folder holds records of this setting measured otherwise (CHANGEABLE: fields
    outside the record key), which a re-run would skip as done and a fit would mix."""
    for r in previous:
        if all(r.get(k) == settings[k] for k in SETTING):
            changed = [k for k in CHANGEABLE if r.get(k) is not None and _same(k, r[k]) != _same(k, settings.get(k))]
            if changed:
                k = changed[0]
                raise InputError(f"{run_dir} holds {r['task']} T={r['temperature']:g} batch {r['batch_size']} "
                                 f"({r['mode']}, prompt set {r['prompt_set']}) records measured with {k} {r[k]!r}, "
                                 f"and this evaluation asks for {settings.get(k)!r}: evaluate into another run folder "
                                 f"(or with {k} {r[k]!r})")


def _same(name: str, value):
    """A setting's value as compared: a device by its type (cuda:0 and cuda:1 measure the same)."""
    return str(value).split(":")[0] if name == "device" else value


def _claim_path(run_dir: Path, settings: dict) -> Path:
    """The claim (scylla.claims) of one eval setting."""
    return claim_path(run_dir, *(settings[k] for k in SETTING))


def best_settings(run_dir: str | Path, task: str | None = None, temperature: float | None = None) -> list[dict]:
    """Per (method, batch size): the online eval record with the highest tokens/s over draft shapes, i.e. the
    best draft width at that batch size (the data of the third law). Sorted by method, then batch size."""
    where = {k: v for k, v in dict(task=task, temperature=temperature, mode="online").items() if v is not None}
    best: dict = {}
    for r in read_records(run_dir, kind="eval", where=where):
        if r["method"] == "none" or r.get("tokens_per_second") is None:
            continue
        k = (r["method"], r["task"], r["temperature"], r["batch_size"])
        if k not in best or r["tokens_per_second"] > best[k]["tokens_per_second"]:
            best[k] = r
    return [best[k] for k in sorted(best, key=lambda k: (k[0], k[1], k[2], k[3]))]
