"""Shared fixtures: tiny Llama models built in-process (no hub, no network).

The shared ``target`` is trained for a few seconds on a task that only a position-aware model can solve (the next
token is a fixed permutation of the token LAG places back), so its predictions depend sharply on positions and on
which token sits in which cache column: a test target that ignores positions or cache order cannot catch bugs in
tree positions or cache reordering (tests/mutations.md). Random ``tiny_llama`` models stay for drafts and for the
chi-square tests, which need flat distributions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Every stage's default dtype is pinned to float32 (scylla.dtypes: bfloat16 on CPUs with bf16 units), so that the exact
# greedy-identity tests stay exact; the bf16 tests (tests/test_bf16.py) ask for bfloat16 by name.
os.environ.setdefault("SCYLLA_DTYPE", "float32")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# The CLI's default threads follow the load (scylla/threads.py); the suite's own load would lower them from test to
# test, so the tests keep torch's default.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

torch.set_num_threads(2)


def tiny_llama(vocab_size: int = 64, layers: int = 3, hidden: int = 32, seed: int = 0, peak: float = 1.0):
    """A random Llama; peak > 1 scales the LM head so logits are peaked (greedy ties become negligible)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(peak)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


LAG = 3  # the positional task: x_t = PERMUTATION[x_{t-LAG}] over tokens 1..63 (0 is left for padding)


def short_cycle_permutation(seed: int = 0) -> torch.Tensor:
    """A random permutation of 1..63 made of cycles of 2-5 tokens (0 maps to itself), so that continuations repeat
    within a few dozen tokens and prompt lookup or suffix drafts get accepted."""
    order = (torch.randperm(63, generator=torch.Generator().manual_seed(seed)) + 1).tolist()
    perm, start, k = list(range(64)), 0, 0
    while start < len(order):
        cycle = order[start : start + 2 + k % 4]
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            perm[a] = b
        start, k = start + len(cycle), k + 1
    return torch.tensor(perm)


PERMUTATION = short_cycle_permutation()


def lag_sequences(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(n, length) sequences of the positional task: LAG random tokens, then x_t = PERMUTATION[x_{t-LAG}]."""
    x = torch.zeros(n, length, dtype=torch.long)
    x[:, :LAG] = torch.randint(1, 64, (n, LAG), generator=generator)
    for t in range(LAG, length):
        x[:, t] = PERMUTATION[x[:, t - LAG]]
    return x


def positional_llama(steps: int = 300, hidden: int = 64, layers: int = 2) -> LlamaForCausalLM:
    """A tiny Llama trained on the positional task until it solves it (about 5 s on 2 cores).

    Shifting the positions of the last 4 tokens by one flips about half of its argmaxes (a random tiny Llama: none),
    and its top-1 margins are several logits wide, so greedy ties do not occur."""
    return train_positional(tiny_llama(vocab_size=64, layers=layers, hidden=hidden, seed=0), steps)


def train_positional(model: torch.nn.Module, steps: int = 300) -> torch.nn.Module:
    """Train a tiny causal LM (vocabulary 64) on the positional task; returns it in eval mode, frozen."""
    model.train()
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x = lag_sequences(32, 40, generator)
        logits = model(x[:, :-1]).logits[:, LAG - 1 :]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), x[:, LAG:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def target():
    return positional_llama()


ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"


def sweep_process(run_dir: Path, grid: Path = SMOKE, **popen) -> subprocess.Popen:
    """`scylla sweep GRID --run-dir RUN_DIR` in a new process (the real DeepSpeed launch), its output piped."""
    argv = [sys.executable, "-m", "pipeline.cli", "sweep", str(grid), "--run-dir", str(run_dir)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory) -> Path:
    """The smoke grid swept once per session (about 35 s: 2 DeepSpeed jobs); tests work on copies of it
    (tests/test_sweep.py's smoke_run, the demo's training stage), never on this folder."""
    run_dir = tmp_path_factory.mktemp("smoke")
    shared = set(Path("/dev/shm").glob("deepspeed_*"))
    proc = sweep_process(run_dir)
    out, _ = proc.communicate(timeout=480)
    assert proc.returncode == 0, out[-3000:]
    # the terminal: one bar and a line per job; DeepSpeed's and wandb's output goes to each job's train.log
    assert "finished eagle-layers2" in out and not any(s in out for s in ("[INFO]", "wandb:", "Traceback")), out
    # DeepSpeed's CPU all-reduce buffers (67 MB a process) are removed after each job, not left in /dev/shm
    assert not set(Path("/dev/shm").glob("deepspeed_*")) - shared
    return run_dir
