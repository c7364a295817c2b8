"""Validation by prediction (scylla fit --holdout-top N): held-out points against the law fitted without them."""

from __future__ import annotations

import numpy as np
import pytest

from fit.holdout import holdout_check
from pipeline.cli import main
from scylla.errors import InputError
from scylla.records import append_record, new_record

TOKENS = [4096, 8192, 16384, 32768, 65536]


def law_records(bend: float = 0.0, seed: int = 0) -> list[dict]:
    """MAT = 1 + 0.1 ln(x / 4096) (+ noise, 2 seeds per x), bent down by ``bend`` at the largest x."""
    rng = np.random.default_rng(seed)
    out = []
    for layers in (1, 2):
        for x in TOKENS:
            for s in (0, 1):
                y = 1 + 0.1 * np.log(x / 4096) + rng.normal(0, 0.01) - (bend if x == TOKENS[-1] else 0.0)
                out.append(dict(run_id=f"L{layers}-s{s}", draft_layers=layers, train_tokens=x, seed=s,
                                mean_accepted_length=float(y)))
    return out


def test_a_law_that_holds_predicts_its_held_out_points_and_a_bent_one_does_not():
    held = [p for seed in range(30) for p in holdout_check(law_records(seed=seed), 1, by=("draft_layers",))]
    assert len(held) == 30 * 4 and all(p.x == TOKENS[-1] for p in held)
    assert sum(p.inside for p in held) >= 0.88 * len(held)  # 95% prediction intervals (measured: 94.5% over 50)
    bent = holdout_check(law_records(bend=0.2), 1, by=("draft_layers",))
    assert not any(p.inside for p in bent)


def test_holding_out_too_much_is_refused():
    with pytest.raises(InputError, match="fewer than 3 to fit"):
        holdout_check(law_records(), 3, by=("draft_layers",))


def test_cli_prints_the_coverage(tmp_path, capsys):
    identity = dict(sweep="s", target="tiny", drafter_type="eagle", draft_width=8, draft_params=1,
                    draft_params_with_embeddings=2, data="gsm")
    for r in law_records():
        append_record(tmp_path, new_record("train", **identity, **r))
    assert main(["fit", str(tmp_path), "--by", "draft_layers", "--holdout-top", "1"]) == 0
    out = capsys.readouterr().out
    assert "Held out: each group's 1 largest x" in out and "of 4 inside" in out
