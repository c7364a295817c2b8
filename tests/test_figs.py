"""Paper figures and Table 5 from synthetic records (paper_figs/): files written, contents, empty cases."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

from paper_figs.all import all_figures
from paper_figs.batch import batch_figures
from paper_figs.table import default_baseline, default_scylla_methods, own_best, throughput_table
from paper_figs.tasks import task_figures
from pipeline.evaluate import parse_shape
from scylla.records import new_record, validate_record

SCYLLA = "draft:runs/t/eagle-layers2/tokens-524288"
BASELINE = "draft:runs/t/eagle-layers1/tokens-524288"
SMALL = "draft:runs/t/eagle-layers1/tokens-65536"
TREE16 = "tree:top_k=4,depth=4,total_tokens=16"
TREE60 = "tree:top_k=10,depth=5,total_tokens=60"  # EAGLE-2's default
# (method, layers, train_tokens, drafter_type) -> {shape: MAT on code (gsm: +0.2)}
DRAFTS = {
    (SCYLLA, 2, 524288, "eagle"): {"chain:2": 2.4, "chain:4": 3.0, TREE16: 3.4},
    (BASELINE, 1, 524288, "eagle"): {TREE60: 3.2, "chain:2": 2.2},
    (SMALL, 1, 65536, "eagle"): {TREE16: 2.5},
    ("prompt-lookup", 0, 0, "prompt-lookup"): {"chain:4": 1.6},
    ("truncated:2", 0, 0, "truncated:2"): {"chain:2": 1.8},
}


def _record(kind: str, **fields) -> dict:
    base = dict(run_id="r", sweep="test", target="tiny", drafter_type="eagle", draft_layers=0, draft_width=0,
                draft_params=0, draft_params_with_embeddings=0, train_tokens=0, data="", seed=0)
    return validate_record(new_record(kind, **{**base, **fields}))


def _eval(method, layers, tokens, drafter_type, shape, task, temperature, batch, mat, mode="online") -> dict:
    """Plain decoding runs at 100 * batch tokens/s; a draft's speed-up is MAT / (1 + 0.01 * width * batch)."""
    s = parse_shape(shape) if shape != "chain:0" else None
    fields = s.fields() if s else dict(draft_shape="chain:0", num_draft_tokens=0, tree_top_k=None, tree_depth=None,
                                       tree_total_tokens=None)
    up = mat / (1 + 0.01 * (s.verify_tokens - 1) * batch) if s else 1.0
    timed = mode == "online"
    return _record("eval", run_id=method, drafter_type=drafter_type, draft_layers=layers, train_tokens=tokens,
                   task=task, temperature=temperature, batch_size=batch, method=method, mode=mode, **fields,
                   mean_accepted_length=mat, tokens_per_second=100.0 * batch * up if timed else None,
                   speedup=up if timed else None)


def make_records() -> list[dict]:
    records = []
    for i, (layers, tokens) in enumerate((d, 2**e) for d in (1, 2, 3) for e in (16, 17, 18, 19)):
        grow, wiggle = math.log(tokens / 2**16), 0.01 * (-1) ** i
        records.append(_record("train", run_id=f"eagle-l{layers}", drafter_type="eagle", draft_layers=layers,
                               draft_width=64, draft_params=layers * 10**6 + 5 * 10**5, train_tokens=tokens,
                               mean_accepted_length=1.4 + 0.15 * layers + 0.12 * grow + wiggle,
                               heldout_accuracy=0.3 + 0.03 * layers + 0.02 * grow + wiggle))
    for task, offset in (("code", 0.0), ("gsm", 0.2)):
        for temperature, batches in ((0.0, (1, 4, 16)), (0.6, (1,))):
            for batch in batches:
                records.append(_eval("none", 0, 0, "none", "chain:0", task, temperature, batch, 1.0))
                for (method, layers, tokens, kind), shapes in DRAFTS.items():
                    for shape, mat in shapes.items():
                        records.append(_eval(method, layers, tokens, kind, shape, task, temperature, batch,
                                             mat + offset))
        records.append(_eval("truncated:2", 0, 0, "truncated:2", "chain:4", task, 0.0, 1, 2.0, mode="replay"))
    return records


