"""Where prompts share templates, the template is the law's independent unit (fit/prompt_unit.py, unit_points).

The GSM evaluation prompts come from reasoning-gym gsm_symbolic templates (question shapes); prompts of one template
are alike, so their slopes share a template shock. Synthetic per-prompt records: 8 templates x 4 prompts, 2 training
runs, 5 checkpoints, each template's slope drawn around a known population slope, each prompt's a little around its
template's, plus checkpoint shocks per run and noise. With ``prompt_templates`` in the records, the interval takes the
template as its unit and covers the population slope at about 95%, neither less nor much more; without them, the 32
prompts are taken as independent, the interval is about half as wide, and it under-covers (the mutation
template-unit-ignored).
"""

from __future__ import annotations

import numpy as np

from fit.prompt_unit import mean_slope, unit_points

TRUE_SLOPE, TEMPLATE_SD, PROMPT_SD, NOISE_SD, SHOCK_SD = 0.10, 0.06, 0.01, 0.02, 0.01
TEMPLATES, PER_TEMPLATE, RUNS, REPEATS = 8, 4, 2, 200
TOKENS = [4096, 8192, 16384, 32768, 65536]


def synthetic_records(rng: np.random.Generator) -> list[dict]:
    """One eval record per run and checkpoint with per-prompt counts (200 target calls a prompt) and each prompt's
    template."""
    template_slopes = rng.normal(TRUE_SLOPE, TEMPLATE_SD, TEMPLATES)
    slopes = np.repeat(template_slopes, PER_TEMPLATE) + rng.normal(0, PROMPT_SD, TEMPLATES * PER_TEMPLATE)
    intercepts = np.repeat(rng.normal(1.5, 0.2, TEMPLATES), PER_TEMPLATE) + rng.normal(0, 0.05, len(slopes))
    ids = [f"p{i}" for i in range(len(slopes))]
    templates = [f"gsm_symbolic:{i // PER_TEMPLATE}" for i in range(len(slopes))]
    records = []
    for run in range(RUNS):
        for x in TOKENS:
            mat = (intercepts + slopes * np.log(x / TOKENS[0]) + rng.normal(0, SHOCK_SD)
                   + rng.normal(0, NOISE_SD, len(slopes)))
            records.append(dict(run_id=f"r{run}", seed=run, train_tokens=x, prompt_ids=ids, prompt_templates=templates,
                                prompt_new_tokens=list(mat * 200), prompt_target_calls=[200] * len(slopes)))
    return records


def test_the_template_unit_interval_covers_where_the_prompt_unit_one_under_covers():
    rng = np.random.default_rng(0)
    hits, widths = {"template": 0, "prompt": 0}, {"template": [], "prompt": []}
    for _ in range(REPEATS):
        records = synthetic_records(rng)
        for unit, rows in (("template", records), ("prompt", [{**r, "prompt_templates": None} for r in records])):
            units = unit_points(rows)
            fit = mean_slope(units)
            lo, hi = fit.slope_ci95
            hits[unit] += lo <= TRUE_SLOPE <= hi
            widths[unit].append(hi - lo)
            assert fit.units == TEMPLATES * PER_TEMPLATE * RUNS and fit.runs == RUNS
            assert fit.prompts == (TEMPLATES if unit == "template" else TEMPLATES * PER_TEMPLATE)
    coverage = {k: v / REPEATS for k, v in hits.items()}
    width = {k: float(np.mean(v)) for k, v in widths.items()}
    print(f"coverage of the population slope over {REPEATS} repeats, {TEMPLATES} templates x {PER_TEMPLATE} prompts x "
          f"{RUNS} runs: template as unit {coverage['template']:.2f} (mean width {width['template']:.3f}), prompt as "
          f"unit {coverage['prompt']:.2f} (mean width {width['prompt']:.3f})")
    assert 0.90 <= coverage["template"] <= 0.99
    assert coverage["prompt"] <= 0.85
    assert width["template"] > 1.5 * width["prompt"]


def test_templates_are_the_unit_only_where_every_record_names_them():
    records = synthetic_records(np.random.default_rng(1))
    keyed = unit_points(records)
    assert len(keyed) == TEMPLATES * PER_TEMPLATE * RUNS and ("gsm_symbolic:0", "r0", "p0") in keyed
    assert ("p0", "r0") in unit_points([{**records[0], "prompt_templates": None}, *records[1:]])


def test_eval_records_name_each_prompts_template(tmp_path):
    """`scylla eval` on gsm writes ``prompt_templates`` aligned with ``prompt_ids``: the templates of the prompt set
    (each in that set alone), which unit_points then takes as the units."""
    from pipeline.evaluate import EvalConfig, evaluate
    from scylla.data.prompt_sets import problem_set
    from scylla.prompts import prompt_id
    from scylla.records import read_records

    evaluate(EvalConfig(str(tmp_path), drafts=[], target="tiny-random-llama", tasks=["gsm"], temperatures=[0.0],
                        baselines=["none"], prompts=3, prompt_set="select", max_new_tokens=2, replay=True))
    (record,) = read_records(tmp_path, kind="eval")
    problems = problem_set("gsm", "select", 3)
    assert record["prompt_ids"] == [prompt_id(p.prompt) for p in problems]
    assert record["prompt_templates"] == [p.template for p in problems] == ["gsm_symbolic:4", "gsm_symbolic:16",
                                                                           "gsm_symbolic:28"]
