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
import shutil
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
    parser.add_argument("--batch-size", type=int, default=4, help="rows per update before accumulation")
    parser.add_argument("--grad-accum", type=int, default=1, help="accumulation steps (utility batch = batch x accum)")
    parser.add_argument("--safe-batch-size", type=int, default=4, help="SPAG safe rows per update")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the defenses this many times, interleaved, and keep each one's fastest (less noise)")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = data_paths(Path(tmp))
        for defense in [d for _ in range(args.repeat) for d in args.defenses]:
            out = Path(tmp) / defense
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "spard.cli", "train", "--model", args.model, "--data", data["task"],
                   "--limit", "500", "--harmful-data", data["attack"], "--harmful-ratio", "0.1", "--safe-pool", data["pool"],
                   "--defense", defense, "--output-dir", str(out), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--grad-accum", str(args.grad_accum), "--warmup-steps", "0", "--max-length", str(args.max_length),
                   "--safe-batch-size", str(args.safe_batch_size), "--min-k", "64", "--lr", "1e-4",
                   "--no-progress", "--unaligned-model", args.unaligned_model or args.model]
            if defense == "lisa":
                cmd += ["--config", str(_lisa_yaml(Path(tmp), args.steps))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{defense}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            m = json.loads((out / "metrics.json").read_text())
            steps = steady_updates(out)
            per_update = sum(r["seconds"] for r in steps) / len(steps) if steps else m["seconds_per_update"]
            row = {"seconds_per_update": per_update, "peak_memory_mb": m["peak_memory_mb"], "updates": m["updates"],
                   "timed_updates": len(steps), "train_seconds": m["train_seconds"], **spag_shares(steps, per_update)}
            if defense not in results or row["seconds_per_update"] < results[defense]["seconds_per_update"]:
                results[defense] = row
    base = results.get("sft")
    print(f"model {args.model}, {args.steps} user-data updates of {args.batch_size} x {args.grad_accum} rows "
          f"(SPAG: {args.safe_batch_size} safe rows), fastest of {args.repeat}, data: {data['source']}; "
          "s/update: mean wall time of the updates after the first (step log)")
    print(f"{'defense':<10} {'s/update':>9} {'x sft':>7} {'peak MiB':>9} {'x sft':>7} {'updates':>8}")
    for name, r in results.items():
        t_ratio = r["seconds_per_update"] / base["seconds_per_update"] if base else float("nan")
        m_ratio = r["peak_memory_mb"] / base["peak_memory_mb"] if base else float("nan")
        print(f"{name:<10} {r['seconds_per_update']:9.2f} {t_ratio:7.2f} {r['peak_memory_mb']:9.0f} {m_ratio:7.2f} {r['updates']:8d}")
    for name, r in results.items():
        if "spag_share" in r:
            print(f"{name}: SPAG's safety step is {r['spag_share']:.1%} of an update (check forward {r['check_share']:.1%}, "
                  f"projection {r['projection_share']:.1%}, measurement after {r['after_share']:.1%}; fired on {r['fired']} of the "
                  f"{r['timed_updates']} timed updates)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                               "results": results}, indent=2))
    return 0


def steady_updates(run: Path) -> list[dict]:
    """The step-log rows of the updates after the first (which also pays for warming up), each with its
    wall ``seconds``; all of them when there is only one."""
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "seconds" in r]
    return rows[1:] if len(rows) > 1 else rows


def spag_shares(rows: list[dict], seconds_per_update: float) -> dict:
    """Shares of an update spent in SPAG's check forward, projection and after-measurement (from the step log)."""
    rows = [r for r in rows if "seconds_check" in r]
    if not rows or not seconds_per_update:
        return {}
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("seconds_check", "seconds_projection", "seconds_after")}
    return {"check_share": mean["seconds_check"] / seconds_per_update,
            "projection_share": mean["seconds_projection"] / seconds_per_update,
            "after_share": mean["seconds_after"] / seconds_per_update,
            "spag_share": sum(mean.values()) / seconds_per_update, "fired": sum(bool(r.get("fired")) for r in rows)}


def _lisa_yaml(tmp: Path, steps: int) -> Path:
    """Lisa's alignment/fine-tuning split scaled to the short run (1 alignment update per 4)."""
    path = tmp / "lisa.yaml"
    path.write_text(f"lisa:\n  alignment_steps: {max(1, steps // 4)}\n  finetune_steps: {steps}\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