RECORDS = make_records()


def _files_ok(paths) -> None:
    """Every PNG decodes to an image of a figure's size, every PDF is a PDF."""
    assert paths and {p.suffix for p in paths} == {".png", ".pdf"}
    for p in paths:
        if p.suffix == ".png":
            height, width, _ = plt.imread(p).shape
            assert height > 300 and width > 400, p
        else:
            assert p.read_bytes().startswith(b"%PDF"), p


def test_batch_figures(tmp_path):
    paths = batch_figures(RECORDS, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"law3_batch_{t}_T0.{s}" for t in ("code", "gsm")
                                                   for s in ("png", "pdf"))
    _files_ok(paths)


def test_batch_figures_need_two_batch_sizes_and_shapes(tmp_path):
    assert batch_figures([r for r in RECORDS if r.get("batch_size") == 1], tmp_path) == []
    one_shape = [r for r in RECORDS if r.get("draft_shape") in ("chain:0", "chain:2")]
    assert batch_figures(one_shape, tmp_path) == []
    assert batch_figures([], tmp_path) == []
    assert not list(tmp_path.iterdir())


def test_default_drafts():
    assert default_scylla_methods(RECORDS) == {SCYLLA}  # highest mean MAT of the trained drafts
    assert default_baseline(RECORDS) == BASELINE  # 1-layer, tree, most tokens


def test_task_figures(tmp_path):
    paths = task_figures(RECORDS, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"fig2_mat_by_task_T{t}.{s}" for t in ("0", "0.6")
                                                   for s in ("png", "pdf"))
    _files_ok(paths)
    config = tmp_path / "scylla.yaml"
    config.write_text(yaml.safe_dump({"selection": {"1": {"draft": SMALL, "draft_shape": TREE16}}}))
    greedy = [r for r in RECORDS if r.get("temperature") == 0]
    assert len(task_figures(greedy, tmp_path / "config", scylla_config=str(config))) == 2
    assert len(task_figures(greedy, tmp_path / "given", scylla_methods={SMALL})) == 2


def test_task_figures_nothing_to_compare(tmp_path):
    untrained = [r for r in RECORDS if r["kind"] == "eval" and r["draft_layers"] == 0]
    assert task_figures(untrained, tmp_path) == []  # no Scylla draft
    assert task_figures([r for r in RECORDS if r.get("method") in ("none", SCYLLA)], tmp_path) == []  # no baseline
    assert task_figures([], tmp_path) == []


def test_throughput_table(tmp_path):
    md = throughput_table(RECORDS, tmp_path)
    rows = [line for line in md.splitlines() if line.startswith("| ") and "batch size" not in line]
    # tasks x (batch sizes at T=0, at T=0.6) x (Scylla, baseline, prompt-lookup, truncated:2)
    assert len(rows) == 2 * (3 + 1) * 4
    # at batch size 4 Scylla's fastest shape is the 4-token chain: 3.2 / (1 + 0.01 * 4 * 4) = 2.7586; no prompt sets,
    # so every shape is chosen on the records it is reported on (marked)
    assert ("| gsm | 0 | 4 | Scylla (eagle 2-layer, 524k tokens) | `chain:4`† | 3.20 | 1103.4 | **2.76×** |"
            in rows)
    # the baseline at its own best shape: chain:2, 2.4 / (1 + 0.01 * 2 * 16) = 1.82 beats its 60-token tree (0.32)
    assert "| gsm | 0 | 16 | EAGLE-2-style (eagle 1-layer, 524k tokens) | `chain:2`† | 2.40 | 2909.1 | 1.82× |" in rows
    assert "| gsm | 0 | 16 | prompt-lookup | `chain:4` | 1.80 | 1756.1 | 1.10× |" in rows  # one shape: no choice
    fixed = throughput_table(RECORDS, tmp_path / "fixed", baseline_shape=TREE60)
    assert f"| gsm | 0 | 16 | EAGLE-2-style (eagle 1-layer, 524k tokens) | `{TREE60}` | 3.40 | 513.2 | 0.32× |" in fixed
    assert (tmp_path / "table5_throughput.md").read_text() == md
    tex = (tmp_path / "table5_throughput.tex").read_text()
    for line in ("\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}"):
        assert line in tex.splitlines()
    assert "\\texttt{tree:top\\_k=4,depth=4,total\\_tokens=16}$^\\dagger$" in tex
    assert "gsm & 0 & 4 & Scylla (eagle 2-layer, 524k tokens) & \\texttt{chain:4}$^\\dagger$ & 3.20 & 1103.4 & " \
           "\\textbf{2.76$\\times$} \\\\" in tex
    assert tex.count("\\\\\n") == len(rows) + 1


