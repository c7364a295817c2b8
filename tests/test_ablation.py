"""The ablation table: MAT per draft and task, with the prompt as the unit of its intervals and paired differences."""

from __future__ import annotations

import pytest

from paper_figs.ablation import ablation_rows, main, markdown
from scylla.records import append_record, new_record


IDENTITY = dict(sweep="ablation", target="tiny", drafter_type="eagle", draft_layers=1, draft_width=32, draft_params=1,
                draft_params_with_embeddings=2, train_tokens=8, data="gsm", seed=0)


def _records(tmp_path):
    ids = ["a", "b", "c", "d"]
    for run_id, unroll, calls in (("eagle-ref", 4, [10, 10, 10, 10]), ("eagle-unroll1", 1, [12, 11, 13, 12])):
        append_record(tmp_path, new_record("train", run_id=run_id, unroll=unroll, layout="eagle3", **IDENTITY,
                                           feature_layers=[-1], loss_type="ce", feature_weight=0.0,
                                           heldout_accuracy=0.5))
        append_record(tmp_path, new_record("eval", run_id=run_id, **IDENTITY, task="gsm", draft_shape="chain:5", mode="replay",
                                           prompt_ids=ids, prompt_new_tokens=[20, 20, 20, 20],
                                           prompt_target_calls=calls, mean_accepted_length=80 / sum(calls),
                                           per_position_acceptance=[0.6, 0.3, 0.1, 0.0, 0.0]))


def test_rows_pair_prompts_and_print(tmp_path, capsys):
    _records(tmp_path)
    from scylla.records import read_records

    rows = {r["run_id"]: r for r in ablation_rows(read_records(tmp_path), "eagle-ref", "chain:5")}
    assert rows["eagle-ref"]["mat"] == 2.0 and rows["eagle-ref"]["delta"] is None
    one = rows["eagle-unroll1"]
    assert one["delta"] == pytest.approx(80 / 48 - 2.0)
    assert one["delta_ci95"][1] < 0  # every prompt is slower: the paired interval excludes 0
    assert "| eagle-unroll1 | eagle3 | [-1] | 1 |" in markdown(list(rows.values()))
    assert main([str(tmp_path)]) == 0 and "reference" in capsys.readouterr().out
    assert main([str(tmp_path), "--shape", "chain:2"]) == 2 and "scylla eval" in capsys.readouterr().err
