"""Injected bugs and the tests that must catch them (see tests/mutations.md).

    python tests/mutations.py --list              # the mutations
    python tests/mutations.py                     # inject each into a copy of the repo, run its tests, expect failure
    python tests/mutations.py tree-positions      # one of them

A run where a test that a mutation lists was skipped (a missing optional package) exits 1 and says so: the tests
that catch it in tests/mutations.md count only where they ran.

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
        "job-folder-not-its-own",
        "a training job may not replace a checkpoint folder of its own that no marker names (one written before the "
        "marker existed), so a resumed job fails",
        "train/pretrain_draft.py", "own = cfg.job_dir.resolve() in Path(folder).resolve().parents", "own = False",
        ("tests/test_sweep.py::test_draft_lm_trains_without_the_launcher",
         "tests/test_sweep.py::test_a_job_replaces_its_own_draft_folders_and_no_one_elses"),
    ),
    Mutation(
        "every-folder-its-own",
        "a training job replaces any folder it is given, a user's too",
        "train/pretrain_draft.py", "own = cfg.job_dir.resolve() in Path(folder).resolve().parents", "own = True",
        ("tests/test_sweep.py::test_a_job_replaces_its_own_draft_folders_and_no_one_elses",),
    ),
    Mutation(
        "head-save-unforced",
        "an EAGLE head's save ignores that the folder is the job's own",
        "train/pretrain_draft.py", "model.save(folder, card, force=own)", "model.save(folder, card)",
        ("tests/test_sweep.py::test_a_job_replaces_its_own_draft_folders_and_no_one_elses",),
    ),
    Mutation(
        "script-threads-unshared",
        "a written script gives every process of a host all of the host's CPUs instead of its share",
        "pipeline/sweep.py", 'f"THREADS=$(( {cpus} / {per_host} ))', 'f"THREADS=$(( {cpus} ))',
        ("tests/test_sweep.py::test_the_written_scripts_give_each_process_its_share_of_the_threads",),
    ),
    Mutation(
        "trainer-ignores-threads",
        "the trainer ignores --threads (the written scripts' way to other hosts) and runs on OMP_NUM_THREADS",
        "train/pretrain_draft.py", "        use_threads(args.threads)\n", "",
        ("tests/test_sweep.py::test_draft_lm_trains_without_the_launcher",),
    ),
]
MUTATIONS += [  # issue 27: the timing and prompt-unit statistics layers
    Mutation(
        "speedup-inverted",
        "every online speed-up is inverted: plain decoding's rate over the method's",
        "pipeline/evaluate.py", "getattr(timed[i][c][k], rate) / getattr(timed[base][c][k], rate)",
        "getattr(timed[base][c][k], rate) / getattr(timed[i][c][k], rate)",
        ("tests/test_timing.py::test_a_drafter_known_faster_measures_faster_and_one_known_slower_slower",),
    ),
    Mutation(
        "rounds-not-reversed",
        "the timing rounds run plain decoding and the methods in the same order every round, never reversed",
        "pipeline/evaluate.py", "for i in list(range(len(runs)))[:: -1 if k % 2 else 1]:",
        "for i in list(range(len(runs))):",
        ("tests/test_timing.py::test_reversed_rounds_cancel_a_machine_that_gets_busier",),
    ),
    Mutation(
        "bootstrap-single-ratios",
        "the speed-up's bootstrap resamples single paired ratios instead of whole batches (chunks)",
        "scylla/timing.py", "    if len(chunks) > 1:\n", "    if False:\n",
        ("tests/test_timing.py::test_the_bootstrap_interval_is_95_percent_over_batches",),
    ),
    Mutation(
        "interval-90-as-95",
        "the speed-up's interval is a 90% one, reported as 95%",
        "scylla/timing.py", "np.percentile(medians, [2.5, 97.5])", "np.percentile(medians, [5, 95])",
        ("tests/test_timing.py::test_the_bootstrap_interval_is_95_percent_over_batches",),
    ),
    Mutation(
        "regret-unpaired",
        "regret resamples the chosen configuration's chunks apart from the best's, not jointly",
        "scylla/timing.py", "- np.median(np.concatenate([a[i] for i in p]))",
        "- np.median(np.concatenate([a[i] for i in rng.integers(len(a), size=len(a))]))",
        ("tests/test_timing.py::test_regret_is_the_best_minus_the_choice_resampled_jointly",
         "tests/test_timing.py::test_confirmation_measures_the_choice_against_the_best_on_the_confirm_set"),
    ),
    Mutation(
        "chunked-round-major",
        "a record's speed-up ratios are read back round by round instead of chunk by chunk",
        "scylla/timing.py", "[list(flat[i : i + rounds]) for i in range(0, len(flat), rounds)]",
        "[list(flat[i :: len(flat) // rounds]) for i in range(len(flat) // rounds)]",
        ("tests/test_timing.py::test_chunked_reads_a_records_ratios_chunk_major",),
    ),
    Mutation(
        "confirmation-ignores-pays",
        "the confirm check measures the regret of the best draft even where the choice kept plain decoding",
        "pipeline/select.py", "and r.get(\"dtype\", c.dtype) == c.dtype), None) if pays(c) else plain",
        "and r.get(\"dtype\", c.dtype) == c.dtype), None) if True else plain",
        ("tests/test_timing.py::test_confirmation_measures_the_choice_against_the_best_on_the_confirm_set",),
    ),
    Mutation(
        "shock-not-per-run",
        "the runs' checkpoint-shock variance enters the prompt-unit interval undivided by the number of runs",
        "fit/prompt_unit.py", "v_shock = float(np.mean(shock)) / len(runs) if shock else 0.0",
        "v_shock = float(np.mean(shock)) if shock else 0.0",
        ("tests/test_prompt_unit.py::test_prompt_unit_interval_covers_and_is_no_wider_than_needed_with_1_2_4_runs",),
    ),
    Mutation(
        "pair-as-unit",
        "the prompt-unit interval takes each (prompt, seed) pair as an independent unit, not the prompt",
        "fit/prompt_unit.py", "prompts.setdefault(key[0], []).append(key)", "prompts.setdefault(key, []).append(key)",
        ("tests/test_prompt_unit.py::test_prompt_unit_interval_covers_and_is_no_wider_than_needed_with_1_2_4_runs",),
    ),
    Mutation(
        "law-cov-sign",
        "the prompt-unit law's intercept-slope covariance has its sign flipped",
        "fit/prompt_unit.py", "cov = [[var_a, cov_cb - centre * var_b], [cov_cb - centre * var_b, var_b]]",
        "cov = [[var_a, centre * var_b - cov_cb], [centre * var_b - cov_cb, var_b]]",
        ("tests/test_prompt_unit.py::test_the_laws_interval_matches_a_direct_simulation",
         "tests/test_holdout.py::test_per_prompt_records_hold_out_the_prompt_unit_law"),
    ),
    Mutation(
        "holdout-pooled",
        "--holdout-top refits the pooled points where records carry per-prompt counts, not the prompt-unit law",
        "fit/holdout.py", "for _, law, _ in fit_laws(", "for law, _, _ in fit_laws(",
        ("tests/test_holdout.py::test_held_out_intervals_see_the_prompts_not_only_the_pooled_points",),
    ),
    Mutation(
        "holdout-count-inverted",
        "scylla fit --holdout-top counts the held-out points outside their intervals as the ones inside",
        "fit/cli.py", "inside = sum(p.inside for p in held)", "inside = sum(not p.inside for p in held)",
        ("tests/test_holdout.py::test_cli_prints_the_coverage",),
    ),
]

MUTATIONS += [  # issue 26: law 2 and the joint law (fit/capacity.py)
    Mutation(
        "joint-pair-as-unit",
        "the joint law takes each (prompt, seed) line as an independent unit instead of averaging a prompt's seeds",
        "fit/capacity.py", "        prompts.setdefault(key[0], []).append(key)\n",
        "        prompts.setdefault(key, []).append(key)\n",
        ("tests/test_capacity.py::test_joint_law_recovers_the_surface_and_its_interval_covers_two_sided",),
    ),
    Mutation(
        "joint-shock-undivided",
        "the joint law's checkpoint-shock covariance is not divided by the number of seeds",
        "fit/capacity.py", "        cov_shock = shock * cov_shock / len(shocks) / len(seeds)\n",
        "        cov_shock = shock * cov_shock / len(shocks)\n",
        ("tests/test_capacity.py::test_joint_law_recovers_the_surface_and_its_interval_covers_two_sided",),
    ),
    Mutation(
        "cost-head-any-width",
        "a head's cost is looked up by depth alone, whatever its width",
        "scylla/costs.py", "        if width is not None and head_name(layers, width) in names:\n",
        "        if width is not None and names:\n            return sorted(names)[0]\n        if width is not None and head_name(layers, width) in names:\n",
        ("tests/test_capacity.py::test_head_costs_are_keyed_by_width_and_depth",),
    ),
    Mutation(
        "wsd-no-rewind",
        "a warmup-stable-decay branch is never rewound: the stable run goes on from the cooled-down branch's weights",
        "train/pretrain_draft.py", "trainer.load_stable()  # back to the stable run", "pass",
        ("tests/test_wsd.py",),
    ),
    Mutation(
        "wsd-stable-decays",
        "the stable run's steps take the LR of a plan that ends at the branch point, so it cools down before branching",
        "train/pretrain_draft.py", "lr = lr_at(self.step, milestone_steps, cfg.optim.lr",
        "lr = lr_at(self.step, end, cfg.optim.lr", ("tests/test_wsd.py",),
    ),
    Mutation(
        "unroll-weights-reversed",
        "the unrolled loss weighs step i by unroll_decay**(K-1-i): the last, self-fed step weighs most",
        "train/pretrain_draft.py", "weights = [self.cfg.unroll_decay ** i for i in range(self.cfg.unroll)]",
        "weights = [self.cfg.unroll_decay ** (self.cfg.unroll - 1 - i) for i in range(self.cfg.unroll)]",
        ("tests/test_unroll.py::test_step_i_of_the_unrolled_loss_weighs_unroll_decay_to_the_i",),
    ),
    Mutation(
        "checkpoint-from-cwd-first",
        "an old record's draft path is resolved from the working directory before the run folder",
        "scylla/records.py", "    tries.append(path)\n", "    tries.insert(0, path)\n",
        ("tests/test_records.py::test_a_copy_of_a_folder_with_old_style_paths_finds_its_own_drafts",),
    ),
    Mutation(
        "prompt-sets-share-templates",
        "gsm's prompt sets are split by question hash, as before issue 27, so every set asks every evaluation template",
        "scylla/data/prompt_sets.py", "        if templates:\n", "        if False:\n",
        ("tests/test_prompt_sets.py",),
    ),
    Mutation(
        "template-check-off",
        "check_disjoint compares questions only, so prompt sets that share templates pass",
        "scylla/data/prompt_sets.py", "if shared := templates & other_templates:", "if shared := set():",
        ("tests/test_prompt_sets.py::test_a_shared_template_is_named",),
    ),
    Mutation(
        "template-unit-ignored",
        "the law's interval takes each prompt as independent even where the records name the prompts' templates",
        "fit/prompt_unit.py", "by_template = bool(records) and all(r.get(\"prompt_templates\") for r in records)",
        "by_template = False", ("tests/test_template_unit.py",),
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
    Mutation(
        "cost-rounds-unpaired",
        "the step cost's interval draws the timing rounds of each entry on its own, so a round's load does not cancel",
        "scylla/costs.py", 'key = (e["batch"], e["context"], len(repeats))',
        'key = (e["model"], e["tokens"], e["batch"], e["context"], len(repeats))',
        ("tests/test_cost_interval.py::test_a_rounds_load_cancels_in_the_step_cost_interval",
         "tests/test_cost_interval.py::test_a_draft_timed_on_a_busy_machine_is_still_chosen_when_it_pays"),
    ),
    Mutation(
        "cost-interval-minmax",
        "the step cost's interval is the fastest speculative repeats over the slowest plain step and the reverse",
        "scylla/costs.py", '    if not all(e.get("repeats") for e in here):\n', "    if True:\n",
        ("tests/test_cost_interval.py",),
    ),
    Mutation(
        "speedup-interval-linear",
        "the law's and the step cost's relative half-widths are added instead of combined in quadrature",
        "pipeline/select.py", "down = math.hypot(math.log(m / m_lo), math.log(c_hi / c))",
        "down = math.log(m / m_lo) + math.log(c_hi / c)",
        ("tests/test_cost_interval.py::test_the_speedup_interval_combines_the_two_at_95_percent",),
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


@dataclass(frozen=True)
class Outcome:
    """A mutation's run: caught (some test failed), seconds, pytest's summary line, the failed tests, and the skip
    lines of tests that did not run (a counted test that skips, e.g. tests/test_smollm2.py without the packaged
    model, checks nothing: the run is then not a check of tests/mutations.md)."""

    caught: bool
    seconds: float
    summary: str
    failed: list[str]
    skipped: list[str]


def run(mutation: Mutation) -> Outcome:
    """Inject into a copy of the working tree (files git tracks or would track) and run the tests."""
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
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "-W", "ignore",
                                 *mutation.tests], cwd=copy, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode not in (0, 1):  # 1: tests failed, the expected outcome; anything else is an error
            raise RuntimeError(f"{mutation.name}: pytest exited {result.returncode}\n{result.stdout[-3000:]}")
        return Outcome(result.returncode == 1, seconds, *summarise(result.stdout))


def summarise(stdout: str) -> tuple[str, list[str], list[str]]:
    """pytest -q -rfs's output -> (its summary line, the failed tests, the skip lines: 'N tests/FILE:LINE: reason')."""
    lines = stdout.strip().splitlines()
    failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
    skipped = [line.removeprefix("SKIPPED ").strip() for line in lines if line.startswith("SKIPPED ")]
    return lines[-1].strip("= "), failed, skipped


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
    survivors, unchecked = [], []
    for m in chosen:
        out = run(m)
        print(f"{m.name}: {'caught' if out.caught else 'SURVIVED'} ({out.summary}) in {out.seconds:.0f} s", flush=True)
        for test in out.failed:
            print(f"    {test}", flush=True)
        for line in out.skipped:
            print(f"    SKIPPED {line}", flush=True)
        if not out.caught:
            survivors.append(m.name)
        if out.skipped:
            unchecked.append(m.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations caught")
    if unchecked:
        print(f"NOT CHECKED: {len(unchecked)} mutation(s) ran with tests skipped that tests/mutations.md counts on "
              f"({', '.join(unchecked)}): install what the skip reasons name (`make test` installs the packaged "
              "models) and run them again")
    return 1 if survivors or unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
