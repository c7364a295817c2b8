"""One training job's settings: a plain YAML file, checked before anything loads or launches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from scylla.config import Config
from scylla.drafters.eagle import LAYOUTS

UNHASHED = ("run_dir", "run_id", "wandb")  # where a job writes and logs, not what it trains

DRAFTERS = ("eagle", "draft-lm")
LOSSES = ("ce", "kl")
SCHEDULES = ("wsd", "separate")
MIN_STEPS = 10  # steps at the smallest milestone


@dataclass
class DataConfig(Config):
    source: str = "gsm"  # see scylla.data.load_corpus: gsm, rg:TASK, humaneval, jsonl:PATH, ... joined with '+'
    examples: int = 2000
    heldout: float = 0.1
    block_size: int = 256
    chat: bool = True
    onpolicy: bool = False  # replace responses by the target's own greedy ones (cached under RUN_DIR/data)
    onpolicy_max_new_tokens: int = 128
    allow_repeats: bool = True  # false: refuse a top milestone beyond the unique training tokens (epochs > 1)

    def validate(self) -> None:
        self.require(self.examples >= 1, "examples", f"must be >= 1, got {self.examples}")
        self.require(self.block_size >= 8, "block_size", f"must be >= 8, got {self.block_size}")
        self.require(0 < self.heldout < 1, "heldout", f"must be a fraction in (0, 1), got {self.heldout}")


@dataclass
class OptimConfig(Config):
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_blocks: int = 4  # blocks per optimizer step (per process)
    warmup_tokens: int = 0  # 0: 10% of the smallest milestone's steps (at least 1)
    cooldown: float = 0.2  # each milestone's branch decays the LR to 0 over this fraction of its steps (>= 2 steps)
    loss: str = "ce"  # ce: next token; kl: the target's next-token distribution over the draft vocabulary, counted
    # where the target's top token is in it (EAGLE-3)
    feature_weight: float = 0.0  # weight of the feature-regression term (h_t vs the next feature); 0 (EAGLE-3, and
    # no measurable effect in docs/training.md's ablation) drops it
    grad_clip: float = 1.0

    def validate(self) -> None:
        self.require(self.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        self.require(0.2 <= self.cooldown < 0.5, "cooldown", f"must be in [0.2, 0.5): at least a fifth of each "
                     f"milestone's steps, and branches must not overlap; got {self.cooldown}")
        self.require(self.warmup_tokens >= 0, "warmup_tokens", f"must be >= 0, got {self.warmup_tokens}")
        self.require(self.batch_blocks >= 1, "batch_blocks", f"must be >= 1, got {self.batch_blocks}")


@dataclass
class EvalConfig(Config):
    prompts: int = 4
    max_new_tokens: int = 48
    num_draft_tokens: int = 4


@dataclass
class TrainConfig(Config):
    """A single draft-training run; `scylla sweep` writes one per grid point."""

    run_dir: str
    target: str
    drafter: str = "eagle"
    layers: int = 1
    width: int = 0  # 0: the target's hidden size (eagle); draft-lm needs a width
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    layout: str = "eagle"  # eagle heads: eagle (fuse, in_proj, standard layers) or eagle3 (EAGLE-3's first layer)
    unroll: int = 0  # training-time test: steps a head is unrolled on its own features (train/unroll.py); 1: off;
    # 0: 2 for eagle heads (the ablation of docs/training.md: positions 2+ accepted 3-6x as often; 1.75x K=4's speed)
    # and 1 for draft LMs
    unroll_decay: float = 0.8  # step i's loss weighs unroll_decay**i (the weights are normalised to sum to 1)
    draft_vocab: int = 4096  # 0: the whole target vocabulary
    milestones: list[int] = field(default_factory=lambda: [2**14, 2**15, 2**16])
    schedule: str = "wsd"
    seed: int = 0
    run_id: str = ""
    sweep: str = ""
    zero_stage: int = 0
    processes: int = 1  # the job's world size (deepspeed processes); the sweep sets it from its grid
    device: str = "cpu"
    dtype: str = ""  # "": scylla.dtypes.default_dtype (bfloat16 on CUDA and on CPUs with bf16 units, else float32)
    feature_cache: str = ""  # "": RUN_DIR/features
    wandb: str = "offline"  # offline | online | disabled
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        require = self.require
        require(self.drafter in DRAFTERS, "drafter", f"must be one of {', '.join(DRAFTERS)}, got {self.drafter!r}")
        require(self.layers >= 1, "layers", f"must be >= 1, got {self.layers}")
        require(self.width >= 0, "width", f"must be >= 0 (0 = the target's), got {self.width}")
        require(self.layout in LAYOUTS, "layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.unroll == 0:
            self.unroll = 2 if self.drafter == "eagle" else 1
        require(self.unroll >= 1, "unroll", f"must be >= 0 (1: no training-time test, 0: default), got {self.unroll}")
        require(self.drafter == "eagle" or self.unroll == 1, "unroll", "training-time test is for eagle heads")
        require(0 < self.unroll_decay <= 1, "unroll_decay", f"must be in (0, 1], got {self.unroll_decay}")
        require(self.drafter != "draft-lm" or self.width > 0, "width", "a draft-lm needs a width (its hidden size)")
        require(self.drafter != "draft-lm" or self.optim.loss == "ce", "optim.loss",
                "kl is for eagle heads; draft LMs train with ce")
        require(self.processes >= 1, "processes", f"must be >= 1, got {self.processes}")  # before tokens_per_step
        require(bool(self.milestones) and all(m > 0 for m in self.milestones), "milestones",
                f"must list positive token counts, got {self.milestones}")
        require(list(self.milestones) == sorted(set(self.milestones)), "milestones",
                f"must be increasing, got {self.milestones}")
        bad = [m for m in self.milestones if m % self.tokens_per_step]
        require(not bad, "milestones", f"{bad[0] if bad else 0} is not a multiple of the tokens per step "
                f"({self.tokens_per_step} = optim.batch_blocks x data.block_size x processes)")
        smallest = self.milestones[0] // self.tokens_per_step
        require(smallest >= MIN_STEPS, "milestones", f"the smallest, {self.milestones[0]} tokens, is {smallest} steps "
                f"of {self.tokens_per_step} tokens: it needs >= {MIN_STEPS} steps for its warmup and cool-down; lower "
                "optim.batch_blocks or data.block_size")
        require(self.warmup_steps <= max(1, smallest // 10), "optim.warmup_tokens", f"{self.optim.warmup_tokens} "
                f"tokens is {self.warmup_steps} steps, over 10% of the smallest milestone's {smallest} steps; use 0 "
                "(automatic) or fewer")
        require(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0-3, got {self.zero_stage}")
        require(self.wandb in ("offline", "online", "disabled"), "wandb",
                f"must be offline, online or disabled, got {self.wandb!r}")
        if not self.run_id:
            self.run_id = f"{self.drafter}-L{self.layers}-w{self.width}-s{self.seed}"

    @property
    def warmup_steps(self) -> int:
        """optim.warmup_tokens in steps, or (0) 10% of the smallest milestone's steps; at least 1."""
        if self.optim.warmup_tokens:
            return max(1, self.optim.warmup_tokens // self.tokens_per_step)
        return max(1, self.milestones[0] // self.tokens_per_step // 10)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all processes."""
        return self.optim.batch_blocks * self.data.block_size * self.processes

    def settings(self) -> dict:
        """Every setting that shapes the trained draft: the resolved config less where it is written and logged."""
        return {k: v for k, v in self.to_dict().items() if k not in UNHASHED}

    def config_hash(self) -> str:
        """12 hex digits of a hash of ``settings()``: equal hashes, equal training."""
        return hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def job_dir(self) -> Path:
        return self.run_path / "jobs" / self.run_id
