"""Decode benchmark: this engine (scylla) against HF ``generate`` on SmolLM2-135M (or --target), greedy, on CPU in each
dtype of --dtypes (default: float32 and bfloat16 on a CPU with bf16 units, scylla.dtypes.plain_dtypes).

Two prompt sets: ``gsm`` (GSM-style word problems from reasoning-gym's gsm_symbolic) and ``copy`` (prompts whose
answers mostly repeat, extract or reformat text given in the prompt). Every prompt goes through the chat template
(a base model without one, such as gemma3-270m, gets the plain text).

Rows at batch 1 (one prompt per call): plain decoding, truncated drafts (the target's first K layers, gamma tokens
per step), prompt lookup (n-gram matching); each for both engines (HF: ``assistant_model`` with a constant schedule,
``prompt_lookup_num_tokens``). Rows at batch B > 1: this engine plain, prompt lookup and truncated K
(--batched-draft-layers, default 2), and HF plain (HF refuses assisted generation at batch > 1). Batches of B are
filled by cycling through the set (max(B, n) prompts).

Timing: per batch size, one untimed warm-up call of every mode on the first batch (--warmup-tokens new tokens), then
--repeats interleaved rounds (raised to give at least 6 paired ratios where the prompts make few batches;
scylla.timing.rounds_for), each a pass of every mode over all batches, the order of the modes reversed every other
round, so that a machine that slows down or speeds up during the run touches every mode alike. tokens/s = new tokens
of a pass / wall seconds of the pass (the sum of its generate calls, timed outside generate for both engines); the
table shows the median over rounds. speed-up = the median paired ratio over (batch, round): the mode's tokens/s on a
batch over this engine's plain tokens/s on that batch in the same round, in the dtype whose plain decoding is faster
at that batch size (column "over"), so that a dtype never wins by slowing the baseline, with its bootstrap 95%
interval over batches (scylla.timing.paired_speedup); where the interval holds 1 the table says "no measurable
difference". vs HF pairs this engine's mode with HF's same mode in the same dtype the same way. New tokens are
counted up to and including EOS. MAT = new tokens / target forwards (the prefill counts). For HF, target forwards are
counted with a forward hook on the target module (draft models are separate top-level modules: their forwards do not
fire it; checked at start-up); HF MAT is shown at batch 1 only (a batched forward also runs finished rows). Run on an
otherwise idle machine: other CPU work skews every timing (the JSON records the load average).

Correctness: every mode's greedy output is compared with this engine's plain batch-1 output in the same dtype for the
same prompt, token for token (column same_as_plain). In float32 they must be equal. In bfloat16 a k-token verify and a
1-token step round differently, so texts may part at near-ties; there the column "argmax" counts the emitted tokens
that are not the bf16 target's argmax up to the near-tie tolerance (scylla.lossless, every position checked; 0 is
lossless).

The i.i.d. model's speed-up over plain decoding (Leviathan et al. 2023, with a measured verify cost):

    iid pred = (1 - a^(g+1)) / ((1 - a) * (g*c + v))

a: measured acceptance rate (accepted / drafted draft tokens); g: draft length (gamma for draft models, the measured
mean draft length for prompt lookup); c: cost of one draft step / cost of one single-token target step (0 for prompt
lookup, a CPU lookup); v: cost of a target forward over g+1 tokens / cost of one single-token target step. Costs are
measured once per set and batch size with direct forwards through this engine's KV cache (RaggedKV) holding a
context of about 128 tokens, median of several timings. It is a model, not a bound: it assumes every draft token is
accepted independently with probability a, while real acceptance is correlated along a draft (and prompt lookup
drafts are of varying length), so measured speed-ups can exceed it (prompt lookup on gsm: 0.56 predicted, 1.10
measured). The JSON also has mat_prediction = MAT / (g*c + v), the speed-up the measured MAT gives at those costs
(it leaves out the per-step work outside the forwards).

Usage: python benchmarks/decode.py [--target smollm2-135m] [--quick] [--sets gsm,copy] [--batch-sizes 1,4,8,16]
       [--dtypes float32,bfloat16] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The repository root first: run as a script, this folder would come first and its train.py would shadow the train
# package (which the gsm set reads its training corpus from).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scylla.atomic import write_json_atomic  # noqa: E402
from scylla.costs import forward_seconds  # noqa: E402
from scylla.drafters import DraftModel, EagleDrafter, EagleHead, PromptLookup  # noqa: E402
from scylla.drafters.spec import drafter_from_spec  # noqa: E402
from scylla.drafters.tree import parse_tree  # noqa: E402
from scylla.dtypes import cpu_capability, parse_dtypes, plain_dtypes  # noqa: E402
from scylla.lossless import greedy_violations  # noqa: E402
from scylla.engine import SpeculativeDecoder  # noqa: E402
from scylla.metrics import DecodeStats  # noqa: E402
from scylla.models import load_model, truncated_draft  # noqa: E402
from scylla.prompts import encode_prompts  # noqa: E402
from scylla.timing import Speedup, paired_speedup, rounds_for  # noqa: E402

DEFAULTS = dict(prompts_per_set=8, max_new_tokens=128, repeats=3, batch_sizes="1,4,8,16", draft_layers="2,4,8")
QUICK = dict(prompts_per_set=2, max_new_tokens=32, repeats=1, batch_sizes="1,4", draft_layers="4")
HF_BATCHED_NOTE = "HF generate refuses assisted generation (draft model, prompt lookup) at batch > 1."

COPY_PROMPTS = [
    "Repeat this list exactly, one item per line: apples, pears, plums, cherries, grapes, lemons, limes, figs.",
    "Copy the following paragraph word for word: The lighthouse keeper climbed the spiral stairs every evening "
    "at dusk. He wound the clockwork, trimmed the wick and polished the great lens until it shone. Ships passing "
    "the rocky point relied on its steady beam to find their way home.",
    "Here is a receipt: Milk 2.49; Bread 3.10; Eggs 4.25; Butter 5.80; Coffee 9.99; Rice 6.45. List every item "
    "with its price, one per line, in the same order.",
    "Convert this data into a markdown table with the columns Name, City and Age: Alice, Paris, 34; Bob, Berlin, "
    "29; Carla, Madrid, 41; Deepak, Mumbai, 37; Emma, Oslo, 25.",
    "Rewrite this contact as a JSON object with the keys name, email, phone and city: Name: Jordan Lee. Email: "
    "jordan.lee@example.com. Phone: 555-0142. City: Portland.",
    "Rename the variable x to total in this Python code and show the whole code again:\n"
    "def add_all(values):\n    x = 0\n    for v in values:\n        x = x + v\n    return x",
    "Repeat the following sentence three times, each on its own line: The quick brown fox jumps over the lazy dog.",
    "Extract all the email addresses from this text and list them one per line: Contact anna@mail.com for sales, "
    "ben.k@work.org for support, and chris_99@school.edu or dana@shop.net for anything else.",
]


# ---------------------------------------------------------------- prompts and batches


def gsm_texts(n: int, seed: int, exclude: str = "") -> list[str]:
    """n GSM-style word problems from reasoning-gym's gsm_symbolic generator (deterministic for a seed), none of
    which is in the training corpus ``exclude`` (SOURCE:N, as train/config.py's data.source and data.examples)."""
    import reasoning_gym

    from train.data import load_corpus

    seen: set[str] = set()
    if exclude:
        source, _, count = exclude.rpartition(":")
        seen = set(load_corpus(source, int(count), seed=0)["prompt"])
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=4 * n + 16, seed=seed)
    questions = [dataset[i]["question"] for i in range(len(dataset))]
    return [q for q in questions if q not in seen][:n]


