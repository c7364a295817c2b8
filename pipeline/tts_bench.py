"""``scylla tts-bench``: speculative decoding methods under test-time scaling (SpecTTS-Bench protocols).

Config file (experiments/tts.yaml); the top level holds the full settings, ``reduced:`` the default run:

    name: tts                      # names the run directory (runs/NAME, runs/NAME-reduced) and the records' sweep
    target: smollm2-135m
    methods: {plain: none, sps: truncated:2, head: "run:runs/X@eagle-layers2", pld: prompt-lookup, ...}
    tasks: [gsm, rg:chain_sum, code]
    paradigms:
      best_of_n: {n: 4, temperature: 0.6, batched: false}       # batched: true, false or [true, false]
      multi_round: {rounds: 2, temperatures: [0.0, 0.6], template: "...{question}...{previous}..."}
    problems: 30
    max_new_tokens: 1024
    reduced: {problems: 2, ...}    # replaces top-level values; paradigm sections are merged key by key

A method is a drafter spec (scylla.drafters.spec) or {spec: SPEC, num_draft_tokens: K, tree: "top_k=..,depth=..,
total_tokens=.."} (a tree: EAGLE-2 dynamic tree drafting, or several matches as branches for prompt lookup). ``run:RUN_DIR[@RUN_ID]``
inside a spec stands for the newest trained draft folder of that run directory (its train records). Plain decoding
(spec ``none``) is always measured, first, in every setting: speed-ups are over it, in the same run. One "tts"
record per task x paradigm x temperature x batch size x method; records already present are skipped (the plain
baseline is re-measured when anything in its setting is missing). The run directory remembers the settings it was
made with (tts_config.json) and refuses to mix in records made with others. A drafter with a shared pool (suffix,
hybrid) starts each problem with an empty pool and receives that problem's samples or rounds (scylla.tts hooks).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from paper_figs.tts import tts_table_rows
from scylla.atomic import atomic_path, write_json_atomic
from scylla.claims import claim, claim_path, report_held
from scylla.data.tasks import get_task
from scylla.drafters.eagle import is_head_folder
from scylla.drafters.eagle3_format import is_eagle3_folder
from scylla.drafters.spec import drafter_from_spec, parse_spec
from scylla.drafters.tree import TreeShape, parse_tree
from scylla.dtypes import cpu_capability, dtype_name
from scylla.engine import SpeculativeDecoder
from scylla.config import Config, read_yaml
from scylla.errors import ConfigError, InputError, ScyllaError
from scylla.metrics import DecodeStats
from scylla.models import load_model, target_quantization
from scylla.prompts import encode_prompts
from scylla.records import append_record, find_checkpoints, new_record, read_records, record_key, records_path
from scylla.sampling import SamplingConfig
from scylla.threads import warn_if_busy
from scylla.tts import DEFAULT_ROUND2_TEMPLATE, best_of_n, check_template, multi_round


PARADIGMS = ("best_of_n", "multi_round")
PLAIN = "none"
TABLE_FILE = "tts_table.md"
CONFIG_FILE = "tts_config.json"
_GUARDED = ("target", "device", "dtype", "problems", "max_new_tokens", "seed", "top_k", "top_p", "repetition_ngram",
            "template")


@dataclass
class Method:
    """label (the record's method), the drafter spec with run: resolved, its draft length (None: the drafter's
    default), the train record of its trained draft (None: untrained) and its tree shape (None: chains)."""
    label: str
    spec: str
    num_draft_tokens: int | None = None
    source: dict | None = None
    tree: TreeShape | None = None

    @property
    def draft_shape(self) -> str:
        return f"tree:{self.tree.label()}" if self.tree else f"chain:{self.num_draft_tokens or 'default'}"


@dataclass
class Setting:
    """One protocol setting: paradigm label (best-of-4, multi-round-2), temperature, batch size, protocol kwargs."""
    paradigm: str
    temperature: float
    batch_size: int
    kwargs: dict


@dataclass
class BenchConfig:
    name: str
    target: str
    methods: list[Method]
    tasks: list[str]
    settings: list[Setting]
    problems: int
    max_new_tokens: int
    device: str = "cpu"
    dtype: str | None = None
    seed: int = 0
    top_k: int = 0
    top_p: float = 1.0
    repetition_ngram: int = 4
    template: str = ""
    reduced: bool = True
    num_draft_tokens: int | None = None


@dataclass
class MethodConfig(Config):
    """A method's section: a drafter spec, its draft length, a tree shape."""

    spec: str
    num_draft_tokens: int | None = None
    tree: str | None = None

    def validate(self) -> None:
        self.require(bool(self.spec), "spec", "needs a drafter spec string")
        self.require(self.num_draft_tokens is None or self.num_draft_tokens >= 1, "num_draft_tokens",
                     f"must be an integer >= 1, got {self.num_draft_tokens}")
        if self.tree:
            _as_config_error("tree", parse_tree, self.tree)


