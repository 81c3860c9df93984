"""Peak memory of `spard train` with every training setting at its default, on the embedded model.

    python benchmarks/train_memory.py [--defense sft] [--steps 2] [--micro-batch-size N] [--loss-chunk-size N]

Runs `spard train --model smollm2-135m-instruct` in a child process on the first 440 GSM8K rows (plus
BeaverTails at p = 0.1 when ../shared/data is there; a toy set otherwise) with batch 32 x accumulation
4 and length 256 (the defaults), and reports the child's peak RSS and seconds per update. With
automatic micro-batching (the default) an update runs in passes of 2048 tokens; `--micro-batch-size 32`
reproduces the old single-pass behaviour (it grew past 20 GB here: do not run it on a 24 GB machine);
`--loss-chunk-size 0` the loss before chunking (all float32 logits of a pass at once).
Writes results/memory/train_defaults.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", default="sft")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--micro-batch-size", type=int)
    ap.add_argument("--loss-chunk-size", type=int, help="0 = the library's loss (the behaviour before chunking); default automatic")
    args = ap.parse_args()
    if not (SHARED / "gsm8k" / "train.jsonl").exists():
        sys.exit(f"needs {SHARED}/gsm8k/train.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "spard.cli", "train", "--model", "smollm2-135m-instruct", "--defense", args.defense,
               "--data", str(SHARED / "gsm8k" / "train.jsonl"), "--limit", "400",
               "--harmful-data", str(SHARED / "safety" / "attack" / "beavertails.jsonl"), "--harmful-ratio", "0.1",
               "--safe-pool", str(SHARED / "safety" / "safe_pool.jsonl"),
               "--max-steps", str(args.steps), "--output-dir", f"{tmp}/run", "--no-progress"]
        if args.micro_batch_size:
            cmd += ["--micro-batch-size", str(args.micro_batch_size)]
        if args.loss_chunk_size is not None:
            cmd += ["--loss-chunk-size", str(args.loss_chunk_size)]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        metrics = json.loads(Path(tmp, "run", "metrics.json").read_text())
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    row = {"defense": args.defense, "updates": metrics.get("updates"), "micro_batch_size": args.micro_batch_size or "auto",
           "loss_chunk_size": "auto" if args.loss_chunk_size is None else args.loss_chunk_size,
           "batch_size": 32, "gradient_accumulation_steps": 4, "max_length": 256, "peak_rss_gib": round(peak_gib, 2),
           "wall_seconds": round(wall, 1), "train_seconds": metrics.get("train_seconds")}
    out = ROOT / "results" / "memory" / "train_defaults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.exists() else []
    same = ("defense", "micro_batch_size", "loss_chunk_size")
    rows = [r for r in rows if any(r.get(k, "auto" if k == "loss_chunk_size" else None) != row[k] for k in same)] + [row]
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