def test_each_method_is_chosen_on_the_select_set_and_reported_on_the_confirm_set(tmp_path):
    """The winner's curse: a shape that looks best on the select prompts by luck is still reported on the confirm
    prompts, not at the maximum of its own measurements (bug this catches: reporting the best confirm record)."""
    speed = {("select", "chain:2"): 1.30, ("select", "chain:4"): 1.20,  # chain:2 won by luck on the select set
             ("confirm", "chain:2"): 1.10, ("confirm", "chain:4"): 1.25}
    records = []
    for (prompt_set, shape), up in speed.items():
        for method, layers in ((BASELINE, 1), ("none", 0)):
            r = _eval(method, layers, 524288 * (layers > 0), "eagle" if layers else "none",
                      shape if layers else "chain:0", "gsm", 0.0, 1, 2.0 if layers else 1.0)
            records.append({**r, "prompt_set": prompt_set, "speedup": up if layers else 1.0})
    found, out_of_sample = own_best([r for r in records if r["method"] == BASELINE], lambda r: r["speedup"])
    assert out_of_sample and [(r["prompt_set"], r["draft_shape"], r["speedup"]) for r in found] == [
        ("confirm", "chain:2", 1.10)]
    md = throughput_table(records, tmp_path)
    assert "| gsm | 0 | 1 | EAGLE-2-style (eagle 1-layer, 524k tokens) | `chain:2` | 2.00 | 196.1 | **1.10×** |" in md
    assert "†" not in md
    without_confirm = [r for r in records if r["prompt_set"] == "select"]
    assert own_best([r for r in without_confirm if r["method"] == BASELINE], lambda r: r["speedup"])[1] is False


def test_throughput_table_follows_the_configuration(tmp_path):
    config = tmp_path / "scylla.yaml"  # batch size 4 takes the entry of 1 (the nearest at or below)
    config.write_text(yaml.safe_dump({"selection": {"1": {"draft": SCYLLA, "draft_shape": TREE16},
                                                    "8": {"draft": SCYLLA, "draft_shape": "chain:2"}}}))
    md = throughput_table(RECORDS, tmp_path, scylla_config=str(config))
    assert f"| code | 0 | 4 | Scylla (eagle 2-layer, 524k tokens) | `{TREE16}` | 3.40 | 829.3 | **2.07×** |" in md
    assert "| code | 0 | 16 | Scylla (eagle 2-layer, 524k tokens) | `chain:2` | 2.40 | 2909.1 | **1.82×** |" in md


def test_throughput_table_empty(tmp_path):
    replayed = [r for r in RECORDS if r["kind"] == "train" or r.get("mode") == "replay"]
    assert throughput_table(replayed, tmp_path) == ""
    assert throughput_table([], tmp_path) == ""
    assert not list(tmp_path.iterdir())


def test_all_figures(tmp_path):
    config = tmp_path / "scylla.yaml"
    config.write_text(yaml.safe_dump({"selection": {"1": {"draft": SCYLLA, "draft_shape": TREE16}}}))
    paths = all_figures(RECORDS, tmp_path / "out", scylla_config=str(config))
    names = {p.name for p in paths}
    for y in ("mean_accepted_length", "heldout_accuracy"):
        assert {f"law1_tokens_{y}.pdf", f"law2_capacity_{y}.pdf"} <= names
    assert {"law3_batch_gsm_T0.png", "fig2_mat_by_task_T0.6.pdf", "table5_throughput.md",
            "table5_throughput.tex"} <= names
    assert all(p.exists() for p in paths)
    assert all_figures([], tmp_path / "none") == []