@dataclass
class BestOfNConfig(Config):
    n: int = 4
    temperature: float = 0.6
    batched: bool | list[bool] = False  # true: the N samples as one batch; false: one by one; both: [true, false]

    def validate(self) -> None:
        self.require(self.n >= 1, "n", f"must be an integer >= 1, got {self.n}")
        self.require(self.batched != [], "batched", "must be true, false or a list of them")


@dataclass
class MultiRoundConfig(Config):
    rounds: int = 2
    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.6])
    template: str = DEFAULT_ROUND2_TEMPLATE

    def validate(self) -> None:
        self.require(self.rounds >= 1, "rounds", f"must be an integer >= 1, got {self.rounds}")
        self.require(bool(self.temperatures), "temperatures", "must be a non-empty list")
        _as_config_error("template", check_template, self.template)


@dataclass
class ParadigmsConfig(Config):
    best_of_n: BestOfNConfig | None = None
    multi_round: MultiRoundConfig | None = None

    def validate(self) -> None:
        self.require(self.best_of_n is not None or self.multi_round is not None, "paradigms",
                     f"must name at least one of {', '.join(PARADIGMS)}")


@dataclass
class TTSBenchConfig(Config):
    """The YAML schema of a tts-bench config (see the module docstring)."""

    name: str = ""
    target: str = "smollm2-135m"
    device: str | None = None
    dtype: str | None = None
    methods: dict = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    paradigms: ParadigmsConfig = field(default_factory=ParadigmsConfig)  # none named: an error
    problems: int = 8
    max_new_tokens: int = 256
    num_draft_tokens: int | None = None
    seed: int = 0
    top_k: int = 0
    top_p: float = 1.0
    repetition_ngram: int = 4
    reduced: dict = field(default_factory=dict)

    def validate(self) -> None:
        require = self.require
        require(not self.name or re.fullmatch(r"[\w.-]+", self.name) is not None, "name",
                f"must be a word, got {self.name!r}")
        require(bool(self.target), "target", "must name a model")
        require(self.num_draft_tokens is None or self.num_draft_tokens >= 1, "num_draft_tokens",
                f"must be an integer >= 1, got {self.num_draft_tokens}")
        for key in ("problems", "max_new_tokens", "repetition_ngram"):
            require(getattr(self, key) >= 1, key, f"must be an integer >= 1, got {getattr(self, key)}")
        require(self.seed >= 0 and self.top_k >= 0, "seed", "seed and top_k must be >= 0")
        require(bool(self.tasks), "tasks", "must be a non-empty list of task names")
        for task in self.tasks:
            _as_config_error("tasks", get_task, task)
        require(bool(self.methods), "methods", "must map labels to drafter specs, e.g. {plain: none, pld: "
                "prompt-lookup}")
        temperatures = [*([self.paradigms.best_of_n.temperature] if self.paradigms.best_of_n else []),
                        *(self.paradigms.multi_round.temperatures if self.paradigms.multi_round else [])]
        for t in temperatures:
            _as_config_error("paradigms", SamplingConfig, t, self.top_k, self.top_p)
        for key in ("name", "reduced"):
            require(key not in self.reduced, "reduced", f"unknown key {key!r}: reduced replaces run settings only")


