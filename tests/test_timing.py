"""Measured speed-ups on injected timings (issue 27): a fake machine's clock, never the real one, so no test here
depends on the machine's load.

- The engine's clock (``SpeculativeDecoder._clock``, the only clock `scylla eval` times with) is replaced by a fake
  machine's: it moves only when a model runs a forward, by a cost set per model. A drafter known to be faster (prompt
  lookup: its drafts cost nothing, and every target forward still emits a token) must measure faster than plain
  decoding, one known to be slower (a 1-layer draft model whose forward costs 3 target forwards: a step costs
  1 + 3g target forwards for at most g + 1 tokens) slower.
- The interleaving: on a machine that gets busier at every decoding call, the method timed second in a round is
  charged more; reversing the order every other round cancels that, and leaves the measured speed-up where a quiet
  machine puts it.
- The bootstrap (scylla.timing.paired_speedup) against a known distribution: paired ratios whose batches (chunks)
  differ, the rounds of one batch alike. Its 95% interval covers the population median and is as wide as the
  median's own 2.5-97.5% range, not narrower (single ratios as the unit, or a 90% interval) and not wider.
- ``regret``, ``chunked`` and ``pipeline.select.confirmation`` on constructed ratios and records whose answers are
  known.

Bugs these tests exist for (tests/mutations.py): `speedup-inverted`, `rounds-not-reversed`,
`bootstrap-single-ratios`, `interval-90-as-95`, `regret-unpaired`, `chunked-round-major`, `confirmation-ignores-pays`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluate import EvalConfig, evaluate
from pipeline.select import Candidate, confirmation
from scylla.engine import SpeculativeDecoder
from scylla.records import append_record, new_record, read_records
from scylla.timing import chunked, paired_speedup, regret

TARGET_LAYERS, DRAFT_LAYERS = 2, 1  # tiny-random-llama and its truncated:1 draft
COSTS = {TARGET_LAYERS: 0.010, DRAFT_LAYERS: 0.030}  # fake seconds per forward: the draft model costs 3 target ones


class FakeMachine:
    """A clock that moves only when a causal LM runs a forward: one with ``n`` decoder layers costs ``costs[n]``
    fake seconds times the machine's load; the load is multiplied by ``drift`` at every decoding call (a machine
    that gets busier while it is timed). Installed as the engine's clock by ``fake_machine``."""

    def __init__(self, costs: dict[int, float], drift: float = 1.0):
        self.costs, self.drift, self.now, self.load = costs, drift, 0.0, 1.0

    def forward_hook(self, module, args, output) -> None:
        layers = getattr(getattr(module, "config", None), "num_hidden_layers", None)
        if hasattr(module, "lm_head") and layers in self.costs:
            self.now += self.costs[layers] * self.load


@contextmanager
def fake_machine(costs: dict[int, float], drift: float = 1.0):
    machine = FakeMachine(costs, drift)
    generate = SpeculativeDecoder.generate

    def busier_generate(self, *args, **kwargs):
        machine.load *= machine.drift
        return generate(self, *args, **kwargs)

    handle = torch.nn.modules.module.register_module_forward_hook(machine.forward_hook)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # nothing real is timed: one thread is the quickest on a shared machine
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SpeculativeDecoder, "_clock", lambda self, device: machine.now)
            patch.setattr(SpeculativeDecoder, "generate", busier_generate)
            patch.setattr("pipeline.evaluate.warn_if_busy", lambda: 0.0)  # the fake machine is otherwise idle
            yield machine
    finally:
        handle.remove()
        torch.set_num_threads(threads)


def timed_eval(run_dir: Path, batch_sizes: list[int], drift: float = 1.0) -> dict:
    """Online eval of plain decoding, prompt lookup and the slow 1-layer draft (chains of 3) on 2 copy prompts x 16
    tokens, on the fake machine; {(method, batch size): record}."""
    config = EvalConfig(run_dir=str(run_dir), target="tiny-random-llama", drafts=[],
                        baselines=["none", "prompt-lookup", f"truncated:{DRAFT_LAYERS}"], tasks=["copy"],
                        temperatures=[0.0], batch_sizes=batch_sizes, shapes=["chain:3"], prompts=2, repeats=3,
                        max_new_tokens=16, dtype="float32", baseline_dtypes=["float32"])
    with fake_machine(COSTS, drift):
        evaluate(config)
    return {(r["method"], r["batch_size"]): r for r in read_records(run_dir, kind="eval")}


@pytest.fixture(scope="module")
def quiet(tmp_path_factory) -> dict:
    return timed_eval(tmp_path_factory.mktemp("quiet"), [1, 2])