def copy_texts(n: int) -> list[str]:
    """The first n copy-heavy prompts (cycling if n exceeds the list)."""
    return [COPY_PROMPTS[i % len(COPY_PROMPTS)] for i in range(n)]


def prompt_set(name: str, n: int, seed: int, exclude: str = "") -> list[str]:
    if name == "gsm":
        return gsm_texts(n, seed, exclude)
    if name == "copy":
        return copy_texts(n)
    if name.startswith("task:"):  # evaluation problems, never in a training corpus (scylla.data.tasks)
        from scylla.data.tasks import get_task

        return [problem.prompt for problem in get_task(name[5:]).problems(n)]
    raise SystemExit(f"decode.py: unknown prompt set {name!r} (use gsm, copy, task:NAME)")


@dataclass
class Batch:
    """Left-padded inputs and, per row, the index of its prompt in the set."""

    ids: torch.Tensor
    mask: torch.Tensor
    index: list[int]


def make_batches(tokenizer, texts: list[str], batch_size: int) -> list[Batch]:
    """max(batch_size, n) prompts cycling through texts, in batches of batch_size."""
    order = [i % len(texts) for i in range(max(batch_size, len(texts)))]
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = encode_prompts(tokenizer, [texts[i] for i in index], chat=True)
        batches.append(Batch(ids, mask, index))
    return batches


