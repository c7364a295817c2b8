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
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from paper_figs.tts import tts_table_rows
from scylla.atomic import atomic_path, write_json_atomic
from scylla.data.tasks import get_task
from scylla.drafters.eagle import is_head_folder
from scylla.drafters.spec import drafter_from_spec, parse_spec
from scylla.drafters.tree import TREE_FORM, TreeShape, parse_tree
from scylla.engine import SpeculativeDecoder
from scylla.errors import ScyllaError
from scylla.metrics import DecodeStats
from scylla.models import load_model, target_quantization
from scylla.prompts import encode_prompts
from scylla.records import append_record, find_checkpoints, new_record, read_records, record_key, records_path
from scylla.sampling import SamplingConfig
from scylla.tts import DEFAULT_ROUND2_TEMPLATE, best_of_n, check_template, multi_round


CONFIG_KEYS = ("name", "target", "device", "dtype", "methods", "tasks", "paradigms", "problems", "max_new_tokens",
               "num_draft_tokens", "seed", "top_k", "top_p", "repetition_ngram", "reduced")
PARADIGMS = {"best_of_n": ("n", "temperature", "batched"), "multi_round": ("rounds", "temperatures", "template")}
METHOD_KEYS = ("spec", "num_draft_tokens", "tree")
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


def _need(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ScyllaError(f"{where}: {message}")


def _int(raw: dict, key: str, default, where: str, minimum: int = 1):
    value = raw.get(key, default)
    _need(value is None and default is None or isinstance(value, int) and not isinstance(value, bool)
          and value >= minimum, where, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value, where: str, name: str) -> float:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool), where, f"{name} must be a number, "
          f"got {value!r}")
    return float(value)


def _keys(raw, known, where: str) -> dict:
    raw = {} if raw is None else raw
    _need(isinstance(raw, dict), where, f"expected a mapping with keys {', '.join(known)}, got {raw!r}")
    unknown = sorted(set(raw) - set(known), key=str)
    _need(not unknown, where, f"unknown key {unknown[0]!r} (known: {', '.join(known)})" if unknown else "")
    return raw


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


def _method(label, raw, num_draft_tokens, where: str) -> Method:
    where = f"{where} method {label!r}"
    _need(isinstance(label, str) and re.fullmatch(r"[\w.+-]+", label) is not None, where,
          "a method label is a word (letters, digits, _ . + -)")
    raw = {"spec": raw} if isinstance(raw, str) else _keys(raw, METHOD_KEYS, where)
    spec = raw.get("spec")
    _need(isinstance(spec, str) and bool(spec), where, f"needs a drafter spec string, got {spec!r}")
    k = _int(raw, "num_draft_tokens", num_draft_tokens, where)
    source = None
    if "run:" in spec:
        head, _, arg = spec.partition("run:")
        folder, source = resolve_run(arg, where)
        spec = f"{head}draft:{folder}"
    try:
        kind, arg = parse_spec(spec)
        while kind == "hybrid":  # hybrid:SPEC (the n-gram side plus SPEC): check the inner spec too
            kind, arg = parse_spec(arg)
    except ScyllaError as err:
        raise ScyllaError(f"{where}: {err}") from None
    _need(kind != "draft" or Path(arg).is_dir(), where, f"draft folder {arg} does not exist (train a head with "
          "scylla sweep, or name a run directory as run:RUN_DIR)")
    tree = raw.get("tree")
    _need(tree is None or isinstance(tree, str), where, f"tree takes {TREE_FORM}, got {tree!r}")
    try:
        tree = parse_tree(tree) if tree else None
    except ScyllaError as err:
        raise ScyllaError(f"{where}: {err}") from None
    return Method(label, spec, k, source, tree)


def _settings(raw, where: str, top_k: int, top_p: float) -> tuple[list[Setting], str]:
    raw = _keys(raw, tuple(PARADIGMS), f"{where} paradigms")
    _need(bool(raw), where, f"paradigms must name at least one of {', '.join(PARADIGMS)}")
    settings, template = [], ""

    def temp(value, name):
        value = _number(value, where, name)
        try:
            SamplingConfig(value, top_k, top_p)
        except ScyllaError as err:
            raise ScyllaError(f"{where}: {err}") from None
        return value

    if "best_of_n" in raw:
        sub = f"{where} paradigms.best_of_n"
        bon = _keys(raw["best_of_n"], PARADIGMS["best_of_n"], sub)
        n = _int(bon, "n", 4, sub)
        temperature = temp(bon.get("temperature", 0.6), "best_of_n.temperature")
        batched = bon.get("batched", False)
        modes = batched if isinstance(batched, list) else [batched]
        _need(bool(modes) and all(isinstance(m, bool) for m in modes), sub,
              f"batched must be true, false or a list of them, got {batched!r}")
        for mode in dict.fromkeys(modes):
            settings.append(Setting(f"best-of-{n}", temperature, n if mode else 1,
                                    dict(n=n, temperature=temperature, batched=mode)))
    if "multi_round" in raw:
        sub = f"{where} paradigms.multi_round"
        mr = _keys(raw["multi_round"], PARADIGMS["multi_round"], sub)
        rounds = _int(mr, "rounds", 2, sub)
        temps = mr.get("temperatures", [0.0, 0.6])
        _need(isinstance(temps, list) and bool(temps), sub, f"temperatures must be a non-empty list, got {temps!r}")
        template = mr.get("template", DEFAULT_ROUND2_TEMPLATE)
        _need(isinstance(template, str), sub, f"template must be a string, got {template!r}")
        try:
            check_template(template)
        except ScyllaError as err:
            raise ScyllaError(f"{sub}: {err}") from None
        for t in dict.fromkeys(temp(v, "multi_round.temperatures") for v in temps):
            settings.append(Setting(f"multi-round-{rounds}", t, 1, dict(rounds=rounds, temperature=t,
                                                                         template=template)))
    return settings, template


