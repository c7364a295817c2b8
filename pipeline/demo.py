"""The whole study on the embedded default (``make demo`` = ``scylla demo``): train a grid of heads, replay them,
fit the laws, select the Scylla configuration, measure it, draw the figures and write a markdown report.

Every stage reuses finished work (sweep jobs with DONE, records already present, a saved cost table), so a killed
demo re-run picks up where it stopped. Stages print a banner with the elapsed time; long ones show tqdm bars.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from fit.cli import run_fit
from fit.loglinear import group_label
from paper_figs.all import all_figures
from paper_figs.laws import REPLAY_WHERE
from pipeline.evaluate import EvalConfig, evaluate, parse_shape
from pipeline.select import checkpoint_for, law_of, load_fits, pays, run_selection
from pipeline.sweep import load_sweep, run_sweep
from scylla.atomic import atomic_path, write_json_atomic
from scylla.costs import CostTable, calibrate, measure_cost_tables, table_path, untrained_heads
from scylla.data.prompt_sets import check_disjoint, problem_set
from scylla.data.tasks import Problem
from scylla.dtypes import cpu_capability, default_dtype, plain_dtypes
from scylla.metrics import pooled_mat
from scylla.models import load_model, target_quantization
from scylla.records import find_checkpoints, read_records, records_path
from scylla.timing import MIN_RATIOS, Speedup, rounds_for
from train.data import load_corpus

TREE = "tree:top_k=3,depth=3,total_tokens=8"  # the dynamic tree of the study (EAGLE-2's 10/5/60 is too big for a CPU)
SHAPES = ["chain:3", TREE]  # replay costs most of the demo's time after training: 2 shapes x every checkpoint
SEED_SHAPE = "chain:3"  # the shape of the per-seed law table
BATCH_SIZES = [1, 4, 16]
FIT_PROMPTS = 16  # the fit prompt set: law 1's per-prompt units (x 2 seeds)
SELECT_PROMPTS = 16  # the select prompt set: the top-milestone heads replayed on fresh prompts
REPLAY_TOKENS = 24
NEW_TOKENS = 20  # the check's, on the confirm prompt set (max(BATCH_SIZES) prompts)
CALIBRATION_TOKENS = 16  # the cost model's overhead calibration, on the select set
STAGE_MINUTES = "stage_minutes.json"  # in the run folder: each stage's minutes summed over invocations (_Stages)


CAPACITY_STUDY = [  # the commands of law 2's study (docs/fitting.md "Law 2 and the joint law")
    "scylla sweep experiments/smollm2_capacity.yaml && scylla sweep experiments/smollm2_capacity_lr.yaml",
    "scylla eval runs/smollm2_capacity --replay --prompt-set fit --prompts 16 --shapes chain:3 --tasks gsm "
    "--temperatures 0 --baselines none --max-new-tokens 24",
    "scylla capacity runs/smollm2_capacity --json runs/smollm2_capacity/capacity.json",
    "scylla costs --dtype bfloat16 --head-layers 1,2,4 --head-width 128,256,512 --head-vocab 4096 --batch-sizes 1,4,16 "
    "--tokens 1,4 --contexts 128 --out runs/smollm2_capacity/costs.json",
    "scylla recipe --capacity runs/smollm2_capacity/capacity.json --cost runs/smollm2_capacity/costs.json "
    "--tokens 65536 --batch-size 1",
]


class _Stages:
    """The demo's stage banners (elapsed minutes on stderr) and each stage's minutes, for the report. The minutes are
    also summed over every invocation on the run folder (RUN_DIR/stage_minutes.json), so that a demo killed and
    resumed, or re-run with everything reused, still reports what its stages took."""

    def __init__(self, run_dir: Path):
        self.start = self.last = time.perf_counter()
        self.minutes: dict[str, float] = {}
        self.name = ""
        self.path = run_dir / STAGE_MINUTES
        earlier = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.earlier: dict[str, float] = earlier.get("minutes", {})
        self.invocations: int = earlier.get("invocations", 0) + 1

    def __call__(self, text: str, name: str) -> None:
        self._close()
        self.name = name
        print(f"\n=== [{(time.perf_counter() - self.start) / 60:5.1f} min] {text}", file=sys.stderr, flush=True)

    def _close(self) -> None:
        """End the current stage: its minutes, and the sums saved at once (a killed demo keeps what it spent)."""
        now = time.perf_counter()
        if self.name:
            self.minutes[self.name] = (now - self.last) / 60
            write_json_atomic(self.path, {"invocations": self.invocations, "minutes": self.summed()})
        self.last = now

    def total(self) -> float:
        """This invocation's minutes so far, the current stage closed."""
        self._close()
        self.name = ""
        return (time.perf_counter() - self.start) / 60

    def summed(self) -> dict[str, float]:
        """Each stage's minutes over every invocation on the run folder, this one included."""
        return {k: self.earlier.get(k, 0.0) + self.minutes.get(k, 0.0) for k in {**self.earlier, **self.minutes}}


