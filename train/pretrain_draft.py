"""Train one draft (an EAGLE-style head or a small draft LM) with DeepSpeed, checkpointing at token milestones.

    deepspeed --module train.pretrain_draft --config JOB.yaml   # through the launcher (any number of processes)
    python -m train.pretrain_draft --config JOB.yaml            # one process, no launcher (sets the env itself)

Each milestone N yields a self-contained draft folder RUN_DIR/jobs/RUN_ID/tokens-N (weights, config, card), a
quick held-out acceptance measurement with the engine, and one "train" record in RUN_DIR/records.jsonl. The LR plan
(train/schedule.py) makes each checkpoint a fair "trained on N tokens" point. A killed run resumes from its last
stable checkpoint; finished milestones (record written and folder present) are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from scylla.atomic import atomic_folder
from scylla.drafters import DraftModel, EagleDrafter
from scylla.drafters.eagle import EagleConfig, EagleHead
from scylla.dtypes import cpu_capability, dtype_name
from scylla.engine import SpeculativeDecoder
from scylla.errors import ConfigError, InputError, ScyllaError
from scylla.models import load_model, target_quantization
from scylla.ports import free_port
from scylla.prompts import encode_prompts
from scylla.records import append_record, new_record, read_records
from scylla.threads import use_threads
from train.config import TrainConfig
from train.data import (draft_vocabulary, heldout_prompts, load_corpus, onpolicy_cache, pack_blocks,
                        regenerate_responses, split_heldout, tokenize_examples)
from train.features import FeatureStore, build_feature_store
from train.schedule import branch_start, lr_at
from train.unroll import unrolled_forward

DS_CONFIGS = Path(__file__).parent / "ds_configs"


def ensure_distributed_env() -> None:
    """Without a launcher, run as a world of one (deepspeed otherwise looks for MPI)."""
    if "RANK" in os.environ:
        return
    port = free_port()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


@dataclass
class Data:
    """Packed training blocks (N, T), held-out blocks (M, T), held-out prompt texts, the draft vocabulary, and
    how many on-policy training responses hit the token limit."""
    train: torch.Tensor
    heldout: torch.Tensor
    prompts: list[str]
    draft_vocab: torch.Tensor
    truncated_responses: int = 0

    @property
    def unique_tokens(self) -> int:
        """Distinct training tokens: the packed blocks' tokens (the stream repeats them past this)."""
        return int(self.train.numel())


def data_key(cfg: TrainConfig) -> list:
    """What the blocks depend on: jobs with the same key share data, on-policy responses and features (both computed
    by the target in ``cfg.dtype``, so the dtype is part of the key)."""
    d = cfg.data
    key = [cfg.target, d.source, d.examples, d.heldout, d.block_size, d.chat]
    key += [dtype] if (dtype := dtype_name(cfg.dtype or None, cfg.device)) != "float32" else []  # float32: the old key
    return key + (["onpolicy", d.onpolicy_max_new_tokens] if d.onpolicy else [])


