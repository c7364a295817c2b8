"""The ``scylla`` command. Misuse exits with 2 and one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import scylla
from scylla.atomic import atomic_folder, atomic_path, check_replaceable, write_json_atomic
from scylla.data.prompt_sets import PROMPT_SETS
from scylla.errors import ConfigError, InputError, ScyllaError
from scylla.records import RECORDS_FILE
from scylla.specs import SPECS, TREE_FORM, parse_spec, parse_tree
from scylla.timing import MIN_RATIOS

# Only light modules above: `scylla --help` and argument errors answer before torch, transformers, statsmodels or
# matplotlib load. Each verb imports what it needs when it runs.


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
        return value

    return parse


def format_stats(label: str, stats) -> str:
    """One block of human-readable statistics (see scylla.metrics for the definitions)."""
    per_pos = ", ".join(f"{a:.2f}" for a in stats.per_position_acceptance) or "-"
    alpha = f"{stats.acceptance_rate:.3f}" if stats.drafted else "-"
    return (
        f"[{label}] new tokens {stats.new_tokens} | target calls {stats.target_calls} | "
        f"MAT {stats.mean_accepted_length:.3f} | acceptance rate {alpha} ({stats.accepted}/{stats.drafted}) | "
        f"per-position acceptance [{per_pos}]\n"
        f"[{label}] wall {stats.wall_seconds:.2f}s (draft {stats.draft_seconds:.2f}s, verify {stats.verify_seconds:.2f}s)"
        f" | {stats.tokens_per_second:.1f} tokens/s"
    )


def _refuse_meaningless_flags(args: argparse.Namespace) -> None:
    """Flags that another choice makes meaningless are refused, not ignored."""
    if args.config and (args.drafter != "none" or args.tree or args.num_draft_tokens):
        raise ConfigError("--config chooses the drafter and its shape: drop --drafter, --tree and --num-draft-tokens")
    if args.drafter == "none" and (args.tree or args.num_draft_tokens) and not args.config:
        raise ConfigError("--tree and --num-draft-tokens shape a draft, and --drafter none drafts nothing: pick a drafter")
    if args.tree and args.num_draft_tokens:
        raise ConfigError("--tree sets the draft's depth and size: drop --num-draft-tokens")


def _refuse_max_ngram_without_lookup(args: argparse.Namespace) -> None:
    """--max-ngram shapes prompt lookup only (also as a hybrid's fallback); the drafter is known after --config."""
    kind, arg = parse_spec(args.drafter)
    if args.max_ngram is not None and "prompt-lookup" not in (kind, parse_spec(arg)[0] if kind == "hybrid" else ""):
        raise ConfigError(f"--max-ngram shapes prompt lookup, and the drafter is {args.drafter}: drop --max-ngram")


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.evaluate import parse_shape
    from pipeline.select import selection_for
    from scylla.drafters.spec import check_spec, drafter_from_spec
    from scylla.engine import SpeculativeDecoder
    from scylla.metrics import DecodeStats
    from scylla.models import load_model
    from scylla.prompts import encode_prompts, read_prompts
    from scylla.sampling import SamplingConfig

    SamplingConfig(args.temperature, args.top_k, args.top_p)  # fail fast, before loading models
    _refuse_meaningless_flags(args)
    if args.config:  # a Scylla configuration: its choice for this batch size

        entry = selection_for(args.config, args.batch_size, args.target)
        shape = parse_shape(entry.draft_shape)
        args.drafter, args.tree, args.num_draft_tokens = entry.draft, shape.tree, shape.num_draft_tokens
        args.dtype = args.dtype or (entry.plain_dtype if entry.draft == "none" else entry.dtype)  # its dtype too
        predicted = "" if entry.predicted_speedup is None else (f" (best draft predicted at "
                                                                f"{entry.predicted_speedup:.2f}x plain decoding)")
        dtype = f" in {args.dtype}" if args.dtype else ""
        print(f"[{args.config}] batch {args.batch_size}: {entry.draft} {entry.draft_shape}{dtype}{predicted}",
              file=sys.stderr)
    _refuse_max_ngram_without_lookup(args)
    check_spec(args.drafter, args.target)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else list(args.prompt)
    if len(prompts) < args.batch_size:  # one prompt, batch 8: eight samples of it
        prompts = [prompts[i % len(prompts)] for i in range(args.batch_size)]
    model, tokenizer = load_model(args.target, device=args.device, dtype=args.dtype)
    drafter = drafter_from_spec(
        args.drafter, model, args.num_draft_tokens, args.max_ngram, device=args.device, dtype=args.dtype,
        tree=args.tree,
    )
    decoder = SpeculativeDecoder(model, drafter)
    parts, texts = [], []
    batches = range(0, len(prompts), args.batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=len(batches) < 2, file=sys.stderr):
        chunk = prompts[start : start + args.batch_size]
        input_ids, mask = encode_prompts(tokenizer, chunk, chat=not args.no_chat_template, device=args.device)
        out = decoder.generate(
            input_ids,
            mask,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            seed=None if args.seed is None else args.seed + start,
        )
        parts.append(out.stats)
        texts.extend(tokenizer.decode(toks, skip_special_tokens=True) for toks in out.generated)
    stats = DecodeStats.merge(parts)
    if not args.quiet:
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            print(f"### {i}: {prompt}\n{text}\n")
    print(format_stats(args.drafter, stats))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        write_json_atomic(args.json, {"args": settings, "stats": stats.summary(), "texts": texts})
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.grid, args.run_dir)
    # Scripts run elsewhere, later: this machine's free cores say nothing of theirs, only a --threads given does
    threads = args.threads if sweep.launcher == "local" else args.threads_given
    for line in run_sweep(sweep, dry_run=args.dry_run, rerun_changed=args.rerun_changed, threads=threads):
        print(line)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from fit.cli import run_fit

    lines = run_fit(
        args.run_dirs,
        x=args.x,
        y=args.y,
        by=args.by,
        where=args.where,
        kind=args.kind,
        robust=args.robust,
        bootstrap=args.bootstrap,
        seed=args.seed,
        json_path=args.json,
        holdout_top=args.holdout_top,
    )
    for line in lines:
        print(line)
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from fit.capacity import run_capacity

    for line in run_capacity(args.run_dir, shape=args.shape, grid_lr=args.lr, json_path=args.json):
        print(line)
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from pipeline.recipe import recipe

    for line in recipe(args.capacity, args.cost, args.tokens, args.batch_size, layout=args.layout, law3=args.law3):
        print(line)
    return 0