def _costs(run_dir: Path, target_name: str, layers: list[int], width: int, draft_vocab: int,
           heads: list[str]) -> list[Path]:
    """One cost table per dtype plain decoding is timed in (scylla.dtypes.plain_dtypes: float32 and bfloat16 on a
    CPU with bf16 units) of the target and untrained heads of these depths, measured once in one interleaved run and
    then reused, each with its per-step overhead calibrated on online runs of ``heads`` (draft specs) in its dtype on
    the select prompt set."""
    dtypes = plain_dtypes()
    paths = {d: table_path(run_dir / "costs.json", d) for d in dtypes}
    if not all(p.exists() for p in paths.values()):
        shapes = [parse_shape(s) for s in SHAPES]
        # the target's verify sizes and the heads' draft widths, every model of every dtype timed at all of them in
        # one interleaved run (scylla.costs.measure_cost_tables)
        tokens = sorted({1} | {s.verify_tokens for s in shapes} | {s.tree.top_k for s in shapes if s.tree})
        models = {}
        for d in dtypes:
            target, _ = load_model(target_name, dtype=d)
            # the trained heads' shape, vocabulary included
            models[d] = {"target": target, **untrained_heads(target, layers, width, draft_vocab)}
        for d, table in measure_cost_tables(models, BATCH_SIZES, tokens, [128], reps=5).items():
            table.target_quantization = target_quantization(target_name, models[d]["target"])
            table.save(paths[d])
        del models
    calibration = run_dir / "calibration"
    for d, path in paths.items():
        table = CostTable.load(path)
        if not table.overhead:
            evaluate(EvalConfig(str(calibration), drafts=heads, target=target_name, tasks=["gsm"], temperatures=[0.0],
                                batch_sizes=BATCH_SIZES, shapes=SHAPES, baselines=["none"], prompts=max(BATCH_SIZES),
                                prompt_set="select", max_new_tokens=CALIBRATION_TOKENS, repeats=1, dtype=d,
                                baseline_dtypes=dtypes))
            calibrate(table, read_records(calibration, kind="eval")).save(path)
    return list(paths.values())


def demo_prompt_sets(grid: str | Path = "experiments/demo.yaml", task: str = "gsm") -> dict[str, list[str | Problem]]:
    """The demo's prompts by role: every training job's corpus prompts (texts), then the fit, select and confirm
    sets of ``task`` at the demo's sizes (Problems, with their templates); ``check_disjoint`` of them must pass."""
    train: dict[str, None] = {}
    for job in load_sweep(grid).jobs:
        train.update(dict.fromkeys(load_corpus(job.data.source, job.data.examples, seed=0)["prompt"]))
    sizes = {"fit": FIT_PROMPTS, "select": SELECT_PROMPTS, "confirm": max(BATCH_SIZES)}
    return {"train": list(train), **{name: problem_set(task, name, n) for name, n in sizes.items()}}


