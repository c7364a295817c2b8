"""Write synthetic eval records with a known law into a run folder, to try `scylla fit` without training anything.

    python docs/examples/synthetic_records.py runs/synthetic

MAT = a + b ln(train_tokens) + noise, with b = 0.05 for 1-layer and 0.08 for 2-layer drafts, 2 seeds per depth,
6 token counts from 2^14 to 2^19, Gaussian noise of sd 0.02 (seeded): the fit should find those slopes.
"""

from __future__ import annotations

import sys

import numpy as np

from scylla.records import append_record, new_record

LAWS = {1: (1.0, 0.05), 2: (0.9, 0.08)}  # draft_layers: (intercept a, slope b)


def main(run_dir: str) -> None:
    rng = np.random.default_rng(0)
    for layers, (a, b) in LAWS.items():
        for seed in (0, 1):
            for tokens in 2 ** np.arange(14, 20):
                mat = a + b * np.log(tokens) + rng.normal(0.0, 0.02)
                append_record(run_dir, new_record(
                    "eval", run_id=f"eagle-L{layers}-s{seed}", sweep="synthetic", target="synthetic",
                    drafter_type="eagle", draft_layers=layers, draft_width=64, draft_params=0,
                    draft_params_with_embeddings=0, train_tokens=int(tokens), data="synthetic", seed=seed,
                    task="gsm", temperature=0.0, batch_size=1, method=f"eagle-L{layers}-s{seed}",
                    draft_shape="chain:3", mode="replay", mean_accepted_length=float(mat)))
    print(f"wrote 24 eval records to {run_dir}/records.jsonl")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
