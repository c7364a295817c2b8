"""How far bf16 speculative greedy output is from the bf16 target's own argmax: the measurement behind the near-tie
tolerance of scylla.lossless.

    python benchmarks/lossless_bf16.py --head runs/demo/jobs/eagle-layers1-seed0/tokens-65536

Decodes --prompts GSM-style prompts (the fit set) x --max-new-tokens greedily in bfloat16 with plain decoding, the
head as a chain and as a tree, and prompt lookup, then scores every emitted token by one forward over the emitted
sequence in bf16 (scylla.lossless.greedy_gaps): the gap is the largest logit minus the emitted token's, in logits and
in bf16 units in the last place at the largest logit. Prints, per drafter, the tokens checked, how many are not the
argmax, the largest gap, and the tokens beyond the tolerance (scylla.lossless.NEAR_TIE_UNITS units): 0 is lossless.
Plain decoding is a row too: a one-token step and a forward over the whole sequence round differently as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scylla.data.prompt_sets import problem_set  # noqa: E402
from scylla.drafters.spec import drafter_from_spec  # noqa: E402
from scylla.drafters.tree import parse_tree  # noqa: E402
from scylla.engine import SpeculativeDecoder  # noqa: E402
from scylla.lossless import NEAR_TIE_UNITS, bf16_unit, greedy_gaps  # noqa: E402
from scylla.models import load_model  # noqa: E402
from scylla.prompts import encode_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--head", help="a trained head folder (its chain:3 and tree 3/3/8 rows)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, tokenizer = load_model(args.target, dtype="bfloat16")
    drafters = {"plain": "none", "prompt lookup": "prompt-lookup"}
    if args.head:
        drafters.update({"head chain:3": f"draft:{args.head}", "head tree 3/3/8": f"draft:{args.head}"})
    texts = [p.prompt for p in problem_set("gsm", "fit", args.prompts)]
    print(f"{args.target} in bfloat16, {args.prompts} prompts x {args.max_new_tokens} new tokens, batch 4, tolerance "
          f"{NEAR_TIE_UNITS} bf16 units\n")
    print("| drafter | tokens checked | not the argmax | largest gap (logits) | largest gap (bf16 units) | beyond the "
          "tolerance |\n|---|---|---|---|---|---|")
    for name, spec in drafters.items():
        tree = parse_tree("top_k=3,depth=3,total_tokens=8") if "tree" in name else None
        drafter = drafter_from_spec(spec, target, 3 if "chain" in name else None, tree=tree, dtype="bfloat16")
        prompts, generated = [], []
        for start in range(0, len(texts), 4):
            ids, mask = encode_prompts(tokenizer, texts[start : start + 4])
            out = SpeculativeDecoder(target, drafter).generate(ids, mask, max_new_tokens=args.max_new_tokens,
                                                               eos_token_id=tokenizer.eos_token_id,
                                                               pad_token_id=tokenizer.pad_token_id)
            prompts += [row[m.bool()].tolist() for row, m in zip(ids, mask)]
            generated += out.generated
        gaps = greedy_gaps(target, prompts, generated)
        units = [g / bf16_unit(t) for gs, ts in gaps for g, t in zip(gs.tolist(), ts.tolist())]
        flat = torch.cat([g for g, _ in gaps])
        print(f"| {name} | {len(flat)} | {int((flat > 0).sum())} | {float(flat.max()):.3f} | {max(units):.1f} | "
              f"{sum(u > NEAR_TIE_UNITS for u in units)} |")


if __name__ == "__main__":
    main()