def cmd_figs(args: argparse.Namespace) -> int:
    from paper_figs.all import all_figures, missing_families
    from scylla.records import read_records

    records = [r for run_dir in args.run_dirs for r in read_records(run_dir)]
    paths = all_figures(records, Path(args.out), scylla_config=args.config)
    if not paths:
        raise InputError(f"nothing to draw from {', '.join(args.run_dirs)} ({len(records)} records): " + "; ".join(
            f"{family} needs {need}" for family, need in missing_families(paths).items()))
    for path in paths:
        print(path)
    for family, need in missing_families(paths).items():
        print(f"scylla: figs: no {family} figure: it needs {need}", file=sys.stderr)
    if not args.config:
        print("scylla: figs: no --config: the trained draft with the highest mean MAT stands for Scylla in Fig. 2 and "
              "Table 5 (give the configuration scylla select wrote)", file=sys.stderr)
    return 0


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def cmd_costs(args: argparse.Namespace) -> int:
    from scylla.costs import calibrate, measure_cost_tables, table_path, untrained_heads
    from scylla.drafters.eagle import EagleDrafter
    from scylla.dtypes import parse_dtypes
    from scylla.drafters.spec import check_spec, drafter_from_spec
    from scylla.models import load_model, target_quantization
    from scylla.records import read_records

    for spec in args.draft or []:
        if check_spec(spec)[0] not in ("truncated", "draft"):
            raise InputError(f"--draft takes truncated:K or draft:PATH (a draft LM or head), got {spec!r}")
    online = [r for d in args.calibrate or [] for r in read_records(d, kind="eval", where={"mode": "online"})]
    if args.calibrate and not any(r.get("step_seconds") for r in online):
        raise InputError(f"--calibrate: {', '.join(args.calibrate)} holds no online eval records with step_seconds; "
                         "run scylla eval there first (without --replay)")
    dtypes = parse_dtypes(args.dtype, args.device)
    models = {}
    for dtype in dtypes:
        target, _ = load_model(args.target, device=args.device, dtype=dtype)
        models[dtype] = {"target": target}
        for spec in args.draft or []:
            d = drafter_from_spec(spec, target, device=args.device, dtype=dtype)
            models[dtype][spec] = d.head if isinstance(d, EagleDrafter) else d.model
        models[dtype].update(untrained_heads(target, args.head_layers or [], args.head_width, args.head_vocab))
    tables = measure_cost_tables(models, args.batch_sizes, args.tokens, args.contexts, reps=args.reps)
    for dtype, table in tables.items():
        table.target_quantization = target_quantization(args.target, models[dtype]["target"])
        if args.calibrate:
            table = calibrate(table, online)
            print(f"[{dtype}] per-step correction (ms), by batch size: " + "; ".join(
                f"{b}: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in o.items()) for b, o in table.overhead.items()))
            print(f"[{dtype}] batch lag (steps of a batch / steps of its average row), by batch size: " + "; ".join(
                f"{b}: " + ", ".join(f"{k} {v:.2f}" for k, v in o.items()) for b, o in table.lag.items()))
        out = table_path(args.out, dtype) if len(tables) > 1 else Path(args.out)
        table.save(out)
        one = {e["batch"]: e["seconds"] for e in table.entries if e["model"] == "target" and e["tokens"] == 1}
        for e in table.entries:
            relative = f"  ({e['seconds'] / one[e['batch']]:.2f}x a 1-token target step)" if e["batch"] in one else ""
            print(f"[{dtype}] {e['model'][-24:]:>24}  batch {e['batch']:>3}  tokens {e['tokens']:>3}  context "
                  f"{e['context']:>5}  {1000 * e['seconds']:.2f} ms [{1000 * e['seconds_min']:.2f}, "
                  f"{1000 * e['seconds_max']:.2f}]{relative}")
        print(f"wrote {out} ({dtype}, {table.cpu_capability or table.device})")
    return 0


def cmd_law3(args: argparse.Namespace) -> int:
    from fit.batch_law import LAW3, fit_batch_law, online_check, table_lines
    from fit.cli import parse_where
    from paper_figs.batch import law3_fit_figure
    from scylla.costs import CostTable
    from scylla.records import read_records

    if args.online and args.leave_out is None:
        raise ConfigError("--online checks the prediction at a left-out batch size: add --leave-out B")
    if not Path(args.cost).is_file():
        raise InputError(f"cost table {args.cost} does not exist: measure one with scylla costs (docs/fitting.md, "
                         "law 3)")
    cost = CostTable.load(args.cost)
    first = Path(args.run_dirs[0])
    out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "law3"
    check_replaceable(out, LAW3, args.force)  # before the fit: a user's folder is never replaced
    where = {"mode": "replay", "temperature": "0", **parse_where(args.where)}
    records = [r for d in args.run_dirs for r in read_records(d, kind="eval", where=where)]
    law = fit_batch_law(records, cost, args.batch_sizes, args.leave_out, args.resamples, args.seed)
    online = None
    if args.online:
        online = online_check([r for d in args.online for r in read_records(d, kind="eval")], law)
    payload = {"run_dirs": list(args.run_dirs), "cost": str(args.cost), "where": where, **law.to_dict(),
               "online_check": online}
    with atomic_folder(out, kind=LAW3, force=args.force) as tmp:
        write_json_atomic(tmp / "law3.json", payload)
        figures = [out / p.relative_to(tmp) for p in law3_fit_figure(law, tmp)]
    lines = table_lines(law)
    if online:
        lines += ["", f"online at batch {online['batch']} ({online['draft']}): predicted {online['predicted']} "
                  f"measured {online['predicted_speedup']:.2f}x [{online['predicted_ci95'][0]:.2f}, "
                  f"{online['predicted_ci95'][1]:.2f}]; best measured {online['best']} {online['best_speedup']:.2f}x "
                  f"[{online['best_ci95'][0]:.2f}, {online['best_ci95'][1]:.2f}]; regret {online['regret']:.2f} "
                  f"[{online['regret_ci95'][0]:.2f}, {online['regret_ci95'][1]:.2f}]"]
    for line in lines:
        print(line)
    for path in [out / "law3.json", *figures]:
        print(f"wrote {path}")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


EVAL_SETTINGS = ("drafts", "target", "tasks", "temperatures", "batch_sizes", "shapes", "baselines", "prompts",
                 "prompt_set", "repeats", "max_new_tokens", "replay", "cost", "seed", "device", "dtype")  # --config's


def _write_array(args: argparse.Namespace, run_dir: str | Path) -> int:
    """--slurm-array N: write RUN_DIR/NAME.sbatch running this command (without the --slurm options) in N tasks."""
    from pipeline.sweep import array_script

    options = dict(_key_value(o) for o in args.slurm)
    script = Path(run_dir) / f"{args.command}.sbatch"
    argv, tokens = [], iter(args.argv)
    for token in tokens:
        if token.split("=")[0] in ("--slurm-array", "--slurm"):
            if "=" not in token:
                next(tokens, None)  # its value
            continue
        argv.append(token)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(script) as tmp:
        Path(tmp).write_text("\n".join(array_script(f"{args.command}-{Path(run_dir).resolve().name}", argv,
                                                     args.slurm_array, options, str(script))) + "\n")
    print(f"wrote {script}: {args.slurm_array} Slurm array tasks of this {args.command}; submit it from here: sbatch "
          f"{script}")
    return 0


def _check_array_args(args: argparse.Namespace) -> None:
    """--slurm shapes the --slurm-array script only: refused without it, and checked before any work."""
    if args.slurm and not args.slurm_array:
        raise ConfigError("--slurm sets #SBATCH options of the script --slurm-array writes: add --slurm-array N, or "
                          "drop --slurm")
    for option in args.slurm:
        _key_value(option)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if (not sep or not key or not value or not all(c.isalnum() or c in "-_" for c in key)
            or not value.isprintable()):  # a newline would start another #SBATCH line
        raise ConfigError(f"--slurm {text!r}: give KEY=VALUE, an sbatch option without its dashes, e.g. "
                          "partition=gpu or time=02:00:00")
    return key, value


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.evaluate import EvalConfig, best_settings, evaluate
    from scylla.selection import read_scylla_config

    if args.config:
        given = [f"--{k.replace('_', '-')}" for k in EVAL_SETTINGS if getattr(args, k) != args.default_of(k)]
        if given:
            raise ConfigError(f"--config {args.config} sets the evaluation: drop {', '.join(given)} (or edit the "
                              "config; RUN_DIR may be given)")
        raw = read_scylla_config(args.config)  # a Scylla configuration's paths are relative to its folder
        config = EvalConfig.from_dict({**raw, **({"run_dir": args.run_dir} if args.run_dir else {})}, str(args.config))
    elif args.run_dir:
        config = EvalConfig(args.run_dir, args.drafts, args.target, args.tasks.split(","), args.temperatures,
                            args.batch_sizes, args.shapes, args.baselines.split(",") if args.baselines else [],
                            prompts=args.prompts, prompt_set=args.prompt_set, repeats=args.repeats,
                            max_new_tokens=args.max_new_tokens,
                            replay=args.replay, cost=args.cost, seed=args.seed, device=args.device, dtype=args.dtype)
    else:
        raise InputError("give a RUN_DIR or --config FILE (e.g. experiments/batch.yaml)")
    if args.slurm_array:
        if not Path(config.run_dir).is_dir():
            raise InputError(f"run folder {config.run_dir} does not exist: the array's tasks evaluate what it holds; "
                             "give an existing run folder")
        return _write_array(args, config.run_dir)
    written = evaluate(config)
    print(f"wrote {written} eval records to {Path(config.run_dir) / 'records.jsonl'}")
    if len(config.shapes) > 1:
        print("fastest draft shape per method and batch size (online, tokens/s):")
        for r in best_settings(config.run_dir):
            print(f"  {r['method'][-40:]:>40}  {r['task']:>5}  T={r['temperature']:<4} batch {r['batch_size']:>3}  "
                  f"{r['draft_shape']:<36} {r['tokens_per_second']:7.1f} tok/s  speed-up {r['speedup']:.2f}x")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from pipeline.select import pays, run_selection, servable_by
    from scylla.records import read_records
    from scylla.timing import Speedup

    run_dirs = args.run_dir or []
    check_dir = args.check_dir or str(Path(args.out).with_suffix("")) + "-check"
    if args.check:
        check_output(check_dir, True, "--check-dir")
    target = args.target or next((r["target"] for d in run_dirs for r in read_records(d, kind="train")), None)
    if target is None:
        raise InputError("which target were the fits and costs measured on? give --target, or --run-dir with the "
                         "run whose drafts they fit")
    done = run_selection(args.fits, args.cost, args.batch_sizes, run_dirs, args.out, check_dir, target,
                         args.tasks.split(","), args.token_budget, args.fitted_shape,
                         check=(args.prompts, args.max_new_tokens) if args.check else None)
    chosen, drafts = done.chosen, done.drafts
    print(f"{'batch':>5}  {'layers':>6}  {'width':>5}  {'shape':<36} {'dtype':<8}  {'tokens':>8}  {'MAT (95% CI)':<20} "
          f"{'cost':>5}  predicted speed-up (95% CI) over plain decoding in")
    for b, c in chosen.items():
        lo, hi = c.predicted_speedup_ci95
        print(f"{b:>5}  {c.draft_layers:>6}  {c.draft_width or '-':>5}  {c.draft_shape:<36} {c.dtype:<8}  "
              f"{c.train_tokens:>8}  "
              f"{c.predicted_mat:.2f} "
              f"[{c.predicted_mat_ci95[0]:.2f}, {c.predicted_mat_ci95[1]:.2f}]   {c.step_cost:5.2f}  "
              f"{c.predicted_speedup:.2f}x [{lo:.2f}, {hi:.2f}] {c.plain_dtype}"
              + ("  (extrapolated)" if c.extrapolated else "")
              + ("" if drafts[b] else "  (no trained draft)")
              + (f"  ({servable_by(drafts[b])})" if drafts[b] and pays(c) else "")
              + ("" if pays(c) else "  -> plain decoding (lower bound not above 1)"))
    print(f"wrote {args.out} ({len(done.candidates)} candidates)" + (f"\n{done.note}" if done.note else ""))
    if done.measured is not None:
        print("check on the confirm prompt set: predicted vs measured speed-up of the best draft (online, T=0)")
        for b, c in chosen.items():
            r = done.measured[b]
            measured = (f"{Speedup(r['speedup'], tuple(r['speedup_ci95']), 0, 0).describe()} (MAT predicted "
                        f"{c.predicted_mat:.2f}, measured {r['mean_accepted_length']:.2f})" if r else "not measured")
            regret = (done.regrets or {}).get(b)
            print(f"  batch {b:>3}: predicted {c.predicted_speedup:.2f}x [{c.predicted_speedup_ci95[0]:.2f}, "
                  f"{c.predicted_speedup_ci95[1]:.2f}], measured {measured}"
                  + (f"; regret of the choice {regret['regret']:.2f} [{regret['regret_ci95'][0]:.2f}, "
                     f"{regret['regret_ci95'][1]:.2f}]" if regret else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    print(f"report: {run_demo(args.run_dir, args.grid, threads=args.threads)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scylla.drafters.eagle import EagleHead, read_head_config, trained_for
    from scylla.drafters.eagle3_format import EXPORT, export_eagle3, exportable
    from scylla.models import load_model

    exportable(read_head_config(args.head_dir))  # refuse before loading anything
    check_replaceable(args.out, EXPORT, args.force, sources=[args.head_dir])
    target_name = args.target or trained_for(args.head_dir)
    if target_name is None:
        raise InputError(f"{args.head_dir} has no card.json naming its target: give --target")
    target, _ = load_model(target_name, device=args.device, dtype=args.dtype)
    head = EagleHead.load(args.head_dir, target)
    export_eagle3(head, args.out, int(target.config.num_hidden_layers),
                  target.get_input_embeddings().weight if args.with_embeddings else None, force=args.force)
    print(f"wrote {args.out}: an EAGLE-3 head for {target_name} (serving it: docs/export.md)")
    return 0


def _tree(text: str):
    try:
        return parse_tree(text)
    except ScyllaError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_tts_bench(args: argparse.Namespace) -> int:
    from pipeline.tts_bench import bench_dir, load_bench, run_bench

    config = load_bench(args.config, full=args.full)
    if args.slurm_array:
        return _write_array(args, bench_dir(config, args.out))
    written, table = run_bench(config, args.out)
    print(f"wrote {written} tts records; table: {table}")
    return 0


# The model flags every verb that runs a model shares (one definition, one help text).
THREAD_ARGS = argparse.ArgumentParser(add_help=False)
THREAD_ARGS.add_argument("--threads", type=int, default=None,
                         help="CPU threads of torch and of the jobs a sweep starts (default: the free cores, or "
                         "OMP_NUM_THREADS); see scylla/threads.py")
MODEL_ARGS = argparse.ArgumentParser(add_help=False, parents=[THREAD_ARGS])
MODEL_ARGS.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
MODEL_ARGS.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 on CUDA and on CPUs "
                        "with bf16 units, else float32; $SCYLLA_DTYPE overrides it; scylla.dtypes); costs takes "
                        "several, comma-separated, and writes one table per dtype")


def _generate_parser(sub) -> None:
    gen = sub.add_parser("generate", parents=[MODEL_ARGS],
                         help="decode prompts speculatively and print text and statistics")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--prompts-file", help='jsonl file, one {"prompt": "..."} per line (--prompts is a count in eval '
                     "and select)")
    gen.add_argument("--target", default="smollm2-135m", help="HF folder, hub id, or alias: smollm2-135m (default), "
                     "gemma3-270m")
    gen.add_argument("--drafter", default="none", help=f"one of: {SPECS} (default none: plain decoding)")
    gen.add_argument("--num-draft-tokens", type=_positive(int), help="draft length gamma (default: 4, lookup 10)")
    gen.add_argument("--max-ngram", type=_positive(int), help="prompt lookup: longest n-gram matched (default 3)")
    gen.add_argument("--tree", type=_tree, help=f"draft a dynamic tree: {TREE_FORM}")
    gen.add_argument("--config", help="a Scylla configuration (scylla select): its draft and shape for --batch-size")
    gen.add_argument("--batch-size", type=_positive(int), default=1, help="rows decoded together")
    gen.add_argument("--max-new-tokens", type=_positive(int), default=128, help="new-token limit per prompt")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed (default: none, a fresh draw)")
    gen.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
    gen.add_argument("--json", help="also write texts and statistics to this JSON file")
    gen.add_argument("--quiet", action="store_true", help="statistics only, no texts")
    gen.set_defaults(func=cmd_generate)


def _sweep_parser(sub) -> None:
    sweep = sub.add_parser("sweep", parents=[THREAD_ARGS],
                           help="train the drafts of a grid (experiments/*.yaml) through DeepSpeed")
    sweep.add_argument("grid", help="grid YAML, e.g. experiments/smoke.yaml")
    sweep.add_argument("--run-dir", help="where records, drafts and features go (default runs/SWEEP)")
    sweep.add_argument("--dry-run", action="store_true", help="list the jobs and launch commands, run nothing")
    sweep.add_argument("--rerun-changed", action="store_true", help="train jobs whose settings changed since they "
                       "ran as new runs (RUN_ID~HASH) instead of refusing")
    sweep.set_defaults(func=cmd_sweep)


def _fit_parser(sub) -> None:
    fit = sub.add_parser("fit", help="fit scaling laws y = a + b ln x to run records (docs/fitting.md)")
    fit.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or records .jsonl files)")
    fit.add_argument("--x", default="train_tokens", help="x field, > 0; y is fitted on ln x (default train_tokens)")
    fit.add_argument("--y", default="mean_accepted_length", help="y field (default mean_accepted_length)")
    fit.add_argument("--by", help="comma-separated fields: one fit per combination (default: one fit)")
    fit.add_argument("--where", action="append", help="keep records with these fields, e.g. task=gsm,temperature=0")
    fit.add_argument("--kind", choices=("train", "eval", "tts"), help="keep records of this kind only (default: "
                     "every kind)")
    fit.add_argument("--robust", action="store_true", help="Huber M-estimate instead of OLS")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="N", help="N resamples for a bootstrap slope CI")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the saturating fit's starts")
    fit.add_argument("--json", help="also write the fits to this JSON file")
    fit.add_argument("--holdout-top", type=int, default=0, metavar="N", help="also fit without each group's N largest "
                     "x and check the held-out points against their 95%% prediction intervals (default 0: off)")
    fit.set_defaults(func=cmd_fit)


def _capacity_parser(sub) -> None:
    cap = sub.add_parser("capacity", help="fit law 2 (MAT against draft parameters) and the joint law of parameters "
                         "and tokens to a capacity study's records, with the largest size held out (docs/fitting.md)")
    cap.add_argument("run_dir", metavar="RUN_DIR", help="the study's run folder (experiments/smollm2_capacity.yaml), "
                     "its checkpoints replayed (scylla eval RUN_DIR --replay --prompt-set fit)")
    cap.add_argument("--shape", default="chain:3", help="the replayed draft shape the laws are fitted in")
    cap.add_argument("--lr", type=float, default=0.003, help="the grid's learning rate (other LRs: the LR check)")
    cap.add_argument("--json", help="also write the laws to this JSON file (scylla recipe reads it)")
    cap.set_defaults(func=cmd_capacity)


def _recipe_parser(sub) -> None:
    rec = sub.add_parser("recipe", help="recommend a head's width, depth, training tokens and draft shape for a token "
                         "budget and a serving batch size, from the joint law and the cost model")
    rec.add_argument("--capacity", required=True, help="scylla capacity --json output")
    rec.add_argument("--cost", required=True, action="append", help="cost table(s) with heads of the study's widths "
                     "and depths (scylla costs --head-layers 1,2,4 --head-width 128,256,512); repeat per dtype")
    rec.add_argument("--tokens", required=True, type=_positive(int), help="the training-token budget")
    rec.add_argument("--batch-size", required=True, type=_positive(int), help="the serving batch size")
    rec.add_argument("--law3", help="scylla law3's law3.json: also recommend its draft shape at this batch size")
    rec.add_argument("--layout", default="eagle", choices=("eagle", "eagle3"), help="eagle3: only heads as wide as "
                     "the target, which EAGLE-3 serving engines (vLLM, SGLang) load")
    rec.set_defaults(func=cmd_recipe)


def _eval_parser(sub) -> None:
    ev = sub.add_parser("eval", parents=[MODEL_ARGS],
                        help="evaluate drafts of a run directory (and baselines) into eval records")
    ev.add_argument("run_dir", nargs="?", help="run directory: its trained drafts; records go there")
    ev.add_argument("--config", help="YAML with these settings (e.g. experiments/batch.yaml), instead of the flags")
    ev.add_argument("--drafts", action="append", help="evaluate these draft specs instead of the run's drafts")
    ev.add_argument("--target", help="default: the target the run's drafts were trained for, else smollm2-135m")
    ev.add_argument("--tasks", default="gsm,code", help="comma-separated: gsm, code, copy, rg:NAME, jsonl:PATH")
    ev.add_argument("--temperatures", type=_floats, default=[0.0, 0.6], help="comma-separated; 0 is greedy")
    ev.add_argument("--batch-sizes", type=_ints, default=[1], help="comma-separated decoding batch sizes")
    ev.add_argument("--shapes", type=lambda t: [v for v in t.split(";") if v], default=["chain:2"],
                    help="';'-separated draft shapes: chain:G or tree:top_k=K,depth=D,total_tokens=N")
    ev.add_argument("--baselines", default="none,prompt-lookup", help="comma-separated specs, e.g. none,truncated:4")
    ev.add_argument("--prompts", type=_positive(int), default=16, help="prompts per task (default 16: a law needs 16+ "
                    "prompts as units)")
    ev.add_argument("--prompt-set", choices=PROMPT_SETS, default="fit",
                    help="which of each task's disjoint prompt sets (default fit; the Scylla check uses confirm)")
    ev.add_argument("--repeats", type=_positive(int), default=3, help="online: interleaved timing rounds of plain "
                    "decoding and each method, for paired speed-ups with a 95%% interval; raised to give at least "
                    f"{MIN_RATIOS} paired ratios where the prompts make few batches (default 3)")
    ev.add_argument("--max-new-tokens", type=_positive(int), default=64, help="new-token limit per prompt")
    ev.add_argument("--replay", action="store_true", help="at T=0 count acceptance by exact replay (no timing)")
    ev.add_argument("--cost", help="cost table JSON (scylla costs): adds the predicted speed-up")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed at T > 0 (batch b uses seed + its first "
                    "prompt's index)")
    _array_args(ev)
    ev.set_defaults(func=cmd_eval, default_of=ev.get_default)  # default_of: which flags --config meets


def _array_args(command: argparse.ArgumentParser) -> None:
    """--slurm-array and --slurm: many processes of one command on a cluster (eval, tts-bench)."""
    command.add_argument("--slurm-array", type=_positive(int), metavar="N", help="write RUN_DIR/COMMAND.sbatch, a "
                         "Slurm array of N tasks that each run this command (sharing its settings through claims), "
                         "instead of running it")
    command.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE", help="an #SBATCH option of that "
                         "script, e.g. partition=gpu, time=02:00:00, gpus-per-task=1 (repeat for several)")


