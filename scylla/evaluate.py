"""The evaluation stage: every draft of a run directory (and baselines) on tasks x temperatures x batch sizes.

Each measurement is online decoding by the engine and becomes one "eval" record (docs/records.md) keyed by task,
temperature, batch size and method; the speed-up is over plain decoding measured in the same call, same settings.
Finished measurements (their record exists) are skipped, so a killed evaluation resumes.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from scylla.errors import ScyllaError

TASKS = {
    "gsm": "gsm",  # reasoning-gym gsm_symbolic, seeded away from the training corpora (seed 0)
    "code": "humaneval",
}
BASELINES = ("none", "prompt-lookup")
HELD_OUT_SEED = 20261123


def task_prompts(task: str, n: int) -> list[str]:
    """n prompts of a task: GSM-style problems not drawn with the training seed, or HumanEval problems."""
    from scylla.data import load_corpus

    if task not in TASKS:
        raise ScyllaError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return list(load_corpus(TASKS[task], n, seed=HELD_OUT_SEED)["prompt"])[:n]


def _drafts(run_dir: Path) -> list[dict]:
    """Train records whose draft folder exists."""
    from scylla.records import read_records, records_path

    if not records_path(run_dir).exists():
        raise ScyllaError(f"{run_dir} has no records.jsonl: train drafts there first (scylla sweep)")
    drafts = [r for r in read_records(run_dir, kind="train") if Path(r.get("checkpoint", "")).is_dir()]
    if not drafts:
        raise ScyllaError(f"{run_dir} has no trained draft folders to evaluate")
    return drafts


def evaluate(run_dir: str | Path, tasks: list[str], temperatures: list[float], batch_sizes: list[int],
             prompts: int = 8, max_new_tokens: int = 64, num_draft_tokens: int = 2, seed: int = 0,
             device: str = "cpu", dtype: str | None = None) -> int:
    """Append eval records for every draft of ``run_dir`` and the baselines; returns how many were written."""
    from scylla.drafters.spec import drafter_from_spec
    from scylla.engine import SpeculativeDecoder
    from scylla.metrics import DecodeStats
    from scylla.models import load_model
    from scylla.prompts import encode_prompts
    from scylla.records import append_record, new_record, read_records, record_key

    run_dir = Path(run_dir)
    drafts = _drafts(run_dir)
    texts = {task: task_prompts(task, prompts) for task in tasks}
    target_name = drafts[0]["target"]
    target, tokenizer = load_model(target_name, device=device, dtype=dtype)
    done = {record_key(r) for r in read_records(run_dir, kind="eval")}
    methods = [(b, None) for b in BASELINES] + [(f"draft:{r['checkpoint']}", r) for r in drafts]
    drafters = {m: drafter_from_spec(m, target, num_draft_tokens if m.startswith("draft:") else None, device=device,
                                     dtype=dtype) for m, _ in methods}  # loaded once, reused for every setting
    written = 0
    grid = [(t, temp, b) for t in tasks for temp in temperatures for b in batch_sizes]
    for task, temperature, batch in tqdm(grid, desc="eval", unit="setting"):
        plain_tps = None
        for method, source in methods:
            fields = dict(task=task, temperature=temperature, batch_size=batch, method=method)
            base = source or dict(run_id="baseline", sweep="", drafter_type=method, draft_layers=0, draft_width=0,
                                  draft_params=0, draft_params_with_embeddings=0, train_tokens=0, data="", seed=seed)
            identity = {k: base[k] for k in ("run_id", "sweep", "drafter_type", "draft_layers", "draft_width",
                                             "draft_params", "draft_params_with_embeddings", "train_tokens", "data")}
            key = record_key(new_record("eval", **identity, target=target_name, seed=seed, **fields))
            if key in done and method != "none":
                continue
            decoder = SpeculativeDecoder(target, drafters[method])
            parts = []
            for start in range(0, len(texts[task]), batch):
                ids, mask = encode_prompts(tokenizer, texts[task][start : start + batch], device=device)
                parts.append(decoder.generate(ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                              eos_token_id=tokenizer.eos_token_id,
                                              pad_token_id=tokenizer.pad_token_id, seed=seed + start).stats)
            s = DecodeStats.merge(parts)
            if method == "none":
                plain_tps = s.tokens_per_second
            if key in done:
                continue
            metrics = dict(n_prompts=len(texts[task]), new_tokens=s.new_tokens, target_calls=s.target_calls,
                           mean_accepted_length=s.mean_accepted_length,
                           acceptance_rate=s.acceptance_rate if s.drafted else None,
                           per_position_acceptance=s.per_position_acceptance, tokens_per_second=s.tokens_per_second,
                           speedup=s.tokens_per_second / plain_tps, device=device,
                           num_draft_tokens=num_draft_tokens if method.startswith("draft:") else None)
            record = new_record("eval", **identity, target=target_name, seed=seed, **fields, **metrics)
            written += append_record(run_dir, record)
    return written