def run_demo(run_dir: str | Path = "runs/demo", grid: str | Path = "experiments/demo.yaml",
             threads: int | None = None) -> Path:
    """Run every stage (the training jobs on ``threads`` CPU threads; None: the environment's); returns the report's
    path."""
    run_dir = Path(run_dir)
    banner = _Stages(run_dir)
    sweep = load_sweep(grid, run_dir)
    prompt_sets = demo_prompt_sets(grid)
    check_disjoint(prompt_sets)  # before any work: a law, a choice and its report on disjoint prompts and templates
    banner(f"1/7 train {len(sweep.jobs)} draft heads through DeepSpeed ({grid} -> {run_dir}; dtype "
           f"{sweep.jobs[0].dtype or default_dtype()}, {cpu_capability()})", "train")
    for line in run_sweep(sweep, threads=threads):
        print(line, file=sys.stderr)
    train = read_records(run_dir, kind="train")
    target = train[0]["target"]

    top = max(r["train_tokens"] for r in train)
    banner(f"2/7 exact replay (gsm, T=0) of {len(train)} checkpoints x {len(SHAPES)} draft shapes on the fit prompt "
           f"set, and of the {top}-token heads on the select set (prompt lookup also on the confirm set)", "replay")
    replay = dict(tasks=["gsm"], temperatures=[0.0], batch_sizes=[1], shapes=SHAPES, replay=True,
                  max_new_tokens=REPLAY_TOKENS)
    evaluate(EvalConfig(str(run_dir), baselines=["none", "prompt-lookup"], prompts=FIT_PROMPTS, prompt_set="fit",
                        **replay))
    top_heads = [f"draft:{r['checkpoint']}" for r in find_checkpoints(run_dir) if r["train_tokens"] == top]
    evaluate(EvalConfig(str(run_dir), drafts=top_heads, baselines=["none", "prompt-lookup"], prompts=SELECT_PROMPTS,
                        prompt_set="select", **replay))
    # Prompt lookup's shape is chosen on the select set and reported on the confirm set (Fig. 2) like the heads',
    # whose confirm-set MAT the check measures online (NEW_TOKENS); the top heads are replayed there too, at the fit's
    # horizon, so that the law's error on fresh templates and the horizon's share of it are told apart.
    evaluate(EvalConfig(str(run_dir), drafts=top_heads, baselines=["none", "prompt-lookup"], prompts=max(BATCH_SIZES),
                        prompt_set="confirm", **replay))

    banner(f"3/7 cost model in {', '.join(plain_dtypes())}: target and head forward costs by batch size, and the "
           "per-step overhead calibrated online on the select set", "costs")
    layers = sorted({r["draft_layers"] for r in train})
    cost_paths = _costs(run_dir, target, layers, train[0]["draft_width"], train[0]["draft_vocab_size"], top_heads[:1])

    banner("4/7 fit the laws", "fit")
    fits_path, train_fits_path = run_dir / "fits.json", run_dir / "fits-train.json"
    holdout = 1 if len({r["train_tokens"] for r in train}) >= 4 else 0  # the top milestone, when 3+ stay to fit
    law1_where = group_label({k: v for k, v in REPLAY_WHERE.items() if k != "kind"})
    mat_table = run_fit([str(run_dir)], kind="eval", where=law1_where, by="draft_layers,draft_shape", bootstrap=200,
                        json_path=str(fits_path), holdout_top=holdout)
    acc_table = run_fit([str(run_dir)], kind="train", y="heldout_accuracy", by="draft_layers", bootstrap=200,
                        json_path=str(train_fits_path))
    seed_table = run_fit([str(run_dir)], kind="eval", where=f"{law1_where},draft_shape={SEED_SHAPE}",
                         by="draft_layers,run_id", bootstrap=200)
    print("\n".join(mat_table + acc_table + seed_table), file=sys.stderr)

    banner(f"5/7 select the Scylla configuration (draft, shape and dtype) for batch sizes {BATCH_SIZES} and measure it",
           "select and check")
    config_path, check_dir = run_dir / "scylla.yaml", run_dir / "check"
    baseline = checkpoint_for([str(run_dir)], 1, top)  # EAGLE-2-style: 1 layer
    also = [(f"draft:{baseline}", TREE)] if baseline else []
    done = run_selection(fits_path, cost_paths, BATCH_SIZES, [str(run_dir)], config_path, str(check_dir), target,
                         ["gsm"], also=also, check=(max(BATCH_SIZES), NEW_TOKENS))
    chosen, drafts, checked, regrets = done.chosen, done.drafts, done.measured, done.regrets

    banner("6/7 figures from the records alone", "figures")

    calibration = run_dir / "calibration"  # online on the select set: where Table 5 chooses each method's shape
    records = read_records(run_dir) + read_records(check_dir)
    records += read_records(calibration) if records_path(calibration).exists() else []
    figures = all_figures(records, run_dir / "figs", scylla_config=str(config_path))

    banner("7/7 report", "report")
    report = run_dir / "report.md"
    text = _report(run_dir, train, mat_table + ["", f"Per run (seed), {SEED_SHAPE}:", *seed_table], acc_table,
                   chosen, drafts, checked, figures, banner,
                   {name: len(texts) for name, texts in prompt_sets.items()},
                   _law_on_fresh_templates(run_dir, fits_path, top), regrets or {}, fits_path,
                   [CostTable.load(p) for p in cost_paths])
    with atomic_path(report) as tmp:
        Path(tmp).write_text(text)
    print(f"wrote {report}", file=sys.stderr)
    return report


