"""Test-time-scaling figures (paper_figs/tts.py) from synthetic tts records: files written, contents, empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from paper_figs import tts
from paper_figs.all import all_figures
from paper_figs.tts import tts_figures
from scylla.records import new_record, validate_record

# method -> (drafter_type, MAT at no repetition, MAT gained per unit of repetition)
METHODS = {"plain": ("none", 1.0, 0.0), "sps": ("truncated", 1.8, 0.5), "pld": ("prompt-lookup", 1.2, 3.0),
           "hybrid": ("hybrid", 2.0, 2.0)}
TASKS = {"gsm": 0.2, "code": 0.4}  # task -> repetition share of the generated tokens
# (paradigm, temperature, batch size): Best-of-4 one after another and as one batch, multi-round at two temperatures
SETTINGS = (("best-of-4", 0.6, 1), ("best-of-4", 0.6, 4), ("multi-round-2", 0.0, 1), ("multi-round-2", 0.6, 1))
NAMES = {f"{name}.{suffix}" for name in ("tts_speedup_by_task", "tts_mat_vs_repetition") for suffix in ("png", "pdf")}


def _tts(method: str, task: str, paradigm: str, temperature: float, batch: int, **metrics) -> dict:
    drafter_type, base, gain = METHODS[method]
    rep = TASKS[task] + (0.1 if paradigm.startswith("multi") else 0.0) + 0.02 * batch
    mat = base + gain * rep
    fields = dict(run_id=method, sweep="tts", target="tiny", drafter_type=drafter_type, draft_layers=0,
                  draft_width=0, draft_params=0, draft_params_with_embeddings=0, train_tokens=0, data="", seed=0,
                  task=task, temperature=temperature, batch_size=batch, method=method, paradigm=paradigm,
                  mean_accepted_length=mat, speedup=1.0 if method == "plain" else mat / 1.3, repetition=rep,
                  repetition_self=rep / 2)
    return validate_record(new_record("tts", **{**fields, **metrics}))


RECORDS = [_tts(m, t, *s) for s in SETTINGS for t in TASKS for m in METHODS]


@pytest.fixture
def figures(monkeypatch) -> dict:
    """The figures tts_figures draws, by name, instead of writing them."""
    drawn = {}

    def keep(fig, out_dir, name: str) -> list:
        drawn[name] = fig
        return []

    monkeypatch.setattr(tts, "_save", keep)
    return drawn


def test_tts_figures_written(tmp_path):
    paths = tts_figures(RECORDS, tmp_path / "out")
    assert {p.name for p in paths} == NAMES
    for p in paths:
        assert p.stat().st_size > 1000, p


def test_speedup_panels(tmp_path, figures):
    tts_figures(RECORDS, tmp_path)
    axes = [ax for ax in figures["tts_speedup_by_task"].axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [
        "Best-of-4, T=0.6, sequential", "Best-of-4, T=0.6, batched", "multi-round (2 rounds), T=0",
        "multi-round (2 rounds), T=0.6"]
    for ax in axes:
        assert len(ax.patches) == len(TASKS) * (len(METHODS) - 1)  # plain decoding is the dashed line, not a bar
        assert [tick.get_text() for tick in ax.get_xticklabels()] == sorted(TASKS)
    # pld on code, multi-round: repetition 0.4 + 0.1 + 0.02 -> MAT 1.2 + 3 * 0.52, speed-up MAT / 1.3
    heights = {round(p.get_height(), 4) for p in axes[2].patches}
    assert round((1.2 + 3 * 0.52) / 1.3, 4) in heights


def test_repetition_fit(tmp_path, figures):
    tts_figures(RECORDS, tmp_path)
    ax = figures["tts_mat_vs_repetition"].axes[0]
    drafted = [r for r in RECORDS if r["method"] != "plain"]
    r = np.corrcoef([d["repetition"] for d in drafted], [d["mean_accepted_length"] for d in drafted])[0, 1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:5] == ["sps", "pld", "hybrid", "task code", "task gsm"]
    assert f"Pearson r = {r:.2f}" in labels[-1] and f"n = {len(drafted)}" in labels[-1]
    assert ax.get_title().endswith(f"r = {r:.2f}")


def test_repetition_without_fit(tmp_path, figures):
    two_x = [r for r in RECORDS if r["paradigm"] == "best-of-4" and r["batch_size"] == 1]  # repetition 0.22, 0.42
    tts_figures(two_x, tmp_path)
    ax = figures["tts_mat_vs_repetition"].axes[0]
    assert not any("least squares" in t.get_text() for t in ax.get_legend().get_texts())
    flat = [_tts(m, t, *s, mean_accepted_length=2.0) for s in SETTINGS for t in TASKS for m in ("sps", "pld")]
    tts_figures(flat, tmp_path)  # MAT constant: the line is drawn, r is undefined and not shown
    labels = [t.get_text() for t in figures["tts_mat_vs_repetition"].axes[0].get_legend().get_texts()]
    assert labels[-1].startswith("least squares") and "Pearson" not in labels[-1]


def test_tts_figures_nothing_to_plot(tmp_path):
    assert tts_figures([], tmp_path / "none") == []
    assert tts_figures([r for r in RECORDS if r["method"] == "plain"], tmp_path / "plain") == []
    no_metrics = [_tts("pld", "gsm", *SETTINGS[0], speedup=None, repetition=None)]
    assert tts_figures(no_metrics, tmp_path / "null") == []
    other = validate_record(new_record("eval", **{k: v for k, v in RECORDS[1].items()
                                                  if k not in ("kind", "paradigm")}))
    assert tts_figures([other], tmp_path / "eval") == []
    assert not list(tmp_path.iterdir())


def test_only_speedup(tmp_path):
    no_repetition = [{k: v for k, v in r.items() if k != "repetition"} for r in RECORDS]
    assert {p.name for p in tts_figures(no_repetition, tmp_path)} == {"tts_speedup_by_task.png",
                                                                      "tts_speedup_by_task.pdf"}


def test_all_figures_draws_tts(tmp_path):
    assert {p.name for p in all_figures(RECORDS, tmp_path)} == NAMES
