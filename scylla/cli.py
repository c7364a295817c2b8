"""The ``scylla`` command. Misuse exits with 2 and one line on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scylla.atomic import write_json_atomic
from scylla.errors import ScyllaError


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


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scylla.drafters.spec import drafter_from_spec, parse_spec
    from scylla.engine import SpeculativeDecoder
    from scylla.metrics import DecodeStats
    from scylla.models import load_model
    from scylla.prompts import encode_prompts, read_prompts
    from scylla.sampling import SamplingConfig

    SamplingConfig(args.temperature, args.top_k, args.top_p)  # fail fast, before loading models
    parse_spec(args.drafter)
    prompts = read_prompts(args.prompts) if args.prompts else list(args.prompt)
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
    from scylla.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.grid, args.run_dir)
    for line in run_sweep(sweep, dry_run=args.dry_run):
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
    )
    for line in lines:
        print(line)
    return 0


def cmd_figs(args: argparse.Namespace) -> int:
    from paper_figs.laws import law_figures
    from scylla.records import read_records

    records = [r for run_dir in args.run_dirs for r in read_records(run_dir)]
    for y in args.y.split(","):
        for path in law_figures(records, Path(args.out), y):
            print(path)
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
    from scylla.costs import measure_costs
    from scylla.drafters.spec import parse_spec
    from scylla.models import load_model, truncated_draft

    drafts = []
    for spec in args.draft or []:
        kind, arg = parse_spec(spec)
        if kind not in ("truncated", "draft"):
            raise ScyllaError(f"--draft takes truncated:K or draft:PATH (a draft LM), got {spec!r}")
        drafts.append((spec, kind, arg))
    target, _ = load_model(args.target, device=args.device, dtype=args.dtype)
    models = {"target": target}
    for spec, kind, arg in drafts:
        models[spec] = truncated_draft(target, int(arg)) if kind == "truncated" else load_model(
            arg, device=args.device, dtype=args.dtype)[0]
    table = measure_costs(models, args.batch_sizes, args.tokens, args.contexts, reps=args.reps)
    table.save(args.out)
    for e in table.entries:
        print(f"{e['model']:>16}  batch {e['batch']:>3}  tokens {e['tokens']:>3}  context {e['context']:>5}  "
              f"{1000 * e['seconds']:.2f} ms")
    print(f"wrote {args.out}")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from scylla.evaluate import evaluate

    written = evaluate(args.run_dir, args.tasks.split(","), args.temperatures, args.batch_sizes, args.prompts,
                       args.max_new_tokens, args.num_draft_tokens, device=args.device, dtype=args.dtype)
    print(f"wrote {written} eval records to {Path(args.run_dir) / 'records.jsonl'}")
    return 0


def _tree(text: str):
    from scylla.drafters.tree import parse_tree

    try:
        return parse_tree(text)
    except ScyllaError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_tts_bench(args: argparse.Namespace) -> int:
    from scylla.tts_bench import load_bench, run_bench

    written, table = run_bench(load_bench(args.config, full=args.full), args.out)
    print(f"wrote {written} tts records; table: {table}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from scylla.drafters.spec import SPECS
    from scylla.drafters.tree import TREE_FORM

    parser = argparse.ArgumentParser(prog="scylla", description="Speculative decoding research toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode prompts speculatively and print text and statistics")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--prompts", help='jsonl file, one {"prompt": "..."} per line')
    gen.add_argument("--target", default="smollm2-135m", help="HF folder, hub id, or smollm2-135m (default)")
    gen.add_argument("--drafter", default="none", help=f"one of: {SPECS} (default none: plain decoding)")
    gen.add_argument("--num-draft-tokens", type=_positive(int), help="draft length gamma (default: 4, lookup 10)")
    gen.add_argument("--max-ngram", type=_positive(int), default=3, help="prompt lookup: longest n-gram matched")
    gen.add_argument("--tree", type=_tree, help=f"draft a dynamic tree: {TREE_FORM}")
    gen.add_argument("--batch-size", type=_positive(int), default=1)
    gen.add_argument("--max-new-tokens", type=_positive(int), default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    gen.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
    gen.add_argument("--json", help="also write texts and statistics to this JSON file")
    gen.add_argument("--quiet", action="store_true", help="statistics only, no texts")
    gen.set_defaults(func=cmd_generate)

    sweep = sub.add_parser("sweep", help="train the drafts of a grid (experiments/*.yaml) through DeepSpeed")
    sweep.add_argument("grid", help="grid YAML, e.g. experiments/smoke.yaml")
    sweep.add_argument("--run-dir", help="where records, drafts and features go (default runs/SWEEP)")
    sweep.add_argument("--dry-run", action="store_true", help="list the jobs and launch commands, run nothing")
    sweep.set_defaults(func=cmd_sweep)

    fit = sub.add_parser("fit", help="fit scaling laws y = a + b ln x to run records (docs/fitting.md)")
    fit.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or records .jsonl files)")
    fit.add_argument("--x", default="train_tokens", help="x field, > 0; y is fitted on ln x (default train_tokens)")
    fit.add_argument("--y", default="mean_accepted_length", help="y field (default mean_accepted_length)")
    fit.add_argument("--by", help="comma-separated fields: one fit per combination (default: one fit)")
    fit.add_argument("--where", action="append", help="keep records with these fields, e.g. task=gsm,temperature=0")
    fit.add_argument("--kind", choices=("train", "eval", "tts"), help="keep records of this kind only")
    fit.add_argument("--robust", action="store_true", help="Huber M-estimate instead of OLS")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="N", help="N resamples for a bootstrap slope CI")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the saturating fit's starts")
    fit.add_argument("--json", help="also write the fits to this JSON file")
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("eval", help="evaluate every draft of a run directory (and baselines) into eval records")
    ev.add_argument("run_dir")
    ev.add_argument("--tasks", default="gsm,code", help="comma-separated: gsm, code")
    ev.add_argument("--temperatures", type=_floats, default=[0.0, 0.6])
    ev.add_argument("--batch-sizes", type=_ints, default=[1])
    ev.add_argument("--prompts", type=_positive(int), default=8, help="prompts per task")
    ev.add_argument("--max-new-tokens", type=_positive(int), default=64)
    ev.add_argument("--num-draft-tokens", type=_positive(int), default=2, help="draft length of trained drafts")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--dtype", default=None)
    ev.set_defaults(func=cmd_eval)

    costs = sub.add_parser("costs", help="measure forward costs of the target and drafts (the cost model) to JSON")
    costs.add_argument("--target", default="smollm2-135m")
    costs.add_argument("--draft", action="append", help="truncated:K or draft:PATH (repeat for several)")
    costs.add_argument("--batch-sizes", type=_ints, default=[1, 4, 16])
    costs.add_argument("--tokens", type=_ints, default=[1, 3, 5, 9], help="new tokens per forward (verify sizes)")
    costs.add_argument("--contexts", type=_ints, default=[128, 512], help="tokens already in the KV cache")
    costs.add_argument("--reps", type=_positive(int), default=10)
    costs.add_argument("--device", default="cpu")
    costs.add_argument("--dtype", default=None)
    costs.add_argument("--out", default="costs.json")
    costs.set_defaults(func=cmd_costs)

    figs = sub.add_parser("figs", help="draw the laws' figures (PNG and PDF) from run records alone")
    figs.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    figs.add_argument("--out", default="paper_figs/out", help="output folder (default paper_figs/out, ignored by git)")
    figs.add_argument("--y", default="mean_accepted_length,heldout_accuracy", help="comma-separated y fields")
    figs.set_defaults(func=cmd_figs)

    tts = sub.add_parser("tts-bench", help="drafters under Best-of-N and multi-round thinking into tts records")
    tts.add_argument("config", help="benchmark YAML, e.g. experiments/tts.yaml")
    tts.add_argument("--out", help="run directory (default runs/NAME-reduced, or runs/NAME with --full)")
    tts.add_argument("--full", action="store_true", help="the full settings instead of the reduced: section")
    tts.set_defaults(func=cmd_tts_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ScyllaError as err:
        print(f"scylla: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