def test_a_drafter_known_faster_measures_faster_and_one_known_slower_slower(quiet):
    """Batch 1 (one chunk per prompt, 3 rounds). On this machine a target forward costs the same whatever it
    verifies, so prompt lookup's paired ratio on a prompt is exactly its MAT there (plain decoding's MAT is 1)."""
    fast, slow = quiet[("prompt-lookup", 1)], quiet[(f"truncated:{DRAFT_LAYERS}", 1)]
    assert fast["mean_accepted_length"] > 1 and fast["timing_rounds"] == 3  # it drafts something that is accepted
    assert fast["speedup"] > 1 and fast["speedup_ci95"][0] > 1 and fast["speedup_verdict"] == "faster"
    assert fast["decode_speedup"] > 1
    per_prompt = [new / calls for new, calls in zip(fast["prompt_new_tokens"], fast["prompt_target_calls"])]
    by_chunk = chunked(fast["speedup_ratios"], fast["timing_rounds"])  # batch 1: chunk c is prompt c
    assert by_chunk == [pytest.approx([mat] * 3, rel=1e-9) for mat in per_prompt]
    assert slow["speedup"] < 1 and slow["speedup_ci95"][1] < 1 and slow["speedup_verdict"] == "slower"
    assert slow["decode_speedup"] < 1
    assert slow["mean_accepted_length"] > 1  # slower although its drafts are accepted: they cost too much


def test_reversed_rounds_cancel_a_machine_that_gets_busier(quiet, tmp_path):
    """Batch 2 = one chunk of both prompts, so 6 rounds. Every decoding call costs 10% more than the one before:
    timed in one order every round, a method would be charged 10% (prompt lookup, second) or 21% (the draft model,
    third) more than plain decoding in every ratio. Reversed every other round, the over- and under-charged
    rounds balance and the median stays within 3% of the quiet machine's (1.005 and 1.018 times it)."""
    busy = timed_eval(tmp_path, [2], drift=1.10)
    for method in ("prompt-lookup", f"truncated:{DRAFT_LAYERS}"):
        measured, reference = busy[(method, 2)], quiet[(method, 2)]
        assert measured["timing_rounds"] == reference["timing_rounds"] == 6
        assert reference["speedup_ci95"][0] == pytest.approx(reference["speedup_ci95"][1])  # quiet: every round alike
        assert measured["speedup"] == pytest.approx(reference["speedup"], rel=0.03), method
        # the busier machine moves each ratio one way or the other, by round, not all of them one way
        shifts = np.array(measured["speedup_ratios"]) / reference["speedup"]
        assert (shifts > 1.05).sum() == (shifts < 0.95).sum() == 3, (method, shifts)


# The bootstrap against a known distribution: log ratio = ln 1.3 + a batch's effect (sd 0.10, shared by its rounds)
# + a round's noise (sd 0.02). The population median is 1.3.
MEDIAN, CHUNK_SD, ROUND_SD = 1.3, 0.10, 0.02


def known_ratios(rng: np.random.Generator, datasets: int, chunks: int, rounds: int, chunk_sd: float = CHUNK_SD,
                 round_sd: float = ROUND_SD) -> np.ndarray:
    """(datasets, chunks, rounds) paired ratios of the known distribution."""
    chunk = rng.normal(0, chunk_sd, (datasets, chunks, 1))
    return MEDIAN * np.exp(chunk + rng.normal(0, round_sd, (datasets, chunks, rounds)))


@pytest.mark.parametrize("chunks, rounds, chunk_sd, round_sd", [
    (12, 4, CHUNK_SD, ROUND_SD),  # batches differ, rounds of a batch alike: the batch is the unit
    (1, 24, 0.0, 0.05),  # one batch of all prompts: the rounds are the unit
], ids=["12-chunks", "1-chunk"])
def test_the_bootstrap_interval_is_95_percent_over_batches(chunks, rounds, chunk_sd, round_sd):
    """Over 150 datasets the interval covers the population median in >= 88% and its mean width is 0.88-1.15 times
    the median's true 2.5-97.5% range, found by simulating 20000 datasets (run with -s; measured: coverage 0.93 and
    0.95, width 0.94 and 0.97). Resampling single ratios of 12 chunks gives 0.53 times that width (coverage 0.75); a
    90% interval 0.80 and 0.83 times."""
    rng = np.random.default_rng(0)
    data = known_ratios(rng, 150, chunks, rounds, chunk_sd, round_sd)
    truth = np.percentile(np.median(known_ratios(rng, 20000, chunks, rounds, chunk_sd, round_sd).reshape(20000, -1),
                                    axis=1), [2.5, 97.5])
    ci = np.array([paired_speedup(d.tolist(), resamples=250).ci95 for d in data])
    coverage = np.mean((ci[:, 0] <= MEDIAN) & (MEDIAN <= ci[:, 1]))
    width = np.mean(ci[:, 1] - ci[:, 0]) / np.ptp(truth)
    print(f"{chunks} chunk(s) x {rounds} rounds: coverage {coverage:.3f}, mean width / true 95% range {width:.3f}")
    assert coverage >= 0.88 and 0.88 <= width <= 1.15, (coverage, width)