def _as_config_error(key: str, check, *args):
    """``check(*args)``, with its InputError re-raised as a ConfigError of ``key``."""
    try:
        return check(*args)
    except ScyllaError as err:
        raise ConfigError(f"{key}: {err}") from None


def _need(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise InputError(f"{where}: {message}")


def resolve_run(arg: str, where: str) -> tuple[str, dict]:
    """``RUN_DIR[@RUN_ID]`` -> the newest draft folder of that run directory and its train record."""
    run_dir, _, run_id = arg.partition("@")
    _need(records_path(run_dir).is_file(), where, f"run directory {run_dir} has no records.jsonl: train drafts "
          "there first (scylla sweep)")
    drafts = find_checkpoints(run_dir)
    runs = sorted({r["run_id"] for r in drafts})
    _need(bool(drafts), where, f"run directory {run_dir} has no trained draft folders")
    _need(not run_id or run_id in runs, where, f"run directory {run_dir} has no run {run_id!r} (runs: "
          f"{', '.join(runs)})")
    _need(bool(run_id) or len(runs) == 1, where, f"run directory {run_dir} holds runs {', '.join(runs)}: name one "
          f"as run:{run_dir}@{runs[0]}")
    best = max((r for r in drafts if r["run_id"] == (run_id or runs[0])), key=lambda r: r["train_tokens"])
    return best["checkpoint"], best


def _method(label: str, raw, num_draft_tokens: int | None, where: str) -> Method:
    prefix = f"methods: {label}: "
    Config.require(re.fullmatch(r"[\w.+-]+", str(label)) is not None, f"methods: {label}",
                   "a method label is a word (letters, digits, _ . + -)")
    config = MethodConfig.from_dict({"spec": raw} if isinstance(raw, str) else raw, where, prefix)
    spec, source = config.spec, None
    if "run:" in spec:
        head, _, arg = spec.partition("run:")
        folder, source = resolve_run(arg, f"{where} method {label!r}")
        spec = f"{head}draft:{folder}"
    kind, arg = _as_config_error(f"{where}: {prefix}spec", parse_spec, spec)
    while kind == "hybrid":  # hybrid:SPEC (the n-gram side plus SPEC): check the inner spec too
        kind, arg = _as_config_error(f"{where}: {prefix}spec", parse_spec, arg)
    _need(kind != "draft" or Path(arg).is_dir(), f"{where} method {label!r}", f"draft folder {arg} does not exist "
          "(train a head with scylla sweep, or name a run directory as run:RUN_DIR)")
    tree = parse_tree(config.tree) if config.tree else None
    return Method(str(label), spec, config.num_draft_tokens or num_draft_tokens, source, tree)


def _settings(paradigms: ParadigmsConfig) -> tuple[list[Setting], str]:
    settings, template = [], ""
    bon = paradigms.best_of_n
    if bon is not None:
        for mode in dict.fromkeys(bon.batched if isinstance(bon.batched, list) else [bon.batched]):
            settings.append(Setting(f"best-of-{bon.n}", bon.temperature, bon.n if mode else 1,
                                    dict(n=bon.n, temperature=bon.temperature, batched=mode)))
    mr = paradigms.multi_round
    if mr is not None:
        template = mr.template
        for t in dict.fromkeys(mr.temperatures):
            settings.append(Setting(f"multi-round-{mr.rounds}", t, 1, dict(rounds=mr.rounds, temperature=t,
                                                                            template=template)))
    return settings, template


def _merge_reduced(raw: dict) -> dict:
    """The top-level settings with ``reduced:`` laid over them; paradigm sections are merged key by key."""
    reduced = raw.get("reduced") or {}
    merged = {k: v for k, v in raw.items() if k != "reduced"} | reduced
    paradigms, smaller = raw.get("paradigms"), reduced.get("paradigms")
    if isinstance(paradigms, dict) and isinstance(smaller, dict):
        merged["paradigms"] = {**paradigms, **{
            name: {**paradigms[name], **value} if isinstance(paradigms.get(name), dict) and isinstance(value, dict)
            else value for name, value in smaller.items()}}
    return merged


def load_bench(path: str | Path, full: bool = False) -> BenchConfig:
    """Parse and validate a tts-bench config (the ``reduced:`` settings unless full); one ConfigError line for the
    first problem. Tasks and methods are checked (run directories resolved) before any model loads."""
    raw = read_yaml(path)
    config = TTSBenchConfig.from_dict(raw, str(path))
    use_reduced = bool(config.reduced) and not full
    where = str(path)
    if use_reduced:
        where = f"{path} (reduced)"
        config = TTSBenchConfig.from_dict(_merge_reduced(raw), where)
    settings, template = _settings(config.paradigms)
    methods = [_method(label, spec, config.num_draft_tokens, where) for label, spec in config.methods.items()]
    if not any(m.spec == PLAIN for m in methods):
        methods.insert(0, Method("plain", PLAIN))
    methods.sort(key=lambda m: m.spec != PLAIN)  # the baseline runs first
    _need(sum(m.spec == PLAIN for m in methods) == 1, where, "only one method may be plain decoding (spec none)")
    return BenchConfig(
        name=config.name or Path(path).stem, target=config.target, methods=methods,
        tasks=list(dict.fromkeys(config.tasks)), settings=settings, problems=config.problems,
        max_new_tokens=config.max_new_tokens, device=config.device or "cpu", dtype=config.dtype, seed=config.seed,
        top_k=config.top_k, top_p=config.top_p, repetition_ngram=config.repetition_ngram, template=template,
        reduced=use_reduced, num_draft_tokens=config.num_draft_tokens,
    )


def _guard(run_dir: Path, config: BenchConfig, recorded: set[str]) -> dict:
    """This config's settings, merged with those in RUN_DIR/tts_config.json; refuse a run directory made with
    other settings, or with another spec under a label that has records there."""
    path = run_dir / CONFIG_FILE
    mine = {k: getattr(config, k) for k in _GUARDED}
    mine["methods"] = {m.label: [m.spec, m.num_draft_tokens, m.draft_shape] for m in config.methods}
    if path.is_file():
        theirs = json.loads(path.read_text())
        for key in _GUARDED:
            _need(theirs.get(key) == mine[key], str(run_dir), f"it holds a tts-bench run made with {key}="
                  f"{theirs.get(key)!r}, this config has {mine[key]!r}: use another --out")
        for label, value in mine["methods"].items():
            old = theirs["methods"].get(label)
            _need(label not in recorded or old in (None, value), str(run_dir), f"method {label!r} was {old!r} "
                  f"(spec, draft length) there, now {value!r}: rename it or use another --out")
        mine["methods"] = {**theirs["methods"], **mine["methods"]}
    return mine


def _identity(method: Method, config: BenchConfig) -> dict:
    kind, arg = parse_spec(method.spec)
    if kind == "draft":
        kind = "eagle" if is_head_folder(arg) or is_eagle3_folder(arg) else "draft-lm"
    base = method.source or dict(run_id=method.label, draft_layers=int(arg) if kind == "truncated" else 0,
                                 draft_width=0, draft_params=0, draft_params_with_embeddings=0, train_tokens=0,
                                 data="")
    identity = {k: base[k] for k in ("run_id", "draft_layers", "draft_width", "draft_params",
                                     "draft_params_with_embeddings", "train_tokens", "data")}
    return dict(identity, drafter_type=kind, sweep=config.name, target=config.target, seed=config.seed)


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _metrics(results: list, plain: list, setting: Setting, method: Method) -> dict:
    """A record's metrics from one method's per-problem results and plain decoding's in the same setting."""
    s = DecodeStats.merge([r.stats for r in results])
    tps = _mean([r.new_tokens / r.stats.wall_seconds for r in results])
    plain_tps = _mean([r.new_tokens / r.stats.wall_seconds for r in plain])
    tokens = sum(r.new_tokens for r in results)
    sides: dict[str, int] = {}
    for r in results:
        for side, count in r.sides.items():
            sides[side] = sides.get(side, 0) + count
    drafted = sum(sides.values())
    out = dict(
        n_problems=len(results), new_tokens=s.new_tokens, target_calls=s.target_calls,
        mean_accepted_length=s.mean_accepted_length, acceptance_rate=s.acceptance_rate if s.drafted else None,
        per_position_acceptance=s.per_position_acceptance, tokens_per_second=s.tokens_per_second,
        problem_tokens_per_second=tps, speedup=tps / plain_tps, wall_seconds=s.wall_seconds,
        repetition=sum(r.repetition * r.new_tokens for r in results) / tokens,
        repetition_self=sum(r.repetition_self * r.new_tokens for r in results) / tokens,
        drafted_by_side=sides or None,
        drafted_share={k: v / drafted for k, v in sides.items()} if drafted else None,
        matches_plain=all(r.tokens == p.tokens for r, p in zip(results, plain)) if setting.temperature == 0 else None,
        spec=method.spec, num_draft_tokens=method.num_draft_tokens, draft_shape=method.draft_shape,
        batched=setting.kwargs.get("batched", False),
    )
    for key in results[0].accuracy:
        out[f"accuracy_{key}"] = _mean([r.accuracy[key] for r in results])
    return out


def _run_protocol(decoder, tokenizer, problems: list, task, setting: Setting, config: BenchConfig) -> list:
    """One method under one setting's protocol (Best-of-N or multi-round) on every problem of a task."""
    protocol = best_of_n if setting.paradigm.startswith("best-of") else multi_round
    results = []
    for i, problem in enumerate(problems):
        if decoder.drafter is not None and decoder.drafter.pool is not None:
            decoder.drafter.pool.clear()  # a pool holds the samples or rounds of one problem
        results.append(protocol(decoder, tokenizer, problem, task, max_new_tokens=config.max_new_tokens,
                                seed=config.seed + 1000 * i, top_k=config.top_k, top_p=config.top_p,
                                ngram=config.repetition_ngram, **setting.kwargs))
    return results


def bench_dir(config: BenchConfig, run_dir: str | Path | None = None) -> Path:
    """The benchmark's run folder: ``run_dir``, or runs/NAME (runs/NAME-reduced for the reduced protocol)."""
    return Path(run_dir or Path("runs") / (config.name + ("-reduced" if config.reduced else "")))


def run_bench(config: BenchConfig, run_dir: str | Path | None = None) -> tuple[int, Path]:
    """Run every missing (task, setting, method) and append its tts record; write the markdown table.

    Returns (records written, table path)."""
    run_dir = bench_dir(config, run_dir)
    previous = read_records(run_dir, kind="tts") if records_path(run_dir).is_file() else []
    settings = _guard(run_dir, config, {r["method"] for r in previous})
    dtype = dtype_name(config.dtype, config.device)
    target, tokenizer = load_model(config.target, device=config.device, dtype=dtype)
    quantization = target_quantization(config.target, target)
    capability = None if str(config.device).startswith("cuda") else cpu_capability()
    warn_if_busy()

    def drafter(method: Method):  # built afresh per record: drafters with state (pools) start empty
        return drafter_from_spec(method.spec, target, method.num_draft_tokens, device=config.device,
                                 dtype=dtype, tree=method.tree)

    ids, mask = encode_prompts(tokenizer, ["Say hello."], device=config.device)
    for method in config.methods:  # fail before measuring anything, and warm up: every draft loads, fits, decodes
        SpeculativeDecoder(target, drafter(method)).generate(ids, mask, max_new_tokens=4)
    write_json_atomic(run_dir / CONFIG_FILE, settings)
    tasks = {t: get_task(t) for t in config.tasks}
    problems = {t: task.problems(config.problems) for t, task in tasks.items()}
    written, elsewhere = 0, []
    units = [(t, s) for t in config.tasks for s in config.settings]
    bar = tqdm(total=len(units) * len(config.methods), desc="tts-bench", unit="run")
    for task_name, setting in units:
        with claim(claim_path(run_dir, "tts", task_name, setting.paradigm, setting.temperature,
                              setting.batch_size)) as holder:
            if holder:  # another process is measuring this setting now
                elsewhere.append(f"{task_name} {setting.paradigm} T={setting.temperature:g} ({holder})")
                bar.update(len(config.methods))
                continue
            # read under the claim: a process that held it before may have finished some of the work
            found = read_records(run_dir, kind="tts") if records_path(run_dir).exists() else []
            done = {record_key(r) for r in found}
            task = tasks[task_name]
            records = {}
            for method in config.methods:
                fields = dict(task=task_name, temperature=setting.temperature, batch_size=setting.batch_size,
                              method=method.label, paradigm=setting.paradigm,
                              target_quantization=quantization, dtype=dtype, cpu_capability=capability)
                records[method.label] = new_record("tts", **_identity(method, config), **fields)
            missing = [m for m in config.methods if record_key(records[m.label]) not in done]
            if not missing:
                bar.update(len(config.methods))
                continue
            plain = None
            for method in config.methods:
                if method.spec != PLAIN and method not in missing:
                    bar.update()
                    continue
                bar.set_postfix_str(f"{task_name} {setting.paradigm} T={setting.temperature:g} {method.label}")
                decoder = SpeculativeDecoder(target, drafter(method))
                results = _run_protocol(decoder, tokenizer, problems[task_name], task, setting, config)
                plain = results if method.spec == PLAIN else plain
                bar.update()
                if method not in missing:
                    continue
                record = dict(records[method.label], device=config.device, max_new_tokens=config.max_new_tokens,
                              **_metrics(results, plain, setting, method))
                if record["matches_plain"] is False:
                    tqdm.write(f"scylla: warning: {method.label} ({method.spec}) differs from plain greedy decoding "
                               f"on {task_name} {setting.paradigm}: the engine or drafter is not lossless",
                               file=sys.stderr)
                written += append_record(run_dir, record)
    bar.close()
    report_held(elsewhere)
    return written, write_table(run_dir, config)


def write_table(run_dir: Path, config: BenchConfig) -> Path:
    """The markdown table of this config's tts records in run_dir (all tasks, settings and methods found)."""
    order = {m.label: i for i, m in enumerate(config.methods)}
    records = [r for r in read_records(run_dir, kind="tts") if r["method"] in order and r["task"] in config.tasks]
    records.sort(key=lambda r: (config.tasks.index(r["task"]), r["paradigm"], r["temperature"], r["batch_size"],
                                order[r["method"]]))
    bon = sorted({s.batch_size for s in config.settings if s.paradigm.startswith("best-of")})
    lines = [
        f"# tts-bench: {config.name}{' (reduced)' if config.reduced else ''}",
        "",
        f"Target {config.target} on {config.device}; {config.problems} problems per task, at most "
        f"{config.max_new_tokens} new tokens per sample or round. Best-of-N samples run "
        + " and ".join("one after another at batch 1" if b == 1 else f"as one batch of {b}" for b in bon)
        + " (column batch). Speed-up: mean per-problem tokens/s over plain decoding's, same setting, same run. "
        "MAT: new tokens / target calls (plain = 1). Accuracy: Best-of-N majority / best-of / mean score; "
        "multi-round: score after each round. Repetition: share of generated tokens whose "
        f"{config.repetition_ngram}-gram already occurred in the same request / also in earlier samples or rounds. "
        "Drafted share: drafted tokens per side of a hybrid. = plain: greedy output identical to plain decoding.",
        "",
        *tts_table_rows(records),
    ]
    path = run_dir / TABLE_FILE
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
