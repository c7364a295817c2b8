"""Throughput of each stage of the study in bfloat16 against float32, the same job in both, interleaved.

    python benchmarks/dtypes.py                              # SmolLM2-135M, the demo's head (1 layer, 256 wide)
    python benchmarks/dtypes.py --target tiny-random-llama --steps 2 --repeats 1   # a quick smoke run

Stages (tokens/s, median over --repeats interleaved rounds, each round timing every stage in both dtypes once, in
reverse order every other round, after one untimed call of each):
- target features: the target's body over --batch-blocks blocks of --block-size tokens (train/features.py's pass);
- on-policy generation: plain batched greedy decoding of --gen-prompts GSM-style prompts, --gen-tokens new tokens
  (train/data/onpolicy.py's pass);
- head training: DeepSpeed steps of the head (train.pretrain_draft.Trainer, ZeRO 0; bf16: DeepSpeed's bf16 mode,
  whose optimizer keeps float32 master weights) on the target's features of the same dtype.
Ratio: bf16 / fp32 tokens/s, the median of per-round paired ratios with a bootstrap 95% interval over rounds
(scylla.timing). The CPU's capability (scylla.dtypes) is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.train import interleaved_rates  # noqa: E402
from scylla.timing import paired_speedup  # noqa: E402

DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-blocks", type=int, default=2, help="blocks per training step and feature call")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="training steps and feature calls per round")
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "dtypes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")

    import deepspeed

    from scylla.atomic import write_json_atomic
    from scylla.data.prompt_sets import problem_set
    from scylla.dtypes import cpu_capability
    from scylla.engine import SpeculativeDecoder
    from scylla.models import load_model
    from scylla.prompts import encode_prompts
    from train.config import TrainConfig
    from train.pretrain_draft import Objective, Trainer, block_order, build_draft, ensure_distributed_env, prepare_data

    ensure_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo")
    tmp = Path(tempfile.mkdtemp(prefix="scylla-bench-dtypes-"))
    tokens_per_call = args.batch_blocks * args.block_size
    prompts = [p.prompt for p in problem_set("gsm", "fit", args.gen_prompts)]
    rows: dict[str, tuple] = {}
    for dtype in DTYPES:
        cfg = TrainConfig.from_dict({
            "run_dir": str(tmp), "target": args.target, "layers": args.layers, "width": args.width, "dtype": dtype,
            "wandb": "disabled", "milestones": [16 * tokens_per_call],
            "data": {"source": "gsm", "examples": 120, "block_size": args.block_size},
            "optim": {"batch_blocks": args.batch_blocks},
        })
        target, tokenizer = load_model(args.target, dtype=dtype)
        for p in target.parameters():
            p.requires_grad_(False)
        data = prepare_data(cfg, tokenizer, int(target.get_output_embeddings().weight.shape[0]))
        body, n = target.base_model, len(data.train)
        blocks = [data.train[block_order(n, i * args.batch_blocks, args.batch_blocks, 0)]
                  for i in range(args.steps * args.repeats + 1)]
        with torch.inference_mode():  # the head's inputs, computed once: the training rows time the head alone
            feats = [torch.cat([body(b, output_hidden_states=True).hidden_states[k] for k in cfg.feature_layers], -1)
                     for b in blocks]
        objective = Objective(cfg, target, data)
        trainer = Trainer(cfg, build_draft(cfg, target, data), world=1, rank=0)
        ids, mask = encode_prompts(tokenizer, prompts)
        decoder = SpeculativeDecoder(target)

        def features(i: int, body=body, blocks=blocks) -> None:
            with torch.inference_mode():
                body(blocks[i], output_hidden_states=True)

        def train_step(i: int, trainer=trainer, objective=objective, blocks=blocks, feats=feats) -> None:
            loss, _ = objective(trainer.engine, blocks[i], feats[i])
            trainer.engine.backward(loss)
            trainer.engine.step()

        def generate(_i: int, decoder=decoder, ids=ids, mask=mask, eos=tokenizer.eos_token_id,
                     pad=tokenizer.pad_token_id) -> None:
            decoder.generate(ids, mask, max_new_tokens=args.gen_tokens, eos_token_id=eos, pad_token_id=pad)

        rows[f"target features|{dtype}"] = (features, args.steps)
        rows[f"head training (DeepSpeed)|{dtype}"] = (train_step, args.steps)
        rows[f"on-policy generation|{dtype}"] = (generate, 1)
    # on-policy generation's tokens per call differ (a batch of prompts, new tokens only): rescaled below
    rates = interleaved_rates(rows, args.repeats, tokens_per_call)
    gen_tokens = args.gen_prompts * args.gen_tokens  # an upper bound: rows that stop at EOS generate fewer
    for name in rates:
        if name.startswith("on-policy"):
            rates[name] = [r * gen_tokens / tokens_per_call for r in rates[name]]
    stages = list(dict.fromkeys(name.split("|")[0] for name in rows))
    table = {}
    print(f"target {args.target} (packaged targets: 4-bit GGUF de-quantised), head {args.layers} layer(s) x "
          f"{args.width}, {args.threads} threads, CPU {cpu_capability()}, {args.repeats} interleaved rounds\n")
    print("| stage | float32 tokens/s | bfloat16 tokens/s | bf16 / fp32 [95% CI] |\n|---|---|---|---|")
    for stage in stages:
        fp32, bf16 = rates[f"{stage}|float32"], rates[f"{stage}|bfloat16"]
        ratio = paired_speedup([[b / f for b, f in zip(bf16, fp32)]])  # one chunk: the interval is over rounds
        table[stage] = dict(float32=statistics.median(fp32), bfloat16=statistics.median(bf16), ratio=ratio.median,
                            ratio_ci95=list(ratio.ci95))
        print(f"| {stage} | {table[stage]['float32']:.0f} | {table[stage]['bfloat16']:.0f} | {ratio.describe()} |")
    write_json_atomic(args.json, {"args": vars(args), "cpu_capability": cpu_capability(), "stages": table,
                                  "rates_per_round": rates})
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