def _costs_parser(sub) -> None:
    costs = sub.add_parser("costs", parents=[MODEL_ARGS],
                           help="measure forward costs of the target and drafts (the cost model) to JSON")
    costs.add_argument("--target", default="smollm2-135m", help="HF folder, hub id or alias (smollm2-135m, "
                       "gemma3-270m)")
    costs.add_argument("--draft", action="append", help="truncated:K or draft:PATH (repeat for several)")
    costs.add_argument("--head-layers", type=_ints, help="also untrained EAGLE heads of these depths (named head:L@W)")
    costs.add_argument("--head-width", type=_ints, default=[0], help="their widths, comma-separated: every depth at "
                       "every width (default 0: the target's)")
    costs.add_argument("--head-vocab", type=int, default=0, help="their draft vocabulary (0: the target's; trained "
                       "heads default to 4096, train/config.py draft_vocab)")
    costs.add_argument("--batch-sizes", type=_ints, default=[1, 4, 16], help="comma-separated batch sizes")
    costs.add_argument("--tokens", type=_ints, default=[1, 2, 3, 4, 5, 9, 17],
                       help="new tokens per forward (verify sizes, tree widths)")
    costs.add_argument("--contexts", type=_ints, default=[128, 512], help="tokens already in the KV cache")
    costs.add_argument("--reps", type=_positive(int), default=10,
                       help="timed repeats per forward (each kept, in round order, with their median, min and max)")
    costs.add_argument("--out", default="costs.json", help="the cost table (JSON)")
    costs.add_argument("--calibrate", action="append", metavar="RUN_DIR", help="fit the per-step correction from the "
                       "online eval records of this run directory (repeat for several; scylla.costs.calibrate)")
    costs.set_defaults(func=cmd_costs)


