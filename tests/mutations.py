"""Injected bugs and the tests that must catch them (see tests/mutations.md).

    python tests/mutations.py --list              # the mutations
    python tests/mutations.py                     # inject each into a copy of the repo, run its tests, expect failure
    python tests/mutations.py tree-positions      # one of them

Each mutation replaces one exact snippet of one source file. The copy of the repo is made from `git ls-files`, so
the working tree is never touched; the tests run with the copy first on the import path. A mutation whose snippet
is no longer in its file fails `tests/test_mutations.py` at once: code that moves takes its mutation along.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (found exactly once in ``path``) by ``new``; ``tests`` (pytest node ids) must then fail."""

    name: str
    bug: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "tree-positions",
        "the target verifies a tree with every node's position one too high",
        "scylla/engine.py", "depth=anc.sum(-1) - 1,", "depth=anc.sum(-1),",
        ("tests/test_greedy_identity.py", "tests/test_eagle.py", "tests/test_replay.py", "tests/test_smollm2.py",
         "tests/test_bf16.py"),
    ),
    Mutation(
        "reorder-noop",
        "the accepted tree path is not moved to the front of the new cache columns",
        "scylla/kv.py", "        n = order.shape[1]\n", "        return\n        n = order.shape[1]\n",
        ("tests/test_greedy_identity.py", "tests/test_eagle.py", "tests/test_replay.py", "tests/test_smollm2.py",
         "tests/test_bf16.py"),
    ),
    Mutation(
        "tree-residual-unnormalised",
        "after a rejected sibling, the next sibling is tested against the residual without renormalising it",
        "scylla/verify.py", "                r = r / r.sum()\n", "",
        ("tests/test_tree.py::test_verify_tree_sampled_follows_the_target_exactly",),
    ),
    Mutation(
        "chain-residual",
        "after a rejection the correction is drawn from p instead of norm(max(0, p - q))",
        "scylla/verify.py", "dist = torch.where(rejected[:, None], residual_distribution(p_next, q_next), p_next)",
        "dist = p_next",
        ("tests/test_sampling_lossless.py", "tests/test_bf16.py"),
    ),
    Mutation(
        "rollback-keeps-one-more",
        "after verification every row's cache keeps one token more than it accepted",
        "scylla/engine.py", "kv.trim(kv.lengths - g + accepted)", "kv.trim((kv.lengths - g + accepted + 1).clamp(max=kv.lengths))",
        ("tests/test_greedy_identity.py", "tests/test_cache_rollback.py", "tests/test_bf16.py"),
    ),
    Mutation(
        "label-shift",
        "draft training labels are shifted by one (the head learns to repeat its input token)",
        "train/pretrain_draft.py", "labels = self.to_draft.to(device)[tokens[:, 2:]]",
        "labels = self.to_draft.to(device)[tokens[:, 1:-1]]",
        ("tests/test_objective.py::test_training_lifts_accuracy_and_acceptance",),
    ),
    Mutation(
        "replay-sibling-rows",
        "replay runs a drafter whose rows read each other's text (it would see its own future)",
        "scylla/replay.py", "if drafter.share_rows:", "if False:",
        ("tests/test_replay.py::test_replay_refuses_drafters_that_share_rows",),
    ),
    Mutation(
        "cooldown-ends-above-zero",
        "a milestone's cool-down decays towards 0 at step N, one step after the last that runs, so it never reaches 0",
        "train/schedule.py", "(last - step) / (last - start + 1)", "(milestone_steps - step) / (milestone_steps - start)",
        ("tests/test_schedule.py",),
    ),
    Mutation(
        "gsm-templates-shared",
        "gsm_symbolic's evaluation templates are drawn for training too",
        "scylla/data/tasks.py", "if dataset != \"gsm_symbolic\" or evaluation_template(dataset, templates[i]) == evaluation:",
        "if dataset != \"gsm_symbolic\" or evaluation or True:",
        ("tests/test_data.py::test_training_prompts_never_come_from_an_evaluation_set",),
    ),
    Mutation(
        "eval-questions-not-dropped",
        "training keeps reasoning-gym questions that the evaluation asks",
        "scylla/data/tasks.py", "banned = set() if evaluation else _evaluation_questions(dataset)", "banned = set()",
        ("tests/test_data.py::test_training_prompts_never_come_from_an_evaluation_set",),
    ),
    Mutation(
        "choice-by-point",
        "the Scylla choice takes a draft whose point prediction beats plain decoding, whatever its lower bound",
        "pipeline/select.py", "return c.predicted_speedup_ci95[0] > 1", "return c.predicted_speedup > 1",
        ("tests/test_decision.py",),
    ),
    Mutation(
        "verdict-from-median",
        "a measured speed-up's verdict reads its median alone, ignoring its interval",
        "scylla/timing.py", "lo, hi = self.ci95", "lo, hi = self.median, self.median",
        ("tests/test_decision.py",),
    ),
    Mutation(
        "prompt-unit-pooled-interval",
        "the prompt-unit law keeps the pooled points' slope interval instead of the one over units",
        "fit/prompt_unit.py", "slope_ci95=unit.slope_ci95, residuals", "slope_ci95=fit.slope_ci95, residuals",
        ("tests/test_prompt_unit.py",),
    ),
    Mutation(
        "prompt-unit-no-shock",
        "the prompt-unit interval leaves out the checkpoint shocks that all prompts of a run share",
        "fit/prompt_unit.py", "v_shock = float(np.mean(shock)) / len(runs) if shock else 0.0",
        "v_shock = 0.0", ("tests/test_prompt_unit.py::test_prompt_unit_interval_covers_the_population_slope",),
    ),
    Mutation(
        "tree-mask-no-window",
        "a tree's attention mask ignores the sliding window, so window-limited layers see tokens the target would not",
        "scylla/kv.py", "            if self.window is not None:  # sliding-window layers",
        "            if False:  # sliding-window layers", ("tests/test_families.py",),
    ),
    Mutation(
        "unroll-positions",
        "training-time test gives step i the rotary positions of the real pairs, q - i, instead of q",
        "train/unroll.py", "position_ids=positions, cache", "position_ids=(positions - step).clamp(min=0), cache",
        ("tests/test_unroll.py::test_unrolled_logits_equal_inference_drafts",),
    ),
    Mutation(
        "unroll-mask",
        "training-time test lets step i see the real feature one position past its anchor",
        "train/unroll.py", "[p <= q - step]", "[p <= q - step + (step > 0)]",
        ("tests/test_unroll.py",),
    ),
    Mutation(
        "law3-verify-tokens",
        "law 3 costs a draft of g tokens at a verify of g tokens instead of g + 1 (c(b, t) of the wrong t)",
        "fit/batch_law.py", "verify_tokens=int(length) + 1)", "verify_tokens=int(length))",
        ("tests/test_batch_law.py::test_the_verify_costs_the_draft_length_plus_one_token",),
    ),
    Mutation(
        "law3-plain-percentile",
        "law 3's intervals are plain bootstrap percentiles, not expanded for few prompts",
        "fit/batch_law.py", "    if units and units > 1:\n", "    if False:\n",
        ("tests/test_batch_law.py::test_the_speedup_interval_covers_the_truth_at_its_level_and_is_not_too_wide",),
    ),
]


