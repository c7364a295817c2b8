"""What lossless greedy decoding means in each dtype, and the check of it.

In float32 speculative greedy output equals the target's own greedy output token for token (tests/
test_greedy_identity.py). In bfloat16 it cannot, in general: a forward over k new tokens and k forwards of one token
round differently, so where two tokens' logits are within a rounding of each other (a near-tie) either may come out
on top, and from there the texts differ. The rule in bf16, as vLLM and SGLang users expect it: every emitted token is
the argmax of the target's logits at its position, computed by one forward over the emitted sequence in the same dtype,
or within ``tolerance(max logit)`` of it. Every position is checked, not only the first difference.

The tolerance is stated in bf16 units: NEAR_TIE_UNITS units in the last place of bf16 at the magnitude of the
position's largest logit (bf16 keeps 8 significant bits, so one unit is 2^-7 of the leading power of two: 0.125 for
logits in [16, 32)). Measured on SmolLM2-135M (benchmarks/lossless_bf16.py; docs/benchmarks.md, "Lossless in bf16"),
about 1% of the emitted tokens are not the argmax, plain decoding's too, and the largest gap was 2 units; a position
or cache bug moves emitted tokens by whole logits (tests/test_bf16.py sees it).
"""

from __future__ import annotations

import math

import torch

NEAR_TIE_UNITS = 4  # bf16 units in the last place at the largest logit's magnitude


def bf16_unit(value: float) -> float:
    """One bf16 unit in the last place at ``value``'s magnitude: 2^(floor(log2 |value|) - 7)."""
    return 2.0 ** (math.floor(math.log2(max(abs(value), 2.0**-126))) - 7)


def tolerance(max_logit: float, dtype: torch.dtype) -> float:
    """How far below the largest logit an emitted token's logit may be: 0 in float32 (exact), NEAR_TIE_UNITS bf16
    units in bfloat16 (and float16)."""
    return 0.0 if dtype == torch.float32 else NEAR_TIE_UNITS * bf16_unit(max_logit)


@torch.inference_mode()
def greedy_gaps(target: torch.nn.Module, prompts: list[list[int]],
                generated: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, (gaps, tops): the gap of each emitted token under the target's own logits (max logit - the emitted
    token's logit; 0 where it is the argmax) and that max logit, from one forward over prompt + emitted tokens in the
    target's dtype. A row of N emitted tokens gives two (N,) float32 tensors."""
    device = next(target.parameters()).device
    out = []
    for prompt, tokens in zip(prompts, generated):
        ids = torch.tensor([list(prompt) + list(tokens)], device=device)
        logits = target(ids).logits[0, len(prompt) - 1 : -1].float()  # (N, V): the logits each token was chosen by
        chosen = logits.gather(1, torch.tensor(list(tokens), dtype=torch.long, device=device)[:, None])[:, 0]
        top = logits.amax(-1)
        out.append(((top - chosen).cpu(), top.cpu()))
    return out


def greedy_violations(target: torch.nn.Module, prompts: list[list[int]],
                      generated: list[list[int]]) -> list[tuple[int, int, float, float]]:
    """The emitted tokens that break the greedy rule of this module: (row, position, gap, tolerance) for every token
    whose gap exceeds the tolerance of the target's dtype at its largest logit. Empty: lossless."""
    dtype = next(target.parameters()).dtype
    rows = [(r, p, tokens) for r, (p, tokens) in enumerate(zip(prompts, generated)) if tokens]
    found = greedy_gaps(target, [p for _, p, _ in rows], [t for _, _, t in rows])
    return [(row, pos, gap, tolerance(top, dtype))
            for (row, _, _), (gaps, tops) in zip(rows, found)
            for pos, (gap, top) in enumerate(zip(gaps.tolist(), tops.tolist())) if gap > tolerance(top, dtype)]