def _law3_parser(sub) -> None:
    law3 = sub.add_parser("law3", help="law 3: the best draft length against the batch size, from a cost table and "
                          "replayed shapes")
    law3.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or records .jsonl files) with "
                      "replay eval records of one draft at several shapes (e.g. chain:1, 2, 4, 8, 16)")
    law3.add_argument("--cost", required=True, help="a cost table (scylla costs) of the target at every batch size "
                      "and verify size, and the draft (e.g. costs.bfloat16.json)")
    law3.add_argument("--where", action="append", help="keep records with these fields, e.g. "
                      "draft_layers=1,train_tokens=65536,prompt_set=select (always mode=replay, temperature=0)")
    law3.add_argument("--batch-sizes", type=_ints, help="comma-separated (default: every batch size of the table)")
    law3.add_argument("--leave-out", type=_positive(int), metavar="B", help="fit the law without batch size B and "
                      "print the shape it predicts there (check it online: docs/fitting.md, law 3)")
    law3.add_argument("--online", action="append", metavar="RUN_DIR", help="with --leave-out: online eval records at "
                      "batch B of the law's shapes and plain decoding; prints the predicted shape against the "
                      "best measured, with the regret")
    law3.add_argument("--resamples", type=_positive(int), default=1000, help="bootstrap resamples of prompts and "
                      "timing rounds")
    law3.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    law3.add_argument("--out", help="folder for law3.json and the figure (default RUN_DIR/law3); replaced only if "
                      "scylla law3 wrote it or it is empty")
    law3.add_argument("--force", action="store_true", help="replace an --out folder that scylla law3 did not write")
    law3.set_defaults(func=cmd_law3)