def prepare_data(cfg: TrainConfig, tokenizer, vocab_size: int, target=None) -> Data:
    """Deterministic data: the corpus, its held-out split and packing do not depend on the job's seed, so every
    draft of a sweep sees the same blocks (and can share one feature store). A top milestone beyond the unique
    tokens repeats them: one line says by how much, or (data.allow_repeats false) the job refuses."""
    corpus = load_corpus(cfg.data.source, cfg.data.examples, seed=0)
    train_ds, held_ds = split_heldout(corpus, cfg.data.heldout, seed=0)
    truncated = 0
    if cfg.data.onpolicy:
        cache = onpolicy_cache(cfg.target, cfg.data.onpolicy_max_new_tokens, cfg.data.chat,
                               dtype_name(cfg.dtype or None, cfg.device))
        train_ds, held_ds = (regenerate_responses(ds, target, tokenizer, cache, cfg.data.onpolicy_max_new_tokens,
                                                  chat=cfg.data.chat) for ds in (train_ds, held_ds))
        truncated = sum(train_ds["truncated"])
    train = pack_blocks(tokenize_examples(train_ds, tokenizer, cfg.data.chat), cfg.data.block_size, seed=0)
    heldout = pack_blocks(tokenize_examples(held_ds, tokenizer, cfg.data.chat), cfg.data.block_size, seed=0)[:16]
    if len(train) == 0 or len(heldout) == 0:
        raise ConfigError(f"data.examples={cfg.data.examples} is too small for blocks of {cfg.data.block_size} tokens")
    size = cfg.draft_vocab or vocab_size
    vocab = draft_vocabulary(train, vocab_size, min(size, vocab_size))
    data = Data(train, heldout, heldout_prompts(held_ds, tokenizer, cfg.eval.prompts), vocab, truncated)
    epochs = max(cfg.milestones) / data.unique_tokens
    if epochs > 1:
        message = (f"data: the top milestone, {max(cfg.milestones)} tokens, repeats the {data.unique_tokens} unique "
                   f"training tokens {epochs:.2f} times; raise data.examples for a law on unique data")
        if not cfg.data.allow_repeats:
            raise ConfigError(f"{message} (data.allow_repeats is false)")
        print(f"[{cfg.run_id}] {message}", file=sys.stderr)
    if truncated:
        print(f"[{cfg.run_id}] data: {truncated} of {len(train_ds)} on-policy responses hit the limit of "
              f"{cfg.data.onpolicy_max_new_tokens} tokens", file=sys.stderr)
    return data


def block_order(n_blocks: int, position: int, count: int, seed: int) -> list[int]:
    """Blocks for stream positions [position, position + count): a fresh seeded permutation per epoch."""
    out, cache = [], {}
    for p in range(position, position + count):
        epoch = p // n_blocks
        if epoch not in cache:
            cache[epoch] = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(cache[epoch][p % n_blocks]))
    return out