def _law_on_fresh_templates(run_dir: Path, fits_path: Path, top: int) -> tuple[list[str], list[float]]:
    """Markdown rows: each law's MAT at ``top`` tokens (95% confidence and prediction intervals) against the MAT of
    the top heads replayed (same horizon as the fit) on the select and confirm prompt sets, whose templates the fit
    set never asks (all seeds pooled), and on the fit set; and each law's relative error on the two fresh sets."""
    where = {k: v for k, v in REPLAY_WHERE.items() if k != "prompt_set"}
    top_records = read_records(run_dir, where={**where, "train_tokens": top})  # every prompt set, read once
    rows, errors = [], []
    for fit in load_fits(fits_path):
        law, group = law_of(fit), fit["group"]
        measured = {}
        for name in ("select", "confirm", "fit"):
            found = [r for r in top_records if r.get("prompt_set") == name and all(r[k] == v for k, v in group.items())]
            measured[name] = pooled_mat(found) if found else None
        mean, lo, hi = law.predict(top)
        _, plo, phi = law.predict(top, interval="prediction")
        inside = measured["select"] is not None and plo <= measured["select"] <= phi
        errors += [mean / measured[k] - 1 for k in ("select", "confirm") if measured[k]]
        shown = {k: "-" if v is None else f"{v:.3f}" for k, v in measured.items()}
        rows.append(f"| {group['draft_layers']} | {group['draft_shape']} | {mean:.3f} [{lo:.3f}, {hi:.3f}] | "
                    f"[{plo:.3f}, {phi:.3f}] | {shown['select']} | {shown['confirm']} | {shown['fit']} | "
                    f"{'yes' if inside else 'no'} |")
    return rows, errors


def _error_range(errors: list[float]) -> str:
    """"mean +4.1% (from -2.0% to +9.3%)", or "not measured"."""
    if not errors:
        return "not measured"
    return f"mean {sum(errors) / len(errors):+.1%} (from {min(errors):+.1%} to {max(errors):+.1%})"


def _interval_text(median: float, ci95) -> str:
    if ci95 and ci95[0] == ci95[1] == median == 1:
        return "1.00x (the baseline)"
    return Speedup(median, tuple(ci95), 0, 0).describe() if ci95 else f"{median:.2f}x"


def _measured(record: dict) -> str:
    """A check record's speed-up with its interval, or "no measurable difference (...)"."""
    return _interval_text(record["speedup"], record.get("speedup_ci95"))


def _short(method: str) -> str:
    """``draft:runs/demo/jobs/eagle-layers2-s0/tokens-65536 chain:3`` -> ``eagle-layers2-s0/tokens-65536 chain:3``."""
    spec, _, shape = method.partition(" ")
    if spec == "none":
        return "plain decoding"
    return f"{'/'.join(Path(spec.partition(':')[2]).parts[-2:])} {shape}"