def test_regret_is_the_best_minus_the_choice_resampled_jointly():
    """The best configuration's ratios are the chosen one's + 0.25 in every chunk and round: regret is 0.25 and,
    resampling the chunks of both together, every resample says 0.25. The batches differ a lot (1.0 to 1.8), so
    resampling the two apart would give an interval of about +-0.3."""
    chosen = [[1.0 + 0.2 * c + 0.01 * k for k in range(3)] for c in range(5)]
    best = [[r + 0.25 for r in chunk] for chunk in chosen]
    value, (lo, hi) = regret(chosen, best)
    assert value == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    value, (lo, hi) = regret([chosen[0]], [best[0]])  # one chunk: its rounds resampled
    assert value == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    value, (lo, hi) = regret(best, best)
    assert value == lo == hi == 0.0
    worse = [[r - 0.1 for r in chunk] for chunk in chosen]  # "best" measured below the choice: a negative regret
    assert regret(chosen, worse)[0] == pytest.approx(-0.1)
    with pytest.raises(Exception, match="same chunks and rounds"):
        regret(chosen, best[:-1])


def test_chunked_reads_a_records_ratios_chunk_major():
    """A record stores ``speedup_ratios`` chunk by chunk ([chunk][round] flattened, pipeline/evaluate.py)."""
    assert chunked([1.1, 1.2, 1.3, 2.1, 2.2, 2.3], 3) == [[1.1, 1.2, 1.3], [2.1, 2.2, 2.3]]
    assert chunked([1.1, 1.2, 2.1, 2.2, 3.1, 3.2], 2) == [[1.1, 1.2], [2.1, 2.2], [3.1, 3.2]]
    assert chunked([1.5], 1) == [[1.5]]


def test_confirmation_measures_the_choice_against_the_best_on_the_confirm_set(tmp_path):
    """Constructed check records (confirm set, online, 4 chunks x 3 rounds): plain decoding, the chosen draft at
    chain:3 (ratios 1.1-1.6 by chunk), the same draft at chain:5 (0.3 higher in every chunk and round: the best) and
    prompt lookup (0.9). At batch 1 the choice pays (its lower bound is above 1): regret 0.3 [0.3, 0.3]. At batch 2
    it does not, so the choice is plain decoding and the regret is the best's median - 1. A select-set record, faster
    still, is not the confirm set's and is ignored."""
    head = tmp_path / "head"
    head.mkdir()
    identity = dict(run_id="check", sweep="", target="tiny-random-llama", drafter_type="eagle", draft_layers=1,
                    draft_width=8, draft_params=1, draft_params_with_embeddings=2, train_tokens=4096, data="gsm",
                    seed=0)
    chosen_ratios = [[1.1 + 0.15 * c + 0.01 * k for k in range(3)] for c in range(4)]

    def write(method: str, shape: str, batch: int, ratios: list[list[float]], prompt_set: str = "confirm") -> None:
        flat = [r for chunk in ratios for r in chunk]
        append_record(tmp_path / "check", new_record(
            "eval", **identity, method=method, draft_shape=shape, batch_size=batch, task="gsm", temperature=0.0,
            mode="online", prompt_set=prompt_set, dtype="float32", baseline_dtype="float32",
            speedup=float(np.median(flat)), speedup_ci95=[min(flat), max(flat)], timing_rounds=3,
            speedup_ratios=flat))

    for batch in (1, 2):
        write("none", "chain:0", batch, [[1.0] * 3] * 4)
        write(f"draft:{head}", "chain:3", batch, chosen_ratios)
        write(f"draft:{head}", "chain:5", batch, [[r + 0.3 for r in chunk] for chunk in chosen_ratios])
        write("prompt-lookup", "chain:3", batch, [[0.9] * 3] * 4)
        write(f"draft:{head}", "chain:4", batch, [[3.0] * 3] * 4, prompt_set="select")

    def candidate(batch: int, lower: float) -> Candidate:
        return Candidate(batch, 1, "chain:3", 4096, 2.0, (1.8, 2.2), 1.2, 1.5, (lower, 1.8), False)

    out = confirmation(tmp_path / "check", {1: candidate(1, 1.1), 2: candidate(2, 0.95)}, {1: str(head), 2: str(head)})
    best_median = float(np.median([r + 0.3 for chunk in chosen_ratios for r in chunk]))
    paid = out[1]
    assert paid["choice"].endswith(" chain:3") and paid["choice"].startswith("draft:")
    assert paid["best"] == paid["choice"].replace("chain:3", "chain:5") and paid["best_speedup"] == best_median
    assert paid["regret"] == pytest.approx(0.3) and paid["regret_ci95"] == pytest.approx([0.3, 0.3])
    plain = out[2]
    assert plain["choice"] == "none chain:0" and plain["choice_speedup"] == 1.0
    assert plain["regret"] == pytest.approx(best_median - 1.0) and plain["regret_ci95"][0] > 0.3
