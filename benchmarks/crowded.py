"""On-policy generation on a crowded machine: quiet, then beside busy processes, against its fair share.

    python benchmarks/crowded.py                                     # 64 prompts, 4 busy processes, 3 rounds
    python benchmarks/crowded.py --policies unset,PASSIVE,ACTIVE     # OpenMP's wait policies as well
    python benchmarks/crowded.py --prompts 2 --busy 1 --repeats 1    # a smoke run (under a minute)

Timed: train.data.regenerate_responses, the target answering the first --prompts training prompts of a grid's data
(default experiments/demo.yaml: its target, corpus, on-policy token limit, chat template and dtype) into an empty
cache, as a training job does before its feature pass. Every run is a fresh process (the model loaded untimed) with
OMP_WAIT_POLICY set for it (``unset``: not set, OpenMP's default) and its threads as scylla.threads chooses
(use_threads(): OMP_NUM_THREADS if set, else the free cores, watched just before the timing: unset OMP_NUM_THREADS
and MKL_NUM_THREADS to let it choose). A crowded run has --busy pure-CPU spinners beside it, started by this
script before the run and killed after it.

A round runs every policy (in reverse order every other round) quiet and crowded (crowded first every other round).
The timed process samples /proc/loadavg's runnable count every 0.2 s (less itself, the sampler). Printed per policy,
medians over rounds: the quiet and crowded seconds, the runnable processes during the crowded run, the fair share
(quiet seconds x max(runnable, cores) / cores: what the run would take if the cores were shared evenly among the
runnable processes) and crowded / fair share, the median of its per-round values: 1 is a fair share, above 1 the
run lost more than its share (issue 28: 38x slower than quiet where the fair share was 3.5x, a ratio of 11).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE_S = 0.2  # how often the timed process reads /proc/loadavg
UNSET = "unset"  # the policy name for no OMP_WAIT_POLICY: OpenMP's default


def runnable() -> int | None:
    """Runnable processes and threads on the machine now, less the one reading (/proc/loadavg's 4th field, R/T);
    None where there is no /proc/loadavg."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1
    except (OSError, IndexError, ValueError):
        return None


def child(grid: str, prompts: int) -> dict:
    """One timed run in this process: the on-policy answers to ``prompts`` training prompts of ``grid``'s data.
    Returns seconds, threads, the runnable counts sampled during the run and the wait policy."""
    import yaml  # torch is loaded below, with OMP_WAIT_POLICY in this process's environment from its start

    from scylla.dtypes import dtype_name
    from scylla.models import load_model
    from scylla.threads import use_threads
    from train.config import TrainConfig
    from train.data import load_corpus, regenerate_responses, split_heldout

    with tempfile.TemporaryDirectory(prefix="scylla-crowded-") as tmp:
        cfg = TrainConfig.from_dict({**yaml.safe_load(Path(grid).read_text())["base"], "run_dir": tmp})
        dtype = dtype_name(cfg.dtype or None, "cpu")
        target, tokenizer = load_model(cfg.target, device="cpu", dtype=dtype)
        train_ds, _ = split_heldout(load_corpus(cfg.data.source, cfg.data.examples, seed=0), cfg.data.heldout, seed=0)
        subset = train_ds.select(range(min(prompts, len(train_ds))))
        threads = use_threads()  # as a training job's: the free cores now, or OMP_NUM_THREADS
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_S):
                if (count := runnable()) is not None:
                    samples.append(count)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        regenerate_responses(subset, target, tokenizer, Path(tmp) / "onpolicy.jsonl",
                             cfg.data.onpolicy_max_new_tokens, chat=cfg.data.chat)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return {"seconds": seconds, "threads": threads, "runnable": samples, "prompts": len(subset),
            "policy": os.environ.get("OMP_WAIT_POLICY", UNSET)}


def run_child(grid: str, prompts: int, policy: str) -> dict:
    """A timed run in a fresh process with ``policy`` as its OMP_WAIT_POLICY (UNSET: none, OpenMP's default)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != UNSET:
        env["OMP_WAIT_POLICY"] = policy
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--grid", grid, "--prompts", str(prompts)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"crowded.py: a timed run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_spinners(n: int) -> list[subprocess.Popen]:
    """``n`` pure-CPU busy processes (Python loops), running until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_spinners(spinners: list[subprocess.Popen]) -> None:
    for proc in spinners:
        proc.kill()
    for proc in spinners:
        proc.wait()


