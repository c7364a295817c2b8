"""Draft-training throughput: the DeepSpeed trainer against a plain torch loop, and the feature store's gain.

    python benchmarks/train.py                     # SmolLM2-135M target, 1-layer 256-wide head
    python benchmarks/train.py --target tiny-random-llama --steps 5 --repeats 1   # a quick smoke run

Rows (median tokens/s over --repeats interleaved rounds, each round timing every row once, in reverse order every
other round, after one untimed step of each):
- plain torch: the head, AdamW, the same objective (train.pretrain_draft.Objective), features from the store;
- deepspeed: the same through train.pretrain_draft.Trainer (deepspeed.initialize, ZeRO stage --zero);
- in-step features: the plain loop, but the target's forward runs inside every step instead of the store.
Ratios: deepspeed / plain (the trainer's overhead) and store / in-step (the per-step gain of the feature store),
each the median of its per-round paired ratios with a bootstrap 95% interval over rounds (scylla.timing).
A sweep of J heads over the same data pays the target forward once instead of J times: its gain is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scylla.timing import paired_speedup  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.pretrain_draft import (  # noqa: E402
    Objective, Trainer, block_order, build_draft, ensure_distributed_env, prepare_data,
)


def interleaved_rates(rows: dict[str, tuple], repeats: int, tokens_per_step: int) -> dict[str, list[float]]:
    """rows: name -> (step(i), steps). Tokens/s of each row per round: one warm-up call each, then ``repeats``
    rounds timing ``steps`` calls of every row, the order reversed every other round."""
    for step, _ in rows.values():
        step(0)
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(repeats):
        for name in list(rows)[:: -1 if r % 2 else 1]:
            step, steps = rows[name]
            start = time.perf_counter()
            for i in range(steps):
                step(1 + r * steps + i)
            rates[name].append(steps * tokens_per_step / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--in-step-steps", type=int, default=3, help="steps timed with the target inside")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--zero", type=int, default=0)
    parser.add_argument("--sweep-heads", type=int, default=4, help="heads per sweep, for the sweep-level gain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import deepspeed

    from scylla.atomic import write_json_atomic
    from train.features import build_feature_store
    from scylla.models import load_model

    tmp = Path(tempfile.mkdtemp(prefix="scylla-bench-train-"))
    cfg = TrainConfig.from_dict({
        "run_dir": str(tmp), "target": args.target, "layers": args.layers, "width": args.width,
        "zero_stage": args.zero, "wandb": "disabled", "milestones": [16 * args.batch_blocks * args.block_size],
        "data": {"source": "gsm", "examples": args.examples, "block_size": args.block_size},
        "optim": {"batch_blocks": args.batch_blocks},
    })
    ensure_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo")
    target, tokenizer = load_model(args.target)
    for p in target.parameters():
        p.requires_grad_(False)
    data = prepare_data(cfg, tokenizer, int(target.get_output_embeddings().weight.shape[0]))
    start = time.perf_counter()
    store = build_feature_store(tmp / "features", target, data.train, list(cfg.feature_layers))
    store_seconds = time.perf_counter() - start
    objective = Objective(cfg, target, data, store)
    tokens_per_step = args.batch_blocks * args.block_size
    n = len(data.train)

    def batch(i: int):
        return objective.batch(block_order(n, i * args.batch_blocks, args.batch_blocks, 0))

    head = build_draft(cfg, target, data)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3)

    def plain_step(i: int, in_step: bool = False) -> None:
        tokens, feats = batch(i)
        if in_step:
            with torch.no_grad():
                hs = target(tokens, output_hidden_states=True).hidden_states
            feats = torch.cat([hs[k] for k in cfg.feature_layers], dim=-1)
        loss, _ = objective(head, tokens, feats)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    trainer = Trainer(cfg, build_draft(cfg, target, data), world=1, rank=0)

    def deepspeed_step(i: int) -> None:
        tokens, feats = batch(i)
        loss, _ = objective(trainer.engine, tokens, feats)
        trainer.engine.backward(loss)
        trainer.engine.step()

    rates = interleaved_rates({
        "plain torch (feature store)": (plain_step, args.steps),
        f"deepspeed ZeRO-{args.zero} (feature store)": (deepspeed_step, args.steps),
        "plain torch (target forward in each step)": (lambda i: plain_step(i, True), args.in_step_steps),
    }, args.repeats, tokens_per_step)
    rows = {name: statistics.median(r) for name, r in rates.items()}
    plain, _, in_step = rows.values()
    plain_rates, ds_rates, in_step_rates = rates.values()
    paired = {name: paired_speedup([[a / b for a, b in zip(over, under)]])  # one chunk: the interval is over rounds
              for name, over, under in (("deepspeed_over_plain", ds_rates, plain_rates),
                                        ("store_over_in_step", plain_rates, in_step_rates))}
    store_rate = len(data.train) * args.block_size / store_seconds
    # One sweep of J heads, each trained on T tokens: store once (its unique tokens) + J x T at the store rate,
    # against J x T at the in-step rate. Reported per unique-token epoch (T = the store's tokens).
    T, J = len(data.train) * args.block_size, args.sweep_heads
    sweep_gain = (J * T / in_step) / (T / store_rate + J * T / plain)
    ratios = {**{name: p.median for name, p in paired.items()}, f"sweep_of_{J}_heads_gain": sweep_gain}
    print(f"target {args.target}, head {args.layers} layer(s) x {args.width}, {tokens_per_step} tokens/step, "
          f"{args.threads} threads; feature store: {T} tokens in {store_seconds:.1f}s ({store_rate:.0f} tokens/s)")
    print("\n| trainer | tokens/s |\n|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.0f} |")
    print("\n| ratio | value |\n|---|---|")
    for name, value in ratios.items():
        print(f"| {name} | {paired[name].describe() if name in paired else f'{value:.2f}'} |")
    write_json_atomic(args.json, {"args": vars(args), "tokens_per_second": rows, "rates_per_round": rates,
                                  "ratios": ratios, "ratios_ci95": {n: list(p.ci95) for n, p in paired.items()},
                                  "store_seconds": store_seconds})
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