def _plain_words(fits_path: Path, regrets: dict) -> list[str]:
    """Which laws held on their held-out milestone, where the saturating law predicted better, and the regret."""
    payload = json.loads(fits_path.read_text())
    held, out = payload.get("holdout") or [], []
    if held:
        missed = [p for p in held if not p["inside"]]
        out.append(f"- Held out: {len(held) - len(missed)} of {len(held)} top-milestone points fall inside the 95% "
                   "prediction interval of the law fitted without them"
                   + ("." if not missed else ": the law does not predict " + ", ".join(
                       f"{group_label(p['group'])} (measured {p['y']:.3f}, predicted {p['predicted']:.3f})"
                       for p in missed) + "."))
    bends = [group_label(f["group"]) for f in payload["fits"] if f["extrapolation"].get("preferred") == "saturating"]
    checked = [f for f in payload["fits"] if f["extrapolation"].get("preferred")]
    if checked:
        out.append(f"- Bends: the saturating law predicted the largest token count better than the log-linear one "
                   f"for {len(bends)} of {len(checked)} groups" + (f" ({', '.join(bends)})" if bends else "")
                   + "; one held-out x per group is a single, noisy test.")
    for b, g in regrets.items():
        if g:
            verdict = ("the choice was the best measured" if g["choice"] == g["best"] else
                       f"the best measured was {_short(g['best'])}, {g['regret']:.2f} more speed-up "
                       f"[{g['regret_ci95'][0]:.2f}, {g['regret_ci95'][1]:.2f}]")
            out.append(f"- Batch {b}: Scylla chose {_short(g['choice'])}; {verdict}.")
    return out