def load_bench(path: str | Path, full: bool = False) -> BenchConfig:
    """Parse and validate a tts-bench config (the ``reduced:`` settings unless full); one ScyllaError line for the
    first problem. Tasks and methods are checked (run directories resolved) before any model loads."""
    path = Path(path)
    _need(path.is_file(), str(path), "config file does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ScyllaError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    raw = _keys(raw, CONFIG_KEYS, str(path))
    reduced = _keys(raw.get("reduced"), [k for k in CONFIG_KEYS if k not in ("name", "reduced")], f"{path} reduced")
    use_reduced = bool(reduced) and not full
    if use_reduced:
        paradigms = raw.get("paradigms")
        raw = {**raw, **reduced}
        if isinstance(paradigms, dict) and isinstance(reduced.get("paradigms"), dict):
            raw["paradigms"] = {**paradigms, **{
                name: {**paradigms[name], **value} if isinstance(paradigms.get(name), dict) and isinstance(value, dict)
                else value for name, value in reduced["paradigms"].items()}}
    where = f"{path}{' (reduced)' if use_reduced else ''}"
    name = raw.get("name", path.stem)
    _need(isinstance(name, str) and bool(re.fullmatch(r"[\w.-]+", name)), where, f"name must be a word, got {name!r}")
    target = raw.get("target", "smollm2-135m")
    _need(isinstance(target, str) and bool(target), where, f"target must be a string, got {target!r}")
    for key in ("device", "dtype"):
        _need(raw.get(key) is None or isinstance(raw[key], str), where, f"{key} must be a string")
    top_k = _int(raw, "top_k", 0, where, minimum=0)
    top_p = _number(raw.get("top_p", 1.0), where, "top_p")
    settings, template = _settings(raw.get("paradigms"), where, top_k, top_p)
    tasks = raw.get("tasks")
    _need(isinstance(tasks, list) and bool(tasks) and all(isinstance(t, str) for t in tasks), where,
          f"tasks must be a non-empty list of task names, got {tasks!r}")
    for task in tasks:
        try:
            get_task(task)
        except ScyllaError as err:
            raise ScyllaError(f"{where}: {err}") from None
    num_draft_tokens = _int(raw, "num_draft_tokens", None, where)
    methods_raw = raw.get("methods")
    _need(isinstance(methods_raw, dict) and bool(methods_raw), where,
          "methods must map labels to drafter specs, e.g. {plain: none, pld: prompt-lookup}")
    methods = [_method(label, spec, num_draft_tokens, where) for label, spec in methods_raw.items()]
    if not any(m.spec == PLAIN for m in methods):
        methods.insert(0, Method("plain", PLAIN))
    methods.sort(key=lambda m: m.spec != PLAIN)  # the baseline runs first
    _need(sum(m.spec == PLAIN for m in methods) == 1, where, "only one method may be plain decoding (spec none)")
    return BenchConfig(
        name=name, target=target, methods=methods, tasks=list(dict.fromkeys(tasks)), settings=settings,
        problems=_int(raw, "problems", 8, where), max_new_tokens=_int(raw, "max_new_tokens", 256, where),
        device=raw.get("device") or "cpu", dtype=raw.get("dtype"), seed=_int(raw, "seed", 0, where, minimum=0),
        top_k=top_k, top_p=top_p, repetition_ngram=_int(raw, "repetition_ngram", 4, where), template=template,
        reduced=use_reduced, num_draft_tokens=num_draft_tokens,
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
        kind = "eagle" if is_head_folder(arg) else "draft-lm"
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


def run_bench(config: BenchConfig, run_dir: str | Path | None = None) -> tuple[int, Path]:
    """Run every missing (task, setting, method) and append its tts record; write the markdown table.

    Returns (records written, table path)."""
    run_dir = Path(run_dir or Path("runs") / (config.name + ("-reduced" if config.reduced else "")))
    previous = read_records(run_dir, kind="tts") if records_path(run_dir).is_file() else []
    settings = _guard(run_dir, config, {r["method"] for r in previous})
    target, tokenizer = load_model(config.target, device=config.device, dtype=config.dtype)
    quantization = target_quantization(config.target, target)

    def drafter(method: Method):  # built afresh per record: drafters with state (pools) start empty
        return drafter_from_spec(method.spec, target, method.num_draft_tokens, device=config.device,
                                 dtype=config.dtype, tree=method.tree)

    ids, mask = encode_prompts(tokenizer, ["Say hello."], device=config.device)
    for method in config.methods:  # fail before measuring anything, and warm up: every draft loads, fits, decodes
        SpeculativeDecoder(target, drafter(method)).generate(ids, mask, max_new_tokens=4)
    write_json_atomic(run_dir / CONFIG_FILE, settings)
    done = {record_key(r) for r in previous}
    tasks = {t: get_task(t) for t in config.tasks}
    problems = {t: task.problems(config.problems) for t, task in tasks.items()}
    written = 0
    units = [(t, s) for t in config.tasks for s in config.settings]
    bar = tqdm(total=len(units) * len(config.methods), desc="tts-bench", unit="run")
    for task_name, setting in units:
        task = tasks[task_name]
        records = {}
        for method in config.methods:
            fields = dict(task=task_name, temperature=setting.temperature, batch_size=setting.batch_size,
                          method=method.label, paradigm=setting.paradigm,
                          target_quantization=quantization)
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
                tqdm.write(f"scylla: warning: {method.label} ({method.spec}) differs from plain greedy decoding on "
                           f"{task_name} {setting.paradigm}: the engine or drafter is not lossless", file=sys.stderr)
            written += append_record(run_dir, record)
    bar.close()
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