def _select_parser(sub) -> None:
    sel = sub.add_parser("select", parents=[THREAD_ARGS],
                         help="pick the fastest draft configuration per batch size from laws and costs")
    sel.add_argument("--fits", required=True, help="scylla fit --by draft_layers[,draft_shape] --json output")
    sel.add_argument("--cost", required=True, action="append", help="scylla costs --head-layers ... output (repeat "
                     "with one table per dtype, e.g. costs.float32.json and costs.bfloat16.json from scylla costs "
                     "--dtype float32,bfloat16: each candidate is costed in each, over the fastest plain decoding)")
    sel.add_argument("--batch-sizes", type=_ints, default=[1, 8, 64], help="comma-separated: one choice per batch size")
    sel.add_argument("--token-budget", type=_positive(int), help="training tokens (default: the largest fitted)")
    sel.add_argument("--fitted-shape", default="chain:2", help="shape the MAT was measured at, for fits without "
                     "a draft_shape group (default chain:2)")
    sel.add_argument("--run-dir", action="append", help="where trained drafts are (to name the chosen one)")
    sel.add_argument("--target", help="the target of the fits and costs (default: the one --run-dir's drafts were "
                     "trained for)")
    sel.add_argument("--tasks", default="gsm", help="tasks of the check")
    sel.add_argument("--out", default="scylla.yaml", help="the Scylla configuration (default scylla.yaml)")
    sel.add_argument("--check", action="store_true", help="measure the chosen drafts and print predicted vs measured")
    sel.add_argument("--check-dir", help="run directory of the check's records (default OUT-check)")
    sel.add_argument("--prompts", type=_positive(int), default=8, help="check: prompts per task")
    sel.add_argument("--max-new-tokens", type=_positive(int), default=64, help="check: new tokens per prompt")
    sel.set_defaults(func=cmd_select)