def _report(run_dir: Path, train: list[dict], mat_table: list[str], acc_table: list[str], chosen: dict,
            drafts: dict, measured: dict, figures: list[Path], stages: _Stages, set_sizes: dict[str, int],
            fresh: tuple[list[str], list[float]], regrets: dict, fits_path: Path, costs: list[CostTable]) -> str:
    select_rows, fresh_errors = fresh
    plain_share = {r["batch_size"]: r["prefill_share"] for r in read_records(
        run_dir / "check", kind="eval", where=dict(method="none", mode="online", prompt_set="confirm"))
        if r.get("prefill_share") is not None and r.get("dtype") == r.get("baseline_dtype", r.get("dtype"))}
    minutes = stages.total()
    summed = stages.summed()
    tokens = sorted({r["train_tokens"] for r in train})
    replayed = {r.get("dtype", "float32") for r in read_records(run_dir, kind="eval", where=dict(mode="replay"))}
    lines = [
        "# Scylla demo report",
        "",
        f"Dtypes: heads trained (and the target's features and on-policy answers computed) in "
        f"{', '.join(sorted({r.get('dtype', 'float32') for r in train}))}; replayed in {', '.join(sorted(replayed))}; "
        f"costs measured in {', '.join(c.dtype for c in costs)}, and the Scylla configuration picks the dtype per "
        f"batch size; CPU capability {costs[0].cpu_capability or costs[0].device} (scylla.dtypes). Law 1 spans "
        f"{math.log10(tokens[-1] / tokens[0]):.2f} decades of training tokens ({tokens[0]} to {tokens[-1]}). Stage "
        "times (min" + (f", summed over the {stages.invocations} invocations on this run folder" if
                        stages.invocations > 1 else "") + "): "
        + ", ".join(f"{name} {m:.1f}" for name, m in summed.items()) + ".",
        "",
        f"Target {train[0]['target']} (weights: {train[0].get('target_quantization', 'quantisation not recorded')}); "
        f"{len({r['run_id'] for r in train})} EAGLE-style heads "
        f"(depths {sorted({r['draft_layers'] for r in train})}, width {train[0]['draft_width']}, layout "
        f"{train[0].get('layout', 'eagle')}, training-time test unrolled {train[0].get('unroll', 1)} step(s)) trained "
        f"on the target's own GSM-style answers to {sorted({r['train_tokens'] for r in train})} tokens, seeds "
        f"{sorted({r['seed'] for r in train})}, at most {max(r.get('epochs', 0) for r in train):.2f} epochs of "
        f"{max(r.get('unique_tokens', 0) for r in train)} unique tokens; "
        f"this run took {sum(summed.values()):.1f} min" + (
            f" in all, this invocation {minutes:.1f} (stages that were already done are reused)."
            if stages.invocations > 1 else "."),
        "",
        "## Prompt sets",
        "",
        f"Three disjoint sets of held-out GSM-style problems (reasoning-gym gsm_symbolic, evaluation-only "
        f"templates): fit ({set_sizes['fit']} prompts: law 1), select ({set_sizes['select']}: the laws checked on "
        f"fresh prompts) and confirm ({set_sizes['confirm']}: the Scylla check), each from its own seed and its own "
        "templates (question shapes: 8 a set, scylla.data.tasks.SET_TEMPLATES; training has its own), in turn; "
        f"checked disjoint by content hash and by template from each other and from the {set_sizes['train']} training prompts before any work "
        "(scylla.data.prompt_sets).",
        "",
        "## Law 1: MAT against training tokens, per depth and draft shape",
        "",
        f"Exact replay at T=0 on the fit set ({set_sizes['fit']} prompts x {REPLAY_TOKENS} new tokens). The law's "
        "slope is the mean of per-unit slopes, a unit being one prompt under one seed, with a t interval over the "
        "independent units, the templates the prompts come from (8 a set), "
        "(\"prompt as unit\"); the line passes through the pooled points; \"pooled-points b\" is OLS on the "
        "pooled MAT per checkpoint, for comparison (its interval never sees the prompts' spread of slopes); the "
        "bootstrap resamples runs; the last column compares the log-linear law with a saturating one fitted without "
        "the largest token count; \"Held out\" fits each group without its largest token count and checks those "
        "points against their 95% prediction intervals (docs/fitting.md).",
        "",
        "```", *mat_table, "```",
        "",
        "The laws at the largest token count against the same heads replayed on fresh templates: the select set "
        f"({set_sizes['select']} prompts) and the confirm set ({set_sizes['confirm']}), neither sharing a template "
        f"with the fit set, at the fit's horizon ({REPLAY_TOKENS} new tokens), seeds pooled; \"inside\": the select "
        "set's MAT inside the law's 95% prediction interval. The law's error on fresh templates (law / measured - 1) "
        f"over every row and both sets: {_error_range(fresh_errors)}. The Scylla check below decodes "
        f"{NEW_TOKENS} tokens online on the confirm set: its MAT against the confirm column is the horizon's share.",
        "",
        "| layers | shape | law: MAT [95% CI] | 95% prediction interval | select set | confirm set | fit set | inside |",
        "|---|---|---|---|---|---|---|---|",
        *select_rows,
        "",
        "Held-out next-token accuracy at each checkpoint (train records):",
        "",
        "```", *acc_table, "```",
        "",
        "## The Scylla configuration",
        "",
        "Chosen per batch size from the laws and the measured costs (pipeline/select.py): the best draft is the one "
        "whose predicted speed-up has the highest lower 95% bound, and it is chosen over plain decoding only where "
        "that bound is above 1. Then measured online on the confirm set "
        f"({max(BATCH_SIZES)} prompts x {NEW_TOKENS} new tokens) against plain decoding in the same run, in "
        f"{EvalConfig.repeats} interleaved rounds (at least {MIN_RATIOS} paired ratios per setting: "
        f"{rounds_for(EvalConfig.repeats, 1)} rounds where all prompts make one batch): the speed-up is the median "
        "paired ratio with a 95% interval over prompts (over rounds for one batch; scylla.timing); where the interval "
        "holds 1 it reads \"no measurable difference\".",
        "",
        *[f"In {cost.dtype}: the cost model's per-step correction (work outside the forwards; negative where a step in "
          "the engine costs less than its forwards measured alone), fitted on online runs of a 1-layer head on the "
          f"select set ({CALIBRATION_TOKENS} new tokens, prefill excluded; scylla.costs.calibrate), ms per step, plain "
          "/ chain / tree: " + ", ".join(f"batch {b}: " + " / ".join(f"{o.get(k, 0) * 1e3:.1f}"
                                                                      for k in ("plain", "chain", "tree"))
                                         for b, o in sorted(cost.overhead.items(), key=lambda kv: int(kv[0]))) + ". "
          "And the batch lag fitted with it (a batch steps until its slowest row is done: steps of a batch / steps of "
          "its average row; scylla.costs.batch_lag), plain / chain / tree: "
          + ", ".join(f"batch {b}: " + " / ".join(f"{o.get(k, 1.0):.2f}" for k in ("plain", "chain", "tree"))
                      for b, o in sorted(cost.lag.items(), key=lambda kv: int(kv[0]))) + ".\n" for cost in costs],
        "The cost model predicts the decoding phase; \"decoding only\" is that phase measured (the paired median "
        "with the prompts' prefill left out), its error the cost model's. The end-to-end speed-up includes the "
        "prefill, which speculation does not speed up (its share of plain decoding's time is given).",
        "",
        "Every speed-up, predicted and measured, is over the faster plain decoding of the dtypes (\"over\"), timed in "
        "the same rounds.",
        "",
        "| batch | best draft: layers | shape | dtype | over | train tokens | MAT predicted (95% CI) | MAT measured | "
        "speed-up predicted (95% CI) | decoding only, measured (error) | end to end, measured (95% CI) | prefill share "
        "| Scylla's choice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, c in chosen.items():
        m = measured.get(b)
        mat, speedup = (f"{m['mean_accepted_length']:.2f}", _measured(m)) if m else ("-", "-")
        decode = (f"{m['decode_speedup']:.2f}x ({c.predicted_speedup / m['decode_speedup'] - 1:+.0%})"
                  if m and m.get("decode_speedup") else "-")
        share = f"{plain_share.get(b, float('nan')):.0%}"
        choice = f"the draft in {c.dtype}" if pays(c) else f"plain decoding in {c.plain_dtype}"
        over = m.get("baseline_dtype", c.plain_dtype) if m else c.plain_dtype
        lines.append(
            f"| {b} | {c.draft_layers} | {c.draft_shape} | {c.dtype} | plain {over} | {c.train_tokens} | "
            f"{c.predicted_mat:.2f} "
            f"[{c.predicted_mat_ci95[0]:.2f}, {c.predicted_mat_ci95[1]:.2f}] | {mat} | {c.predicted_speedup:.2f}x "
            f"[{c.predicted_speedup_ci95[0]:.2f}, {c.predicted_speedup_ci95[1]:.2f}] | {decode} | {speedup} | {share} "
            f"| {choice} |")
    if measured.get(1):
        c, m = chosen[1], measured[1]
        lines += ["", f"The demo's best head at batch 1 ({c.draft_layers} layer(s), {c.train_tokens} tokens, "
                  f"{c.draft_shape}): MAT {m['mean_accepted_length']:.2f}, speed-up over plain decoding "
                  f"{_measured(m)}, measured."]
    if regrets:
        lines += ["", "How far the choice is from the best configuration measured on the confirm set (the check's "
                  "drafts and shapes, and plain decoding; regret = best - choice in median paired speed-up):", "",
                  "| batch | Scylla's choice | its speed-up | best measured | its speed-up | regret [95% CI] |",
                  "|---|---|---|---|---|---|"]
        for b, g in regrets.items():
            if g:
                lines.append(f"| {b} | {_short(g['choice'])} | {_interval_text(g['choice_speedup'], g['choice_ci95'])} "
                             f"| {_short(g['best'])} | {_interval_text(g['best_speedup'], g['best_ci95'])} | "
                             f"{g['regret']:.2f} [{g['regret_ci95'][0]:.2f}, {g['regret_ci95'][1]:.2f}] |")
    lines += ["", "## In plain words", "", *_plain_words(fits_path, regrets)]
    lines += ["", f"Configuration: `{run_dir / 'scylla.yaml'}` (`scylla generate --config` and `scylla eval --config` "
              "read it).", "", "## Figures", ""]
    for path in figures:
        if path.suffix == ".png":
            lines += [f"![{path.stem}]({path.relative_to(run_dir)})", ""]
        elif path.suffix == ".md":
            lines += [path.read_text(), ""]
    lines += ["## Reproduce", "", "```", "make demo            # this report, from scratch (re-runs reuse work)",
              f"scylla figs {run_dir} --out {run_dir / 'figs'}   # the figures again, from the records alone", "```",
              "", "Law 2 (draft capacity: widths x depths, jointly with tokens) is the capacity study, about 40 min "
              "more on 2 cores after this demo (it reuses its on-policy answers and features; docs/fitting.md):", "",
              "```", *CAPACITY_STUDY, "```", ""]
    return "\n".join(lines)
