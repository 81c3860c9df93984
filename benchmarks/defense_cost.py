"""Seconds per update and peak memory of every defense, relative to plain SFT, measured in one run.

Each defense trains for the same few updates on the same poisoned data, in its own process (so the
peak resident memory in its metrics.json is its own). Prints a table with ratios against ``sft``.

    .venv/bin/python benchmarks/defense_cost.py [--model M] [--unaligned-model U] [--steps 8]

Defaults: SmolLM2-135M-Instruct, GSM8K train (first 500) + 10% BeaverTails attack samples, the
shared safety pool, k = 64, batch 4, max length 192. Without ../shared/data the toy benchmark is used.
SafeLoRA needs the model before alignment: pass --unaligned-model (default: the model itself, which
makes the alignment matrix zero, fine for timing only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFENSES = ["sft", "spard", "safeinstr", "lisa", "ptst", "safegrad", "safelora"]


def data_paths(tmp: Path) -> dict[str, str]:
    if (SHARED / "gsm8k" / "train.jsonl").exists():
        return {"task": str(SHARED / "gsm8k/train.jsonl"), "attack": str(SHARED / "safety/attack/beavertails.jsonl"),
                "pool": str(SHARED / "safety/safe_pool.jsonl"), "source": "shared data (GSM8K + BeaverTails attack)"}
    from spard.bench.toydata import write_toy_benchmark

    p = write_toy_benchmark(tmp / "toy")
    return {"task": str(p["task"]), "attack": str(p["attack"]), "pool": str(p["safe_pool"]), "source": "toy benchmark"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--unaligned-model", default=None)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--defenses", nargs="*", default=DEFENSES)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = data_paths(Path(tmp))
        for defense in args.defenses:
            out = Path(tmp) / defense
            cmd = [sys.executable, "-m", "spard.cli", "train", "--model", args.model, "--data", data["task"],
                   "--limit", "500", "--harmful-data", data["attack"], "--harmful-ratio", "0.1", "--safe-pool", data["pool"],
                   "--defense", defense, "--output-dir", str(out), "--max-steps", str(args.steps), "--batch-size", "4",
                   "--grad-accum", "1", "--warmup-steps", "0", "--max-length", "192", "--min-k", "64", "--lr", "1e-4",
                   "--no-progress", "--unaligned-model", args.unaligned_model or args.model]
            if defense == "lisa":
                cmd += ["--config", str(_lisa_yaml(Path(tmp), args.steps))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{defense}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            m = json.loads((out / "metrics.json").read_text())
            results[defense] = {"seconds_per_update": m["seconds_per_update"], "peak_memory_mb": m["peak_memory_mb"],
                                "updates": m["updates"], "train_seconds": m["train_seconds"]}
    base = results.get("sft")
    print(f"model {args.model}, {args.steps} user-data updates of batch 4, data: {data['source']}")
    print(f"{'defense':<10} {'s/update':>9} {'x sft':>7} {'peak MiB':>9} {'x sft':>7} {'updates':>8}")
    for name, r in results.items():
        t_ratio = r["seconds_per_update"] / base["seconds_per_update"] if base else float("nan")
        m_ratio = r["peak_memory_mb"] / base["peak_memory_mb"] if base else float("nan")
        print(f"{name:<10} {r['seconds_per_update']:9.2f} {t_ratio:7.2f} {r['peak_memory_mb']:9.0f} {m_ratio:7.2f} {r['updates']:8d}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _lisa_yaml(tmp: Path, steps: int) -> Path:
    """Lisa's alignment/fine-tuning split scaled to the short run (1 alignment update per 4)."""
    path = tmp / "lisa.yaml"
    path.write_text(f"lisa:\n  alignment_steps: {max(1, steps // 4)}\n  finetune_steps: {steps}\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