# ---------------------------------------------------------------- running one mode


@dataclass
class Run:
    """One timed pass of a mode over all batches of a set."""

    generated: list[list[int]] = field(default_factory=list)  # per row, batch order
    index: list[int] = field(default_factory=list)  # prompt index per row
    wall_seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)  # per batch: its generate call's wall seconds
    batch_tokens: list[int] = field(default_factory=list)  # per batch: its new tokens
    cpu_seconds: float = 0.0  # this process's CPU time: well below threads x wall means other work competed
    target_forwards: int = 0  # counted by the forward hook
    stats: DecodeStats | None = None  # this engine only

    @property
    def new_tokens(self) -> int:
        return sum(len(g) for g in self.generated)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_seconds if self.wall_seconds else float("nan")


class ForwardCounter:
    """Counts calls of a module's top-level forward while active (a context manager)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls, self._handle = module, 0, None

    def _hook(self, *_args) -> None:
        self.calls += 1

    def __enter__(self) -> "ForwardCounter":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *_exc) -> None:
        self._handle.remove()


def cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    """Tokens up to and including the first EOS."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


Generate = Callable[[Batch, int], list[list[int]]]  # (batch, max_new_tokens) -> new tokens per row


def scylla_generate(decoder: SpeculativeDecoder, tokenizer, parts: list[DecodeStats]) -> Generate:
    """This engine's generate on a batch; appends each call's stats to parts."""

    def run(batch: Batch, max_new_tokens: int) -> list[list[int]]:
        out = decoder.generate(
            batch.ids,
            batch.mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        parts.append(out.stats)
        return out.generated

    return run


def hf_generate(model: torch.nn.Module, tokenizer, **extra) -> Generate:
    """HF model.generate, greedy, on a batch; extra: assistant_model, prompt_lookup_num_tokens, ..."""

    def run(batch: Batch, max_new_tokens: int) -> list[list[int]]:
        out = model.generate(
            batch.ids,
            attention_mask=batch.mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
        tail = out[:, batch.ids.shape[1] :].tolist()
        return [cut_at_eos(row, tokenizer.eos_token_id) for row in tail]

    return run


@dataclass
class Mode:
    """A way of decoding: its engine, name, draft length and draft model (for the cost model), and a factory of
    the per-batch generate function (the factory gets a list that collects this engine's stats)."""

    engine: str
    name: str
    make: Callable[[list[DecodeStats]], Generate]
    gamma: int | None = None
    draft: torch.nn.Module | None = None
    verify_tokens: int | None = None  # tokens the target scores per step (default gamma + 1)
    target: torch.nn.Module | None = None  # the target in this mode's dtype

    @property
    def dtype(self) -> str:
        return str(next(self.target.parameters()).dtype).removeprefix("torch.")

    @property
    def key(self) -> tuple[str, str, str]:
        return self.engine, self.name, self.dtype

    @property
    def is_prompt_lookup(self) -> bool:
        return self.name == "prompt-lookup"


def one_pass(mode: Mode, batches: list[Batch], max_new_tokens: int) -> Run:
    """Run the mode over the batches, timing each generate call from outside."""
    parts: list[DecodeStats] = []
    generate = mode.make(parts)
    run = Run()
    with ForwardCounter(mode.target) as counter:
        for batch in batches:
            t0, cpu0 = time.perf_counter(), time.process_time()
            rows = generate(batch, max_new_tokens)
            run.batch_seconds.append(time.perf_counter() - t0)
            run.batch_tokens.append(sum(map(len, rows)))
            run.wall_seconds += run.batch_seconds[-1]
            run.cpu_seconds += time.process_time() - cpu0
            run.generated.extend(rows)
            run.index.extend(batch.index)
    run.target_forwards = counter.calls
    run.stats = DecodeStats.merge(parts) if parts else None
    return run


def measure(modes: list[Mode], batches: list[Batch], args: argparse.Namespace, progress) -> list[list[Run]]:
    """Every mode's untimed warm-up call (first batch, --warmup-tokens new tokens), then interleaved rounds: a pass
    of every mode per round, in reverse order every other round. Returns [mode][round]."""
    for mode in modes:
        one_pass(mode, batches[:1], min(args.warmup_tokens, args.max_new_tokens))
    runs: list[list[Run]] = [[] for _ in modes]
    rounds = rounds_for(args.repeats, len(batches))
    for k in range(rounds):
        for i in list(range(len(modes)))[:: -1 if k % 2 else 1]:
            progress.set_postfix_str(f"b={len(batches[0].index)} round {k + 1}/{rounds} {modes[i].engine} "
                                     f"{modes[i].name} {modes[i].dtype}")
            runs[i].append(one_pass(modes[i], batches, args.max_new_tokens))
    return runs


def paired(runs: list[Run], baseline: list[Run]) -> Speedup:
    """runs' tokens/s over baseline's, per batch and round (the same batch in the same round), as a Speedup."""
    def rate(run: Run, c: int) -> float:
        return run.batch_tokens[c] / run.batch_seconds[c]

    return paired_speedup([[rate(r, c) / rate(b, c) for r, b in zip(runs, baseline)]
                           for c in range(len(baseline[0].batch_seconds))])


# ---------------------------------------------------------------- modes


def assistant(target: torch.nn.Module, layers: int, gamma: int) -> torch.nn.Module:
    """A truncated draft set up as an HF assistant drafting exactly gamma tokens per step."""
    draft = truncated_draft(target, layers)
    config = draft.generation_config
    config.num_assistant_tokens = gamma
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0  # 0 disables the early stop on low draft confidence
    return draft


def head_modes(target, tokenizer, args: argparse.Namespace) -> list[Mode]:
    """This engine with each trained EAGLE-style head of --head (a draft folder of train.pretrain_draft)."""
    modes = []
    for path in args.head:
        head = EagleHead.load(path, target)
        label = f"eagle-{Path(path).parent.name}-{Path(path).name}"
        modes.append(scylla_mode(target, tokenizer, label, EagleDrafter(head, args.head_tokens), args.head_tokens))
        if args.head_hybrid:  # the suffix drafter where its match is long (copy-heavy text), else the head
            hybrid = drafter_from_spec(f"hybrid:draft:{path}", target, num_draft_tokens=args.head_tokens)
            modes.append(scylla_mode(target, tokenizer, f"hybrid-{label}", hybrid, args.head_tokens))
        if args.head_tree:
            tree = parse_tree(args.head_tree)
            mode = scylla_mode(target, tokenizer, f"{label}-tree", EagleDrafter(head, tree=tree), tree.depth)
            mode.verify_tokens = tree.total_tokens + 1
            modes.append(mode)
    return modes


def scylla_mode(target, tokenizer, name: str, drafter=None, gamma: int | None = None) -> Mode:
    decoder = SpeculativeDecoder(target, drafter)
    draft = drafter.model if isinstance(drafter, DraftModel) else None
    return Mode("scylla", name, lambda parts: scylla_generate(decoder, tokenizer, parts), gamma, draft, target=target)


def hf_mode(target, tokenizer, name: str, gamma: int | None = None, **extra) -> Mode:
    return Mode("hf", name, lambda _parts: hf_generate(target, tokenizer, **extra), gamma, target=target)


def scylla_modes(target, tokenizer, args: argparse.Namespace, draft_layers: list[int]) -> list[Mode]:
    """This engine: plain, truncated drafts (gamma tokens per step), prompt lookup."""
    modes = [scylla_mode(target, tokenizer, "plain")]
    for k in draft_layers:
        drafter = DraftModel(truncated_draft(target, k), num_draft_tokens=args.gamma)
        modes.append(scylla_mode(target, tokenizer, f"truncated-k{k}", drafter, args.gamma))
    lookup = PromptLookup(max_ngram=args.max_ngram, num_draft_tokens=args.lookup_tokens)
    modes.append(scylla_mode(target, tokenizer, "prompt-lookup", lookup))
    return modes + head_modes(target, tokenizer, args)


def hf_modes(target, tokenizer, args: argparse.Namespace, draft_layers: list[int], lookup: bool) -> list[Mode]:
    """HF generate: plain, assisted with truncated drafts (constant gamma), prompt lookup (if lookup)."""
    modes = [hf_mode(target, tokenizer, "plain")]
    for k in draft_layers:
        helper = assistant(target, k, args.gamma)
        modes.append(hf_mode(target, tokenizer, f"truncated-k{k}", args.gamma, assistant_model=helper))
    if lookup:
        kwargs = dict(prompt_lookup_num_tokens=args.lookup_tokens, max_matching_ngram_size=args.max_ngram)
        modes.append(hf_mode(target, tokenizer, "prompt-lookup", **kwargs))
    return modes


def modes_for(batch: int, target, tokenizer, args: argparse.Namespace) -> list[Mode]:
    """Batch 1: every mode on both engines. Batch > 1: this engine's plain, truncated (--batched-draft-layers) and
    prompt lookup, and HF plain only (HF refuses assisted generation at batch > 1). This engine's plain first."""
    if batch == 1:
        ours, theirs = scylla_modes(target, tokenizer, args, args.draft_layers), hf_modes(
            target, tokenizer, args, args.draft_layers, lookup=True)
    else:
        ours, theirs = scylla_modes(target, tokenizer, args, args.batched_draft_layers), hf_modes(
            target, tokenizer, args, [], lookup=False)
    return ours if args.no_hf else ours + theirs


def check_hook_isolation(model: torch.nn.Module) -> None:
    """A truncated draft's forward must not fire the target's forward hook (they share layers, not the module)."""
    draft = truncated_draft(model, 2)
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode(), ForwardCounter(model) as counter:
        draft(input_ids=ids)
        after_draft = counter.calls
        model(input_ids=ids)
    if after_draft != 0 or counter.calls != 1:
        raise SystemExit(f"decode.py: forward hook counts draft calls ({after_draft}, {counter.calls}): MAT unusable")
    print("forward hook check: a truncated draft's forward does not fire the target's hook", file=sys.stderr)


# ---------------------------------------------------------------- costs and the predicted speed-up


class CostMeter:
    """Median seconds of forwarding n new tokens per row into a RaggedKV holding a fixed context, per model/batch."""

    def __init__(self, context: torch.Tensor, reps: int = 15, warmup: int = 3):
        self.context, self.reps, self.warmup = context, reps, warmup  # context (1, L)
        self._cache: dict[tuple[int, int, int], float] = {}
        self.records: list[dict] = []

    @torch.inference_mode()
    def seconds(self, model: torch.nn.Module, batch: int, n: int, label: str) -> float:
        key = (id(model), batch, n)
        if key not in self._cache:
            self._cache[key] = self._time(model, batch, n)
            ms = 1000 * self._cache[key]
            self.records.append(dict(model=label, batch=batch, tokens=n, context=self.context.shape[1], ms=ms))
        return self._cache[key]

    def _time(self, model: torch.nn.Module, batch: int, n: int) -> float:
        """The cost model's own measurement (scylla.costs.forward_seconds: CUDA-synchronised on a GPU)."""
        return forward_seconds(model, batch, n, self.context.shape[1], reps=self.reps, warmup=self.warmup)


def cost_context(batches: list[Batch], reference: dict[int, list[int]], length: int = 128) -> torch.Tensor:
    """About ``length`` tokens of the set's prompts and plain outputs, as (1, L)."""
    tokens: list[int] = []
    for batch in batches:
        for row, i in enumerate(batch.index):
            tokens += batch.ids[row][batch.mask[row].bool()].tolist() + reference[i]
            if len(tokens) >= length:
                return torch.tensor([tokens[:length]])
    return torch.tensor([tokens])


def iid_prediction(alpha: float, g: float, c: float, v: float) -> float:
    """(1 - a^(g+1)) / ((1 - a) (g c + v)); the limit a -> 1 is (g+1) / (g c + v)."""
    if math.isnan(alpha) or g <= 0:
        return float("nan")
    gain = g + 1 if alpha >= 1 else (1 - alpha ** (g + 1)) / (1 - alpha)
    return gain / (g * c + v)


def cost_model(mode: Mode, run: Run, meter: CostMeter, target, batch: int) -> dict | None:
    """For a drafting mode of this engine (None for the others): g, c, v, the predicted speed-ups, and the measured
    milliseconds per step split into the forwards the cost model counts and the work outside them.

    d = drafting per step / one target step: g c for a chain (c per draft forward), a head's measured drafting time
    per step (chain or tree; the engine times it), 0 for prompt lookup. mat_prediction = MAT / (d + v)."""
    stats = run.stats
    if mode.engine != "scylla" or stats is None:
        return None
    step = meter.seconds(target, batch, 1, f"target {mode.dtype}")
    measured_ms = 1000 * run.wall_seconds / run.target_forwards  # per target call (the prefill counts as one)
    if not stats.drafted:  # plain decoding: one target forward per step
        return dict(step_ms=measured_ms, forward_ms=1000 * step, other_ms=measured_ms - 1000 * step)
    if mode.is_prompt_lookup:
        g, c, d = stats.drafted / stats.drafting_steps, 0.0, 0.0
    elif mode.draft is None:  # a head reads target features: its drafting time per step, from the run itself
        g = mode.gamma
        d = stats.draft_seconds / stats.drafting_steps / step
        c = d / g
    else:
        g = mode.gamma
        c = meter.seconds(mode.draft, batch, 1, f"draft-{mode.name} {mode.dtype}") / step
        d = g * c
    v = meter.seconds(target, batch, mode.verify_tokens or max(1, round(g)) + 1, f"target {mode.dtype}") / step
    forward_ms = 1000 * step * (d + v)
    return dict(g=g, c=c, d=d, v=v, iid_prediction=iid_prediction(stats.acceptance_rate, g, c, v),
                mat_prediction=stats.mean_accepted_length / (d + v), step_ms=measured_ms, forward_ms=forward_ms,
                other_ms=measured_ms - forward_ms)


# ---------------------------------------------------------------- results


def same_as_plain(runs: list[Run], reference: dict[int, list[int]]) -> bool:
    return all(gen == reference[i] for run in runs for gen, i in zip(run.generated, run.index))


def summarize(set_name: str, batch: int, mode: Mode, runs: list[Run], reference, costs: dict | None,
              plain: list[Run], hf: list[Run] | None, baseline_dtype: str, violations: int | None) -> dict:
    """One result row (JSON-ready): ``plain`` is this engine's faster plain decoding (in ``baseline_dtype``), ``hf``
    HF's same mode in the same dtype (None if not run), both timed in the same rounds; ``violations``: emitted tokens
    that are not the target's argmax up to near-ties (scylla.lossless; None where not checked)."""
    first = runs[0]
    stats = first.stats
    speed_up = None if runs is plain else paired(runs, plain)  # the baseline itself: 1 by definition
    vs_hf = paired(runs, hf) if hf else None
    if stats is not None:
        mat, alpha = stats.mean_accepted_length, (stats.acceptance_rate if stats.drafted else None)
    else:
        mat = first.new_tokens / first.target_forwards if batch == 1 else None
        alpha = None
    return dict(
        set=set_name,
        batch=batch,
        engine=mode.engine,
        mode=mode.name,
        dtype=mode.dtype,
        baseline_dtype=baseline_dtype,
        argmax_violations=violations,
        tokens_per_second=statistics.median(r.tokens_per_second for r in runs),
        tokens_per_second_runs=[r.tokens_per_second for r in runs],
        wall_seconds_runs=[r.wall_seconds for r in runs],
        cpu_per_wall_runs=[r.cpu_seconds / r.wall_seconds for r in runs],
        new_tokens=first.new_tokens,
        target_forwards=first.target_forwards,
        mat=mat,
        alpha=alpha,
        same_as_plain=same_as_plain(runs, reference),
        stats=stats.summary() if stats is not None else None,
        cost_model=costs,
        mismatched_rows=[k for k, (g, i) in enumerate(zip(first.generated, first.index)) if g != reference[i]],
        rounds=len(runs),
        speed_up=speed_up.median if speed_up else 1.0,
        speed_up_ci95=list(speed_up.ci95) if speed_up else None,
        speed_up_verdict=speed_up.verdict if speed_up else None,
        speed_up_text=speed_up.describe() if speed_up else "1 (baseline)",
        vs_hf=vs_hf.median if vs_hf else None,
        vs_hf_ci95=list(vs_hf.ci95) if vs_hf else None,
        vs_hf_text=vs_hf.describe() if vs_hf else "n/a",
    )


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| set | batch | engine | mode | dtype | tokens/s | MAT | alpha | per position | speed-up | over | vs HF | "
            "iid pred | MAT pred | pred error | ms/step | forwards ms | other ms | same_as_plain | argmax |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cm = r["cost_model"] or {}
        pred = cm.get("mat_prediction")
        error = f"{100 * (r['speed_up'] / pred - 1):+.0f}%" if pred and r["speed_up"] else "n/a"
        positions = (r["stats"] or {}).get("per_position_acceptance") or []
        cells = [
            r["set"], str(r["batch"]), r["engine"], r["mode"], r["dtype"], _fmt(r["tokens_per_second"], 1),
            _fmt(r["mat"]), _fmt(r["alpha"]), " ".join(_fmt(a) for a in positions[:4]) or "n/a",
            r["speed_up_text"], f"plain {r['baseline_dtype']}", r["vs_hf_text"],
            _fmt(cm.get("iid_prediction")), _fmt(pred), error, _fmt(cm.get("step_ms"), 1),
            _fmt(cm.get("forward_ms"), 1), _fmt(cm.get("other_ms"), 1), "yes" if r["same_as_plain"] else "no",
            "n/a" if r["argmax_violations"] is None else str(r["argmax_violations"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strict_json(value):
    """value with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def costs_table(records: list[dict]) -> str:
    lines = ["| set | batch | model | new tokens | context | ms/forward |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['set']} | {r['batch']} | {r['model']} | {r['tokens']} | {r['context']} | {r['ms']:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def argmax_violations(mode: Mode, run: Run, batches: list[Batch]) -> int | None:
    """Emitted tokens of a non-float32 run that are not the target's argmax up to near-ties (scylla.lossless); None
    in float32, where same_as_plain is the exact check."""
    if mode.dtype == "float32":
        return None
    prompts = [b.ids[row][b.mask[row].bool()].tolist() for b in batches for row in range(len(b.index))]
    return len(greedy_violations(mode.target, prompts, run.generated))


def run_set(set_name: str, models: dict, tokenizer, args, progress) -> tuple[list[dict], list[dict]]:
    """All rows of one prompt set, and the measured costs; ``models``: the target in each dtype."""
    texts = prompt_set(set_name, args.prompts_per_set, args.seed, args.exclude_corpus)
    rows: list[dict] = []
    reference: dict[str, dict[int, list[int]]] = {}  # per dtype
    meter: CostMeter | None = None
    for batch in args.batch_sizes:
        batches = make_batches(tokenizer, texts, batch)
        modes = [m for model in models.values() for m in modes_for(batch, model, tokenizer, args)]
        runs = measure(modes, batches, args, progress)
        by_key = {mode.key: r for mode, r in zip(modes, runs)}
        for dtype in models:
            if dtype not in reference:  # this engine's plain decoding at the first batch size (1 by default)
                first = by_key[("scylla", "plain", dtype)][0]
                reference[dtype] = {i: g for g, i in zip(first.generated, first.index)}
        meter = meter or CostMeter(cost_context(batches, reference[next(iter(models))]))
        fastest = max(models, key=lambda d: statistics.median(r.tokens_per_second
                                                              for r in by_key[("scylla", "plain", d)]))
        for mode, mode_runs in zip(modes, runs):
            costs = cost_model(mode, mode_runs[0], meter, mode.target, batch)
            hf = by_key.get(("hf", mode.name, mode.dtype)) if mode.engine == "scylla" else None
            rows.append(summarize(set_name, batch, mode, mode_runs, reference[mode.dtype], costs,
                                  by_key[("scylla", "plain", fastest)], hf, fastest,
                                  argmax_violations(mode, mode_runs[0], batches)))
            progress.update(1)
    for record in meter.records:
        record["set"] = set_name
    return rows, meter.records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m", help="HF folder, hub id or alias (smollm2-135m, gemma3-270m)")
    p.add_argument("--sets", default="gsm,copy", help="comma-separated prompt sets: gsm, copy")
    p.add_argument("--prompts-per-set", type=int, help=f"default {DEFAULTS['prompts_per_set']}")
    p.add_argument("--max-new-tokens", type=int, help=f"default {DEFAULTS['max_new_tokens']}")
    p.add_argument("--repeats", type=int, help="interleaved timing rounds (a pass of every mode each), at least "
                   f"enough for 6 paired ratios (default {DEFAULTS['repeats']})")
    p.add_argument("--batch-sizes", help=f"comma-separated, 1 first (default {DEFAULTS['batch_sizes']})")
    p.add_argument("--warmup-tokens", type=int, default=16, help="new tokens of each mode's untimed warm-up call")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 prompts, 32 tokens, 1 repeat, batch 1,4, K=4")
    p.add_argument("--draft-layers", help=f"truncated draft sizes K at batch 1 (default {DEFAULTS['draft_layers']})")
    p.add_argument("--batched-draft-layers", default="2", help="truncated draft sizes K at batch > 1")
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per step for truncated drafts")
    p.add_argument("--lookup-tokens", type=int, default=10, help="prompt lookup: draft tokens per step")
    p.add_argument("--max-ngram", type=int, default=3, help="prompt lookup: longest n-gram matched")
    p.add_argument("--seed", type=int, default=42, help="reasoning-gym seed for the gsm set")
    p.add_argument("--exclude-corpus", default="gsm:1500",
                   help="SOURCE:N training corpus whose prompts the gsm set leaves out ('' keeps all)")
    p.add_argument("--head", action="append", default=[], help="a trained head folder (repeat for several)")
    p.add_argument("--head-tokens", type=int, default=4, help="draft tokens per step for --head")
    p.add_argument("--head-tree", default="", help="also each --head with this dynamic tree, e.g. "
                   "top_k=3,depth=3,total_tokens=8 (default: chains only)")
    p.add_argument("--head-hybrid", action="store_true", help="also each --head as the fallback of the suffix "
                   "drafter (hybrid:draft:HEAD)")
    p.add_argument("--no-hf", action="store_true", help="leave out HF generate's rows (this engine only)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--dtypes", default="", help="comma-separated dtypes, every mode in each (default: float32 and "
                   "bfloat16 on a CPU with bf16 units, else float32; scylla.dtypes.plain_dtypes)")
    p.add_argument("--json", default="benchmarks/out/decode.json", help="where to write the results")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sets = [s for s in args.sets.split(",") if s]
    args.dtypes = parse_dtypes(args.dtypes) if args.dtypes else plain_dtypes()
    args.batch_sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    args.draft_layers = [int(k) for k in args.draft_layers.split(",") if k]
    args.batched_draft_layers = [int(k) for k in args.batched_draft_layers.split(",") if k]
    if args.batch_sizes[0] != 1:
        p.error("--batch-sizes must include 1: the batch-1 plain output is the reference for same_as_plain")
    return args


def environment() -> dict:
    import transformers

    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        load_average=os.getloadavg(),  # other work on the machine skews every timing
    )


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    env_start = environment()
    models = {d: load_model(args.target, device="cpu", dtype=d)[0] for d in args.dtypes}
    tokenizer = load_model(args.target, device="cpu", dtype=args.dtypes[0])[1]
    for model in models.values():
        check_hook_isolation(model)
    heads = len(args.head) * (1 + bool(args.head_tree) + args.head_hybrid)
    hf = 0 if args.no_hf else 1
    per_set = (1 + hf) * (2 + len(args.draft_layers)) + heads  # batch 1: plain, drafts, lookup (both), heads
    batched = 2 + hf + len(args.batched_draft_layers) + heads
    total = len(args.sets) * (per_set + batched * (len(args.batch_sizes) - 1)) * len(models)
    rows, costs = [], []
    with tqdm(total=total, desc="modes", unit="mode", file=sys.stderr) as progress:
        for set_name in args.sets:
            set_rows, set_costs = run_set(set_name, models, tokenizer, args, progress)
            rows += set_rows
            costs += set_costs
    elapsed = time.perf_counter() - started
    print("Measured forward costs (median; through this engine's KV cache):\n")
    print(costs_table(costs))
    print(
        f"\nResults ({args.target}, greedy, max_new_tokens={args.max_new_tokens}, {args.prompts_per_set} prompts per "
        f"set, {args.repeats}+ interleaved rounds, speed-up = median paired ratio [95% interval over batches] over "
        f"the faster plain decoding of {', '.join(args.dtypes)}, {args.threads} threads, CPU {cpu_capability()}):\n"
    )
    print(markdown_table(rows))
    print(f"\nNote: {HF_BATCHED_NOTE} iid pred = (1 - a^(g+1)) / ((1 - a)(g c + v)), a model, not a bound; "
          "see the docstring.")
    print(f"Total time: {elapsed:.0f} s")
    payload = dict(
        args=vars(args), environment=env_start, load_average_end=os.getloadavg(), costs=costs, rows=rows, notes=[HF_BATCHED_NOTE], elapsed=elapsed
    )
    write_json_atomic(Path(args.json), strict_json(payload))
    print(f"Wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
