"""The decision rule on injected timings (issue 15): the Scylla choice never takes a draft whose predicted speed-up
is below plain decoding at its lower 95% bound, and a measured speed-up whose interval holds 1 reads "no
measurable difference".

Bug each test exists for: choosing by the point prediction (`select` by predicted_speedup, `pays` as
predicted_speedup > 1) takes the noisy and the borderline drafts; a verdict from the median alone calls the noisy
measurement a speed-up.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.select import candidates, pays, select, write_config
from scylla.costs import CostTable
from scylla.errors import InputError
from scylla.timing import NO_DIFFERENCE, paired_speedup


def cost_table(spread: float, head: float = 0.005) -> CostTable:
    """Target step 0.10 s, verify of 4 tokens 0.12 s, a 1-layer head step ``head`` s; every repeat within
    +-``spread`` (relative) of its median."""
    rows = [("target", 1, 0.10), ("target", 4, 0.12), ("head:1", 1, head)]
    return CostTable("cpu", "float32", [
        {"model": m, "batch": 1, "tokens": t, "context": 128, "seconds": s, "seconds_min": s * (1 - spread),
         "seconds_max": s * (1 + spread)} for m, t, s in rows])


def law(slope: float, slope_sd: float, at: int = 2**16) -> dict:
    """A fits-file entry for 1-layer heads at chain:3: MAT = 1 + slope ln(x / 4096), the slope known to sd
    ``slope_sd`` (so the MAT at x has sd slope_sd ln(x / 4096))."""
    ref = float(np.log(4096))
    cov = [[(ref * slope_sd) ** 2, -ref * slope_sd**2], [-ref * slope_sd**2, slope_sd**2]]
    return dict(group={"draft_layers": 1, "draft_shape": "chain:3"}, x="train_tokens", y="mean_accepted_length",
                n=10, intercept=1.0 - slope * ref, slope=slope, intercept_se=0.0, slope_se=slope_sd,
                intercept_ci95=[0, 0], slope_ci95=[slope - 2 * slope_sd, slope + 2 * slope_sd],
                slope_ci95_bootstrap=None, r2=0.9, residuals=[], x_values=[4096.0, float(at)], y_values=[1.0, 1.0],
                method="ols-classical", cov=cov, resid_var=0.0, df=1000)


# (name, law slope and sd, cost spread): quiet = a clear win; noisy = the same point, wide timings;
# borderline = predicted 1.02x, its interval across 1; slow = predicted below 1.
CASES = {"quiet": (0.30, 0.005, 0.02), "noisy": (0.30, 0.005, 0.60), "borderline": (0.135, 0.02, 0.05),
         "slow": (0.05, 0.005, 0.02)}


@pytest.mark.parametrize("name", CASES)
def test_the_choice_never_takes_a_draft_below_plain_at_its_lower_bound(name):
    slope, sd, spread = CASES[name]
    (chosen,) = select(candidates([law(slope, sd)], cost_table(spread), [1])).values()
    lo, hi = chosen.predicted_speedup_ci95
    assert lo <= chosen.predicted_speedup <= hi
    assert pays(chosen) == (lo > 1) == (name == "quiet"), (name, chosen.predicted_speedup, lo, hi)
    if name in ("noisy", "borderline"):
        assert chosen.predicted_speedup > 1  # the point alone would have taken the draft


def test_the_lower_bound_beats_a_higher_but_uncertain_point():
    """Two laws: one predicts more with a wide interval, one a bit less with a tight one; the tight one is chosen."""
    sure, unsure = law(0.30, 0.002), law(0.33, 0.06)
    unsure["group"] = {"draft_layers": 1, "draft_shape": "chain:3", "variant": "unsure"}
    found = candidates([unsure, sure], cost_table(0.02), [1])
    assert found[0].predicted_speedup > found[1].predicted_speedup
    assert found[0].predicted_speedup_ci95[0] < found[1].predicted_speedup_ci95[0]
    assert select(found)[1] is found[1]


@pytest.mark.parametrize("ratios, verdict", [
    ([[1.30, 1.31, 1.29]] * 16, "faster"),  # quiet: every paired ratio near 1.3
    ([[0.5, 2.6, 1.1], [1.9, 0.7, 1.4], [0.6, 2.2, 1.0], [2.4, 0.8, 1.2]], NO_DIFFERENCE),  # noisy, median 1.15
    ([[1.03, 0.97, 1.02], [0.99, 1.04, 0.98]], NO_DIFFERENCE),  # borderline
    ([[0.8, 0.82, 0.79]] * 8, "slower"),
])
def test_a_measured_speedup_says_no_measurable_difference_when_its_interval_holds_one(ratios, verdict):
    up = paired_speedup(ratios)
    assert up.verdict == verdict and up.ci95[0] <= up.median <= up.ci95[1]
    assert up.describe().startswith(NO_DIFFERENCE) == (verdict == NO_DIFFERENCE)
    assert up.chunks == len(ratios) and up.ratios == sum(map(len, ratios))


def test_one_chunk_resamples_its_rounds_and_bad_ratios_fail():
    up = paired_speedup([[1.2, 1.4, 1.3]])
    assert up.median == pytest.approx(1.3) and 1.2 <= up.ci95[0] and up.ci95[1] <= 1.4
    with pytest.raises(Exception, match="finite and > 0"):
        paired_speedup([[1.0, 0.0]])


def test_few_batches_get_more_rounds():
    """One batch of all prompts: an interval over 3 rounds is the range of 3 numbers (the busy-loop check at batch 16
    missed the quiet ratio that way), so such settings are timed in more rounds."""
    from scylla.timing import MIN_RATIOS, rounds_for

    assert rounds_for(3, 16) == 3 and rounds_for(3, 1) == MIN_RATIOS and rounds_for(3, 4) == 3
    assert rounds_for(3, 2) == 3 and rounds_for(1, 1) == 1  # one pass stays one pass (the cost calibration)


def test_the_dtype_is_chosen_against_the_fastest_plain_decoding(tmp_path):
    """Two tables: plain float32 is the faster plain decoding (0.10 s a step against bf16's 0.12 s) but bf16 verifies
    4 tokens for little more than one (0.125 s against fp32's 0.20 s). The bf16 draft is chosen, and its speed-up is
    over plain float32, not over the slower plain bf16 (which would inflate it by 0.12 / 0.10).

    Bug it exists for: a speed-up over plain decoding in the candidate's own dtype lets a dtype win by slowing the
    baseline (here 1.2x more)."""
    def table(dtype: str, step: float, verify: float) -> CostTable:
        rows = [("target", 1, step), ("target", 4, verify), ("head:1", 1, 0.005)]
        return CostTable("cpu", dtype, [{"model": m, "batch": 1, "tokens": t, "context": 128, "seconds": s,
                                         "seconds_min": s, "seconds_max": s} for m, t, s in rows])

    fp32, bf16 = table("float32", 0.10, 0.20), table("bfloat16", 0.12, 0.125)
    found = candidates([law(0.30, 0.005)], [fp32, bf16], [1])
    by_dtype = {c.dtype: c for c in found}
    assert {c.plain_dtype for c in found} == {"float32"}
    mat = by_dtype["bfloat16"].predicted_mat
    assert by_dtype["bfloat16"].predicted_speedup == pytest.approx(mat * 0.10 / (3 * 0.005 + 0.125))
    assert by_dtype["float32"].predicted_speedup == pytest.approx(mat * 0.10 / (3 * 0.005 + 0.20))
    (chosen,) = select(found).values()
    assert chosen.dtype == "bfloat16" and pays(chosen)
    # its check runs the draft in bf16 and times plain decoding in both dtypes: the measured baseline is the faster
    config = write_config(tmp_path / "scylla.yaml", {1: chosen}, "check", {1: "jobs/h"}, "t", ["gsm"],
                          dtypes=["float32", "bfloat16"])
    assert config["dtype"] == "bfloat16" and config["baseline_dtypes"] == ["bfloat16", "float32"]
    with pytest.raises(InputError, match="one cost table per dtype"):
        candidates([law(0.30, 0.005)], [fp32, fp32], [1])