def measure(grid: str, prompts: int, busy: int, repeats: int, policies: list[str]) -> dict[str, list[dict]]:
    """policy -> one {"quiet": run, "crowded": run} per round, the runs interleaved (see the module docstring)."""
    rounds: dict[str, list[dict]] = {policy: [] for policy in policies}
    for r in range(repeats):
        for policy in policies[:: -1 if r % 2 else 1]:
            pair = {}
            for crowded in (True, False) if r % 2 else (False, True):
                spinners = start_spinners(busy) if crowded else []
                try:
                    pair["crowded" if crowded else "quiet"] = run_child(grid, prompts, policy)
                finally:
                    stop_spinners(spinners)
            rounds[policy].append(pair)
            print(f"round {r + 1}/{repeats} {policy}: quiet {pair['quiet']['seconds']:.1f} s, crowded "
                  f"{pair['crowded']['seconds']:.1f} s", file=sys.stderr)
    return rounds


def summarise(pairs: list[dict], cores: int) -> dict:
    """Medians over rounds of one policy's quiet and crowded runs, their fair share and crowded / fair share."""
    def runnable_median(run: dict) -> float:
        return statistics.median(run["runnable"]) if run["runnable"] else float("nan")

    fair = [p["quiet"]["seconds"] * max(runnable_median(p["crowded"]), cores) / cores for p in pairs]
    return {"quiet_s": statistics.median(p["quiet"]["seconds"] for p in pairs),
            "crowded_s": statistics.median(p["crowded"]["seconds"] for p in pairs),
            "quiet_runnable": statistics.median(runnable_median(p["quiet"]) for p in pairs),
            "crowded_runnable": statistics.median(runnable_median(p["crowded"]) for p in pairs),
            "threads": sorted({(p["quiet"]["threads"], p["crowded"]["threads"]) for p in pairs}),
            "fair_share_s": statistics.median(fair),
            "crowded_over_fair_share": statistics.median(p["crowded"]["seconds"] / f for p, f in zip(pairs, fair))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--prompts", type=int, default=64, help="training prompts answered per run (default 64)")
    parser.add_argument("--busy", type=int, default=4, help="busy processes beside a crowded run (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--policies", default=UNSET, help="OMP_WAIT_POLICY values, comma-separated, e.g. "
                        f"{UNSET},PASSIVE,ACTIVE (default {UNSET}: none, OpenMP's default)")
    parser.add_argument("--grid", default=str(ROOT / "experiments" / "demo.yaml"),
                        help="the grid whose data and target are timed (default experiments/demo.yaml)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "crowded.json"), help="where the "
                        "runs and the summary go (default benchmarks/out/crowded.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one timed run, JSON on stdout
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in (UNSET, "PASSIVE", "ACTIVE")]
    if args.prompts < 1 or args.busy < 0 or args.repeats < 1 or not policies or bad:
        parser.error("--prompts and --repeats must be >= 1, --busy >= 0, --policies a list of unset, PASSIVE, ACTIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.child:
        print(json.dumps(child(args.grid, args.prompts)))
        return 0

    from scylla.atomic import write_json_atomic

    cores = os.cpu_count() or 1  # /proc/loadavg counts the runnable processes of every core
    rounds = measure(args.grid, args.prompts, args.busy, args.repeats, policies)
    summary = {policy: summarise(pairs, cores) for policy, pairs in rounds.items()}
    print(f"\non-policy generation of {args.prompts} training prompts ({args.grid}), quiet and beside {args.busy} "
          f"busy process(es), {cores} cores, medians of {args.repeats} round(s)\n")
    print("| OMP_WAIT_POLICY | threads quiet/crowded | quiet s | crowded s | runnable quiet/crowded | fair share s "
          "| crowded / fair share |\n|---|---|---|---|---|---|---|")
    for policy, s in summary.items():
        threads = ", ".join(f"{q}/{c}" for q, c in s["threads"])
        print(f"| {policy} | {threads} | {s['quiet_s']:.1f} | {s['crowded_s']:.1f} | {s['quiet_runnable']:.1f}/"
              f"{s['crowded_runnable']:.1f} | {s['fair_share_s']:.1f} | {s['crowded_over_fair_share']:.2f} |")
    write_json_atomic(args.json, {"args": vars(args), "cores": cores, "summary": summary, "rounds": rounds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