def check(mutation: Mutation, root: Path = ROOT) -> str:
    """The mutated text of mutation.path; raises ValueError unless ``old`` occurs exactly once."""
    text = (root / mutation.path).read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"{mutation.name}: {mutation.old!r} occurs {count} times in {mutation.path}, not once: "
                         "update MUTATIONS in tests/mutations.py")
    return text.replace(mutation.old, mutation.new)


def run(mutation: Mutation) -> tuple[bool, float, str, list[str]]:
    """Inject into a copy of the working tree (files git tracks or would track) and run the tests; returns
    (caught: some test failed, seconds, pytest's summary line, the failed tests)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as tmp:
        copy = Path(tmp)
        for name in files.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, copy / name)
        (copy / mutation.path).write_text(check(mutation))
        env = {**os.environ, "PYTHONPATH": str(copy) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        where = subprocess.run([sys.executable, "-c", "import scylla, train; print(scylla.__file__, train.__file__)"],
                               cwd=copy, env=env, capture_output=True, text=True, check=True).stdout
        if not all(Path(f).is_relative_to(copy) for f in where.split()):
            raise RuntimeError(f"the mutant copy is not what Python imports: {where}")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-W", "ignore",
                                 *mutation.tests], cwd=copy, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode not in (0, 1):  # 1: tests failed, the expected outcome; anything else is an error
            raise RuntimeError(f"{mutation.name}: pytest exited {result.returncode}\n{result.stdout[-3000:]}")
        lines = result.stdout.strip().splitlines()
        failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
        return result.returncode == 1, seconds, lines[-1].strip("= "), failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation {unknown[0]!r}; known: {', '.join(known)}")
    chosen = [known[n] for n in args.names] or MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.bug} ({m.path}) -> {' '.join(m.tests)}")
        return 0
    survivors = []
    for m in chosen:
        caught, seconds, summary, failed = run(m)
        print(f"{m.name}: {'caught' if caught else 'SURVIVED'} ({summary}) in {seconds:.0f} s", flush=True)
        for test in failed:
            print(f"    {test}", flush=True)
        if not caught:
            survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
