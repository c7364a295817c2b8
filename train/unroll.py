"""Training-time test (EAGLE-3, Li et al. 2025): a head unrolled K steps in training, as it drafts at inference.

Pairs sit at positions q = 0..n-1; pair q of step 0 is (f_q, x_{q+1}), the target's feature and the next token.
Step i > 0 puts at position q the pair (h^{i-1}_{q-1}, x_{q+1}): the head's own output one position back, as when
drafting token i+1 after the real text ends at anchor a = q - i. Its query sees what the drafter's cache holds
then: step 0's keys at positions <= a (real features) and step j's key at position a + j for j = 1..i (its own
earlier drafts, itself included); its rotary position is q. So step i's logits at position q are the drafter's
(i+1)-th draft logits after the prefix x_0..x_{q-i}, when the drafts were x_{q-i+1}..x_{q+1}. Positions q < i have
no anchor: their outputs are padding that no valid position sees.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import DynamicCache


def unroll_mask(n: int, step: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask (1, 1, n, (step+1)*n) of step ``step``'s queries over the keys of steps 0..step."""
    q = torch.arange(n, device=device)[:, None]
    p = torch.arange(n, device=device)[None, :]
    seen = torch.cat([p <= q - step] + [p == q - step + j for j in range(1, step + 1)], dim=1)
    return torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill(~seen, torch.finfo(dtype).min)[None, None]


def unrolled_forward(head: torch.nn.Module, input_ids: torch.Tensor, features: torch.Tensor,
                     steps: int) -> list[SimpleNamespace]:
    """The head unrolled ``steps`` steps over pairs (features (B, n, F), input_ids (B, n)); returns one output per
    step, each with .logits (B, n, V_d) and .hidden_states (B, n, width). Gradients flow through the fed-back h."""
    B, n = input_ids.shape
    config = getattr(head, "module", head).config  # the DeepSpeed engine wraps the head
    cache = DynamicCache(config=config)
    dtype = next(head.parameters()).dtype
    positions = torch.arange(n, device=input_ids.device)[None].expand(B, n)
    outputs = []
    for step in range(steps):
        mask = unroll_mask(n, step, dtype, input_ids.device).expand(B, -1, -1, -1)
        if step == 0:
            inputs = {"features": features}
        else:
            h = outputs[-1].hidden_states
            inputs = {"own_features": torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)}
        outputs.append(head(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                            use_cache=True, **inputs))
    return outputs