def _demo_parser(sub) -> None:
    demo = sub.add_parser("demo", parents=[THREAD_ARGS], help="the whole study on SmolLM2 (train, replay, fit, select, "
                          "check, figures, report); re-runs reuse finished work")
    demo.add_argument("--run-dir", default="runs/demo", help="where everything goes (re-runs reuse its work)")
    demo.add_argument("--grid", default="experiments/demo.yaml", help="the training grid")
    demo.set_defaults(func=cmd_demo)


def _export_parser(sub) -> None:
    ex = sub.add_parser("export", parents=[MODEL_ARGS],
                        help="write a trained head in a serving engine's format (vLLM, SGLang; docs/export.md)")
    ex.add_argument("head_dir", metavar="HEAD_DIR", help="a trained head folder (layout eagle3, one layer)")
    ex.add_argument("--format", choices=("eagle3",), default="eagle3",
                    help="eagle3: LlamaForCausalLMEagle3, read by vLLM, SGLang and speculators")
    ex.add_argument("--out", required=True, help="the folder to write: new, empty or an earlier export (replaced)")
    ex.add_argument("--force", action="store_true", help="replace --out whatever it holds, unless it holds records, "
                    "the head or the current folder")
    ex.add_argument("--target", help="the head's target (default: the one its card.json names)")
    ex.add_argument("--with-embeddings", action="store_true",
                    help="also write the target's token embedding (engines otherwise share the target's)")
    ex.set_defaults(func=cmd_export)