def test_laws_skip_what_cannot_be_fitted(tmp_path):
    train = [r for r in RECORDS if r["kind"] == "train"]
    # a milestone only depth 3 reached: law 2 cannot fit it (one draft size), law 1 still takes it
    extra = _record("train", run_id="eagle-l3", draft_layers=3, draft_width=64, draft_params=35 * 10**5,
                    train_tokens=2**20, mean_accepted_length=2.5)
    names = {p.name for p in all_figures([*train, extra], tmp_path)}
    assert {"law1_tokens_mean_accepted_length.png", "law2_capacity_mean_accepted_length.png"} <= names
    # depth 1 with 2 checkpoints is left out; with 2 depths left there is no law 2, and no held-out accuracy at all
    few = [r for r in train if r["draft_layers"] > 1 or r["train_tokens"] <= 2**17]
    few = [{k: v for k, v in r.items() if k != "heldout_accuracy"} for r in few]
    assert {p.name for p in all_figures(few, tmp_path / "few")} == {"law1_tokens_mean_accepted_length.png",
                                                                   "law1_tokens_mean_accepted_length.pdf"}


def test_law_figure_reads_back():
    """The law-1 figure, read back: its axes, one line and one point series per depth, and each line's slope in ln x
    (from the plotted data) equal to the fit's and near the synthetic law's 0.12 per e-fold."""
    from fit import fit_log_linear
    from paper_figs.laws import draw_law

    train = [r for r in RECORDS if r["kind"] == "train"]
    fig = draw_law(train, "train_tokens", "mean_accepted_length", "draft_layers")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "draft training tokens" and ax.get_ylabel() == "mean accepted length (MAT)"
    assert ax.get_xscale() == "log" and len(ax.lines) == 3 and len(ax.collections) == 6  # 3 point sets, 3 bands
    fits = fit_log_linear(train, x="train_tokens", y="mean_accepted_length", by=("draft_layers",))
    for line, points, f in zip(ax.lines, ax.collections[::2], fits):
        x, y = line.get_data()
        slope = np.polyfit(np.log(x), y, 1)[0]
        assert slope == pytest.approx(f.slope, rel=1e-6) and abs(slope - 0.12) < 0.02
        assert sorted(map(tuple, points.get_offsets().tolist())) == sorted(zip(f.x_values, f.y_values))
        assert f"{f.slope:+.3f} ln x" in line.get_label()
    plt.close(fig)


def test_two_targets_share_the_law_figure_and_nothing_else(tmp_path):
    """`scylla figs RUN_A RUN_B` of two targets: law 1 draws one law per (target, depth) on one plot, never one law
    across targets (bug this catches: grouping by depth alone pools both targets' points); the comparisons (law 3,
    Fig. 2, Table 5) are drawn per target, in a folder named after it."""
    from paper_figs.laws import draw_law

    other = [{**r, "target": "gemma3-270m", **({"mean_accepted_length": r["mean_accepted_length"] + 0.5}
                                              if r["kind"] == "train" else {})} for r in RECORDS]
    records = RECORDS + other
    fig = draw_law([r for r in records if r["kind"] == "train"], "train_tokens", "mean_accepted_length",
                   "draft_layers")
    (ax,) = fig.axes
    labels = sorted(line.get_label() for line in ax.lines)
    assert len(labels) == 6 and sum(label.startswith("gemma3-270m, draft layers") for label in labels) == 3
    lines = {line.get_label().split(":")[0]: line.get_data()[1] for line in ax.lines}
    for depth in (1, 2, 3):  # each line is its own target's: the gemma3 copy sits 0.5 higher
        gap = lines[f"gemma3-270m, draft layers {depth}"] - lines[f"tiny, draft layers {depth}"]
        assert gap == pytest.approx(np.full_like(gap, 0.5), abs=1e-9)
    plt.close(fig)
    names = {str(p.relative_to(tmp_path)) for p in all_figures(records, tmp_path)}
    assert "law1_tokens_mean_accepted_length.png" in names
    for target in ("tiny", "gemma3-270m"):
        assert {f"{target}/table5_throughput.md", f"{target}/fig2_mat_by_task_T0.png",
                f"{target}/law3_batch_gsm_T0.png"} <= names
    assert not any(n.startswith(("table5", "fig2", "law3")) for n in names)