def build_draft(cfg: TrainConfig, target, data: Data) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.drafter == "eagle":

        config = EagleConfig.for_target(target, num_layers=cfg.layers, width=cfg.width, layout=cfg.layout,
                                        feature_layers=list(cfg.feature_layers), draft_vocab_size=len(data.draft_vocab))
        head = EagleHead(config, target.get_input_embeddings())
        head.draft_to_target.copy_(data.draft_vocab)
        if config.width == config.target_hidden_size:  # start from the target's own LM head rows
            with torch.no_grad():
                head.lm_head.weight.copy_(target.get_output_embeddings().weight[data.draft_vocab])
        return head

    heads = max(1, cfg.width // 64)
    config = LlamaConfig(
        vocab_size=int(target.get_output_embeddings().weight.shape[0]), hidden_size=cfg.width,
        intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=target.config.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=target.config.bos_token_id, eos_token_id=target.config.eos_token_id,
        pad_token_id=target.config.pad_token_id,
    )
    return LlamaForCausalLM(config)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(without embeddings, with embeddings): the capacity axis of the study."""
    if hasattr(model, "trainable_parameters"):
        return model.trainable_parameters(), model.trainable_parameters(with_embeddings=True)
    total = sum(p.numel() for p in model.parameters())
    return total - model.get_input_embeddings().weight.numel(), total


class Objective:
    """The training loss of a draft on a batch of blocks; returns (loss, metrics).

    A head is unrolled ``cfg.unroll`` steps (train/unroll.py); step i's terms weigh unroll_decay**i, normalised.
    Per step: the token loss (ce on the next token, or kl to the target's distribution over the draft vocabulary at
    positions whose target top token is in it) plus feature_weight x the smooth-L1 regression of h onto the next
    fused feature. Metrics: step 0's token loss and accuracy, and accuracy_stepI of later steps.
    """
    def __init__(self, cfg: TrainConfig, target, data: Data, store=None):
        self.cfg = cfg
        self.store = store  # target features (EAGLE heads); draft LMs read data.train
        self.blocks = data.train
        vocab = int(target.get_output_embeddings().weight.shape[0])
        self.to_draft = torch.full((vocab,), -100, dtype=torch.long)
        self.to_draft[data.draft_vocab] = torch.arange(len(data.draft_vocab))
        head = target.get_output_embeddings().weight.detach()
        self.target_rows = head[data.draft_vocab].float()
        self.target_head = head.float() if cfg.optim.loss == "kl" else None  # kl's top-token test scores all of it
        self.layers = list(cfg.feature_layers)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training blocks ``indices``: tokens (b, T) and, for heads, the target features (b, T, F)."""
        if self.store is None:
            return self.blocks[indices], None
        return self.store.get(indices, self.layers + ([-1] if self.cfg.optim.loss == "kl" else []))

    def __call__(self, model, tokens: torch.Tensor, feats: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        device = next(model.parameters()).device
        tokens = tokens.to(device)
        if self.cfg.drafter == "draft-lm":
            logits = model(input_ids=tokens[:, :-1]).logits.float()
            labels = tokens[:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            acc = (logits.argmax(-1) == labels).float().mean()
            return loss, {"loss": loss.item(), "accuracy": acc.item()}
        head = getattr(model, "module", model)  # the DeepSpeed engine wraps the head
        n_feat = len(self.layers) * head.head_config.target_hidden_size
        feats = feats.to(device, next(model.parameters()).dtype)
        fused, last = feats[..., :n_feat], feats[..., n_feat:]
        # Pair q = (f_q, x_{q+1}) predicts x_{q+2} and (in feature space) the next fused feature.
        outs = unrolled_forward(model, tokens[:, 1:], fused[:, :-1], self.cfg.unroll)
        labels = self.to_draft.to(device)[tokens[:, 2:]]  # (b, T-2)
        soft = self._target_logp(last[:, 1:-1]) if self.cfg.optim.loss == "kl" else None
        with torch.no_grad():
            goal = head.fuse(fused[:, 1:])
        weights = [self.cfg.unroll_decay ** i for i in range(self.cfg.unroll)]
        loss, metrics = 0.0, {}
        for i, out in enumerate(outs):
            logits = out.logits[:, i:-1].float()  # (b, T-2-i, V_d): positions with an anchor
            token_loss = self._token_loss(logits, labels[:, i:], soft and (soft[0][:, i:], soft[1][:, i:]))
            feature_loss = F.smooth_l1_loss(out.hidden_states[:, i:].float(), goal[:, i:].float())
            loss = loss + weights[i] / sum(weights) * (token_loss + self.cfg.optim.feature_weight * feature_loss)
            valid = labels[:, i:] >= 0
            acc = ((logits.argmax(-1) == labels[:, i:]) & valid).float().sum() / valid.float().sum().clamp(min=1)
            if i == 0:
                metrics.update(loss=token_loss.item(), feature_loss=feature_loss.item(), accuracy=acc.item())
            else:
                metrics[f"accuracy_step{i}"] = acc.item()
        return loss, metrics

    def _target_logp(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's final features (b, n, H) -> (log-probabilities over the draft vocabulary (b, n, V_d),
        whether the target's top token over its whole vocabulary is in the draft vocabulary (b, n))."""
        last = last.float()
        draft_logits = last @ self.target_rows.to(last.device).T
        with torch.no_grad():
            top = (last @ self.target_head.to(last.device).T).amax(-1)
        return draft_logits.log_softmax(-1), draft_logits.amax(-1) >= top

    @staticmethod
    def _token_loss(logits: torch.Tensor, labels: torch.Tensor, target: tuple | None) -> torch.Tensor:
        """ce against labels (b, n) (-100: outside the draft vocabulary), or kl to target = (log p, in-vocab mask)."""
        if target is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        logp, counted = target
        kl = (logp.exp() * (logp - logits.log_softmax(-1))).sum(-1)  # (b, n)
        return (kl * counted).sum() / counted.sum().clamp(min=1)


def make_drafter(cfg: TrainConfig, model):
    if cfg.drafter == "eagle":
        return EagleDrafter(model, num_draft_tokens=cfg.eval.num_draft_tokens)
    return DraftModel(model, num_draft_tokens=cfg.eval.num_draft_tokens)


@torch.no_grad()
def measure(cfg: TrainConfig, target, tokenizer, model, objective: Objective, data: Data, heldout_feats) -> dict:
    """Held-out loss/accuracy and a quick greedy acceptance measurement with the engine."""
    model.eval()
    _, held = objective(model, data.heldout, heldout_feats)
    ids, mask = encode_prompts(tokenizer, data.prompts, chat=cfg.data.chat, device=cfg.device)
    out = SpeculativeDecoder(target, make_drafter(cfg, model)).generate(
        ids, mask, max_new_tokens=cfg.eval.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.train()
    s = out.stats
    return {
        "heldout_loss": held["loss"], "heldout_accuracy": held["accuracy"],
        "mean_accepted_length": s.mean_accepted_length, "acceptance_rate": s.acceptance_rate,
        "per_position_acceptance": s.per_position_acceptance, "eval_prompts": len(data.prompts),
        "eval_new_tokens": s.new_tokens,
    }


def save_draft(cfg: TrainConfig, model, tokenizer, folder: Path, card: dict) -> None:
    """A self-contained draft folder, published atomically. A folder inside the job's own folder is the job's to
    replace (a resumed job rewrites a checkpoint whose record was lost, written before scylla.atomic's marker
    existed too); anywhere else, one that is not a draft scylla wrote is refused (scylla.atomic.check_replaceable)."""
    own = cfg.job_dir.resolve() in Path(folder).resolve().parents
    if cfg.drafter == "eagle":
        model.save(folder, card, force=own)
        return
    with atomic_folder(folder, force=own) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str))


def feature_store_for(cfg: TrainConfig, target, data: Data, rank: int):
    """The shared target-feature store for this job's target and data (built once, by rank 0). It holds the final
    layer too (kl reads it), so jobs on the same data share one store whatever their features, unless the store
    was first built for other layers: then one keyed by the layers as well."""
    import deepspeed  # heavy (compiles ops, probes accelerators): imported only where a job trains

    layers = sorted(set(cfg.feature_layers) | {-1})
    root = Path(cfg.feature_cache or cfg.run_path / "features")
    folder = root / hashlib.sha1(json.dumps(data_key(cfg)).encode()).hexdigest()[:12]
    if (folder / "meta.json").exists() and not set(layers) <= set(FeatureStore(folder).layers):
        folder = root / hashlib.sha1(json.dumps(data_key(cfg) + [layers]).encode()).hexdigest()[:12]
    if rank == 0:
        build_feature_store(folder, target, data.train, layers)
    deepspeed.comm.barrier()
    return FeatureStore(folder)


def done_milestones(cfg: TrainConfig) -> set[int]:
    """Milestones whose record is written and whose draft folder exists."""
    if not (cfg.run_path / "records.jsonl").exists():
        return set()
    done = set()
    for record in read_records(cfg.run_path, kind="train", where={"run_id": cfg.run_id}):
        if (cfg.job_dir / f"tokens-{record['train_tokens']}").is_dir():
            done.add(int(record["train_tokens"]))
    return done


def start_tracking(cfg: TrainConfig):
    """wandb, offline unless asked otherwise; the records file stays the source of truth."""
    if cfg.wandb == "disabled":
        return None
    if cfg.wandb == "online" and not os.environ.get("WANDB_API_KEY"):
        raise InputError("wandb: online needs WANDB_API_KEY set; use wandb: offline (the default)")
    import wandb  # optional: only when tracking is on

    cfg.job_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.sweep or "scylla", name=cfg.run_id, dir=str(cfg.job_dir), mode=cfg.wandb,
                     config=cfg.to_dict())
    # The optimizer step is the x axis, not wandb's own step: under the WSD schedule each milestone's cool-down
    # branches off the stable run and the next milestone resumes from before it, so steps repeat (wandb drops
    # out-of-order values logged with step=).
    run.define_metric("train/step")
    for prefix in ("train/*", "milestone/*"):
        run.define_metric(prefix, step_metric="train/step")
    return run


class Trainer:
    """The DeepSpeed engine plus the stream position; stable checkpoints make the run resumable."""
    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, world: int, rank: int):
        import deepspeed  # heavy (compiles ops, probes accelerators): imported only where a job trains

        self.cfg, self.world, self.rank = cfg, world, rank
        ds_config = json.loads((DS_CONFIGS / f"zero{cfg.zero_stage}.json").read_text())
        ds_config["train_micro_batch_size_per_gpu"] = cfg.optim.batch_blocks
        ds_config["gradient_clipping"] = cfg.optim.grad_clip
        ds_config["bf16"] = {"enabled": cfg.dtype == "bfloat16"}  # DeepSpeed's bf16: float32 master weights
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.step = 0
        self.stable_dir = cfg.job_dir / "stable"

    def steps_for(self, milestone: int) -> int:
        return milestone // self.cfg.tokens_per_step  # a whole number: TrainConfig.validate checks the milestones

    def save_stable(self) -> None:
        self.engine.save_checkpoint(str(self.stable_dir), tag="stable", client_state={"step": self.step})

    def load_stable(self) -> bool:
        if not (self.stable_dir / "stable").is_dir():
            return False
        _, client = self.engine.load_checkpoint(str(self.stable_dir), tag="stable")
        self.step = int(client["step"])
        return True

    def train_until(self, end: int, milestone_steps: int, objective: Objective, data: Data, desc: str, log) -> dict:
        """Optimizer steps up to ``end`` on the LR plan of the milestone; returns the last steps' mean metrics."""
        cfg = self.cfg
        warmup = cfg.warmup_steps
        recent: list[dict] = []
        start_time, start_step = time.perf_counter(), self.step
        for _ in tqdm(range(self.step, end), desc=desc, unit="step", disable=self.rank != 0 or end <= self.step):
            lr = lr_at(self.step, milestone_steps, cfg.optim.lr, warmup, cfg.optim.cooldown)
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
            first = (self.step * self.world + self.rank) * cfg.optim.batch_blocks
            tokens, feats = objective.batch(block_order(len(data.train), first, cfg.optim.batch_blocks, cfg.seed))
            loss, metrics = objective(self.engine, tokens, feats)
            self.engine.backward(loss)
            self.engine.step()
            self.step += 1
            recent = (recent + [metrics])[-20:]
            if log is not None and self.step % 10 == 0:
                log.log({"train/step": self.step, "train/lr": lr, **{f"train/{k}": v for k, v in metrics.items()}})
        elapsed = time.perf_counter() - start_time
        summary = {k: sum(m[k] for m in recent) / len(recent) for k in recent[0]} if recent else {}
        if self.step > start_step:
            summary["train_tokens_per_second"] = (self.step - start_step) * cfg.tokens_per_step / elapsed
        return summary


def train_milestones(cfg: TrainConfig, trainer: Trainer, todo: list[int], objective: Objective, data: Data, log,
                     fresh: Callable[[], Trainer], finish: Callable[[int, Trainer, dict], None]) -> Trainer:
    """Train to each milestone of ``todo`` (token counts, increasing) on ``cfg.schedule``'s LR plan and hand each
    finished draft to ``finish(milestone, trainer holding it, its last steps' mean metrics)``; returns the last trainer.

    wsd: the stable run trains to the milestone's branch point and is saved there (model and optimizer state), the
    branch cools down to the milestone, and the stable run is restored before the next milestone, so every branch
    leaves the stable run's own weights and the stable run never goes on from a branch's. separate: a fresh draft
    (``fresh()``) trains each milestone from step 0 on the same plan."""
    for milestone in todo:
        steps = trainer.steps_for(milestone)
        if cfg.schedule == "wsd" and trainer.step > branch_start(steps, cfg.optim.cooldown):
            raise InputError(f"{trainer.stable_dir} is past milestone {milestone}'s branch point: delete it to retrain")
        if cfg.schedule == "separate":
            trainer = fresh()
            train_metrics = trainer.train_until(steps, steps, objective, data, f"{cfg.run_id} to {milestone}", log)
        else:
            start = branch_start(steps, cfg.optim.cooldown)
            trainer.train_until(start, steps, objective, data, f"{cfg.run_id} stable", log)
            trainer.save_stable()  # the branch point: a killed branch restarts here
            train_metrics = trainer.train_until(steps, steps, objective, data, f"{cfg.run_id} to {milestone}", log)
        finish(milestone, trainer, train_metrics)
        if cfg.schedule == "wsd" and milestone != todo[-1]:
            trainer.load_stable()  # back to the stable run
    return trainer


def run(cfg: TrainConfig) -> None:
    import deepspeed  # heavy (compiles ops, probes accelerators): imported only where a job trains

    ensure_distributed_env()
    deepspeed.init_distributed(dist_backend="nccl" if cfg.device.startswith("cuda") else "gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.device.startswith("cuda"):
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    cfg.dtype = dtype_name(cfg.dtype or None, cfg.device)  # scylla.dtypes decides the default
    if world != cfg.processes:
        raise ConfigError(f"{cfg.job_dir / 'job.yaml'}: processes: the job says {cfg.processes}, it was launched "
                          f"with {world}: set processes to the launcher's world size")
    target, tokenizer = load_model(cfg.target, device=cfg.device, dtype=cfg.dtype)
    for p in target.parameters():
        p.requires_grad_(False)
    vocab = int(target.get_output_embeddings().weight.shape[0])
    data = prepare_data(cfg, tokenizer, vocab, target)
    store = feature_store_for(cfg, target, data, rank) if cfg.drafter == "eagle" else None
    heldout_feats = None
    if cfg.drafter == "eagle":
        layers = list(cfg.feature_layers) + ([-1] if cfg.optim.loss == "kl" else [])
        with torch.no_grad():
            hs = target(data.heldout.to(cfg.device), output_hidden_states=True).hidden_states
        heldout_feats = torch.cat([hs[i] for i in layers], dim=-1).float()
    model = build_draft(cfg, target, data).to(cfg.device)
    objective = Objective(cfg, target, data, store)
    params, params_embed = count_params(model)
    done = done_milestones(cfg)
    todo = [m for m in cfg.milestones if m not in done]
    if rank == 0:
        print(f"[{cfg.run_id}] {params:,} parameters ({params_embed:,} with embeddings); "
              f"milestones done {sorted(done)}, to do {todo}", file=sys.stderr)
    if not todo:
        return
    trainer = Trainer(cfg, model, world, rank)
    log = start_tracking(cfg) if rank == 0 else None
    resumed = cfg.schedule == "wsd" and trainer.load_stable()
    if rank == 0 and resumed:
        print(f"[{cfg.run_id}] resumed at step {trainer.step}", file=sys.stderr)

    def finish(milestone: int, trainer: Trainer, train_metrics: dict) -> None:
        """Measure the draft of a finished milestone, save it and write its train record (rank 0)."""
        if rank != 0:
            return
        model = trainer.engine.module
        metrics = measure(cfg, target, tokenizer, model, objective, data, heldout_feats)
        card = {"target": cfg.target, "drafter": cfg.drafter, "train_tokens": milestone, "layers": cfg.layers,
                "width": cfg.width or target.config.hidden_size, "draft_params": params, "data": cfg.data.source,
                "seed": cfg.seed, "run_id": cfg.run_id, "schedule": cfg.schedule, "loss": cfg.optim.loss,
                "layout": cfg.layout, "unroll": cfg.unroll, "dtype": cfg.dtype}
        folder = cfg.job_dir / f"tokens-{milestone}"
        save_draft(cfg, model, tokenizer, folder, card)
        record = new_record(
            "train", run_id=cfg.run_id, sweep=cfg.sweep, target=cfg.target, drafter_type=cfg.drafter,
            target_quantization=target_quantization(cfg.target, target),
            draft_layers=cfg.layers, draft_width=cfg.width or int(target.config.hidden_size),
            draft_params=params, draft_params_with_embeddings=params_embed, train_tokens=milestone,
            data=cfg.data.source, seed=cfg.seed, checkpoint=str(folder.relative_to(cfg.run_path)),
            config_hash=cfg.config_hash(),
            schedule=cfg.schedule,
            loss_type=cfg.optim.loss, lr_peak=cfg.optim.lr, feature_layers=list(cfg.feature_layers),
            layout=cfg.layout, unroll=cfg.unroll, unroll_decay=cfg.unroll_decay,
            feature_weight=cfg.optim.feature_weight,
            dtype=cfg.dtype, cpu_capability=cpu_capability() if cfg.device == "cpu" else None,
            threads=torch.get_num_threads(),
            draft_vocab_size=len(data.draft_vocab), unique_tokens=data.unique_tokens,
            epochs=milestone / data.unique_tokens, truncated_responses=data.truncated_responses,
            **train_metrics, **metrics,
        )
        append_record(cfg.run_path, record)
        if log is not None:
            log.log({"train/step": trainer.step,
                     **{f"milestone/{k}": v for k, v in metrics.items() if not isinstance(v, list)}})
        print(f"[{cfg.run_id}] {milestone} tokens: MAT {metrics['mean_accepted_length']:.3f}, "
              f"held-out accuracy {metrics['heldout_accuracy']:.3f}", file=sys.stderr)

    def fresh() -> Trainer:
        return Trainer(cfg, build_draft(cfg, target, data).to(cfg.device), world, rank)

    trainer = train_milestones(cfg, trainer, todo, objective, data, log, fresh, finish)
    if log is not None:
        log.finish()
    if rank == 0:
        (cfg.job_dir / "DONE").write_text(json.dumps({"milestones": cfg.milestones}))
        shutil.rmtree(trainer.stable_dir, ignore_errors=True)
    deepspeed.comm.barrier()
    torch.distributed.destroy_process_group()
    release_shared_memory(int(os.environ.get("MASTER_PORT", 0)), os.environ.get("LOCAL_RANK", "*"))


def release_shared_memory(port: int, local_rank: str = "*") -> None:
    """Remove the buffers DeepSpeed's CPU all-reduce leaves in /dev/shm for a launch on ``port`` (67 MB per process,
    never freed: a few hundred jobs filled a 24 GB machine): each process its own at the end of training, and the
    local sweep every process's after a job, also a killed one."""
    for path in Path("/dev/shm").glob(f"deepspeed_*_{port}_{local_rank}"):
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.pretrain_draft", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="job YAML (see train/config.py)")
    parser.add_argument("--run-dir", help="the run folder, instead of the job's run_dir (launch scripts run in the "
                        "run folder and pass '.', so a moved folder still trains)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of this process: training, on-policy "
                        "generation, feature pass (default: the environment's MKL_NUM_THREADS or OMP_NUM_THREADS, "
                        "else torch's); the sweep's scripts set it")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        use_threads(args.threads)
    try:
        run(TrainConfig.from_yaml(args.config, {"run_dir": args.run_dir} if args.run_dir else None))
    except ScyllaError as err:
        print(f"scylla: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