def _figs_parser(sub) -> None:
    figs = sub.add_parser("figs", help="draw every figure and table (laws 1-3, per task, throughput) from records")
    figs.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or records .jsonl files) "
                      "to draw from; several targets: law 1 on one plot, the rest per target")
    figs.add_argument("--out", default="paper_figs/out", help="output folder (default paper_figs/out, ignored by git)")
    figs.add_argument("--config", help="a Scylla configuration (scylla select): which draft is Scylla's")
    figs.set_defaults(func=cmd_figs)


def _tts_bench_parser(sub) -> None:
    tts = sub.add_parser("tts-bench", parents=[THREAD_ARGS],
                         help="drafters under Best-of-N and multi-round thinking into tts records")
    tts.add_argument("config", help="benchmark YAML, e.g. experiments/tts.yaml")
    tts.add_argument("--out", help="run directory (default runs/NAME-reduced, or runs/NAME with --full)")
    tts.add_argument("--full", action="store_true", help="the full settings instead of the reduced: section")
    _array_args(tts)
    tts.set_defaults(func=cmd_tts_bench)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already states it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False or action.default == []
                or action.default == argparse.SUPPRESS or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {shown})".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scylla", description="Speculative decoding research toolkit.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"scylla {scylla.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _sweep_parser(sub)
    _fit_parser(sub)
    _capacity_parser(sub)
    _recipe_parser(sub)
    _eval_parser(sub)
    _costs_parser(sub)
    _law3_parser(sub)
    _select_parser(sub)
    _demo_parser(sub)
    _export_parser(sub)
    _figs_parser(sub)
    _tts_bench_parser(sub)
    for verb in sub._choices_actions:  # each verb's help line heads its own help page too
        command = sub.choices[verb.dest]
        command.description = command.description or f"{verb.help[0].upper()}{verb.help[1:]}."
        command.formatter_class = _DefaultsFormatter
        command.allow_abbrev = False  # --prompts is not --prompts-file
    return parser


OUTPUTS = {"generate": ("--json", False), "fit": ("--json", False), "capacity": ("--json", False),
           "costs": ("--out", False), "select": ("--out", False), "law3": ("--out", True), "figs": ("--out", True),
           "tts-bench": ("--out", True), "export": ("--out", True), "sweep": ("--run-dir", True),
           "demo": ("--run-dir", True),
           "eval": ("RUN_DIR", True)}  # command: (its output argument, whether it is a folder)


def check_output(path: str, folder: bool, flag: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a file where a folder goes (or the other way
    round), or no writable folder to create it in."""
    target = Path(path)
    if not folder and target.name == RECORDS_FILE:
        raise InputError(f"{flag} {target} would replace a run's records: give another path")
    if target.exists() and target.is_dir() != folder:
        raise InputError(f"{flag} {target} is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'}"
                         " path")
    existing = target if folder and target.exists() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise InputError(f"{flag} {target} cannot be written: {existing} is not a writable folder")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: --slurm-array writes it into a script
    if hasattr(args, "threads"):
        if args.threads is not None and args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        from scylla.threads import use_threads

        args.threads_given = args.threads
        args.threads = use_threads(args.threads)  # the verbs' own processes get as many
    try:
        if hasattr(args, "slurm_array"):
            _check_array_args(args)
        if getattr(args, "device", None):
            from scylla.models import check_device

            check_device(args.device)
        flag, folder = OUTPUTS.get(args.command, ("", False))
        path = getattr(args, flag.lstrip("-").replace("-", "_").lower(), None)
        if path:
            check_output(path, folder, flag)
        return args.func(args)
    except ScyllaError as err:
        print(f"scylla: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scylla: interrupted: finished work is kept (records, checkpoints, caches); run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
