"""One training job's settings: a plain YAML file, checked before anything loads or launches."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from scylla.errors import ScyllaError

DRAFTERS = ("eagle", "draft-lm")
LOSSES = ("ce", "kl")
SCHEDULES = ("wsd", "separate")


@dataclass
class DataConfig:
    source: str = "gsm"  # see scylla.data.load_corpus: gsm, rg:TASK, humaneval, jsonl:PATH, ... joined with '+'
    examples: int = 2000
    heldout: float = 0.1
    block_size: int = 256
    chat: bool = True
    onpolicy: bool = False  # replace responses by the target's own greedy ones (cached under RUN_DIR/data)
    onpolicy_max_new_tokens: int = 128


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_blocks: int = 8  # blocks per optimizer step (per process)
    warmup_tokens: int = 4096
    cooldown: float = 0.2  # WSD: each milestone's branch decays the LR over this fraction of its tokens
    loss: str = "ce"  # ce: next token; kl: the target's next-token distribution over the draft vocabulary
    feature_weight: float = 0.1  # weight of the feature-regression term (h_t vs the next feature)
    grad_clip: float = 1.0


@dataclass
class EvalConfig:
    prompts: int = 4
    max_new_tokens: int = 48
    num_draft_tokens: int = 4


@dataclass
class TrainConfig:
    """A single draft-training run; `scylla sweep` writes one per grid point."""

    run_dir: str
    target: str
    drafter: str = "eagle"
    layers: int = 1
    width: int = 0  # 0: the target's hidden size (eagle); draft-lm needs a width
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    draft_vocab: int = 4096  # 0: the whole target vocabulary
    milestones: list[int] = field(default_factory=lambda: [2**14, 2**15, 2**16])
    schedule: str = "wsd"
    seed: int = 0
    run_id: str = ""
    sweep: str = ""
    zero_stage: int = 0
    device: str = "cpu"
    dtype: str = ""  # "": float32 on CPU, bfloat16 on CUDA
    feature_cache: str = ""  # "": RUN_DIR/features
    wandb: str = "offline"  # offline | online | disabled
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check = [
            (self.drafter in DRAFTERS, f"drafter must be one of {', '.join(DRAFTERS)}, got {self.drafter!r}"),
            (self.layers >= 1, f"layers must be >= 1, got {self.layers}"),
            (self.width >= 0, f"width must be >= 0 (0 = the target's), got {self.width}"),
            (self.drafter != "draft-lm" or self.width > 0, "a draft-lm needs a width (its hidden size)"),
            (bool(self.milestones), "milestones must list at least one token count"),
            (all(int(m) > 0 for m in self.milestones), "milestones must be positive token counts"),
            (list(self.milestones) == sorted(set(self.milestones)), "milestones must be increasing"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.optim.loss in LOSSES, f"optim.loss must be one of {', '.join(LOSSES)}, got {self.optim.loss!r}"),
            (0 <= self.optim.cooldown < 0.5, "optim.cooldown must be in [0, 0.5) so branches do not overlap"),
            (self.zero_stage in (0, 1, 2, 3), f"zero_stage must be 0-3, got {self.zero_stage}"),
            (self.wandb in ("offline", "online", "disabled"), "wandb must be offline, online or disabled"),
            (self.data.block_size >= 8, "data.block_size must be >= 8"),
            (0 < self.data.heldout < 1, "data.heldout must be a fraction in (0, 1)"),
        ]
        for ok, message in check:
            if not ok:
                raise ScyllaError(message)
        if not self.run_id:
            self.run_id = f"{self.drafter}-L{self.layers}-w{self.width}-s{self.seed}"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def job_dir(self) -> Path:
        return self.run_path / "jobs" / self.run_id

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ScyllaError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ScyllaError(f"unknown key {unknown[0]!r} in {where}; known keys: {', '.join(known)}")
    kwargs = {}
    for name, value in raw.items():
        sub = {"data": DataConfig, "optim": OptimConfig, "eval": EvalConfig}.get(name) if cls is TrainConfig else None
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ScyllaError(f"{where}: {err}") from None


def config_from_dict(raw: dict, where: str = "config") -> TrainConfig:
    return _build(TrainConfig, raw, where)


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ScyllaError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScyllaError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return config_from_dict(raw or {}, str(path))
