"""How much a refit of the TF-IDF probe judge depends on the machine's BLAS threads, in verdicts.

The probe's weights are not committed (they are fit from the safety pool, in seconds), so a fresh clone
refits them. OpenBLAS started with one thread and with several sums in another order, and the weights
differ in their last bits. This script fits the probe once per thread setting, each in its own process
(the setting is read when the library loads), and compares: the weights (largest difference), and the
verdicts and P(harmful) on responses (the pool's own, plus any generation files given).

    .venv/bin/python benchmarks/probe_refit.py [--pool FILE] [--responses 'results/*/runs/*/eval/generations/*.jsonl']
                                               [--threads 1 2] [--json OUT]

Prints counts only, never a response.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

FIT = "import sys; from spard.evaluation.judges.stacked import refit_probe; refit_probe(sys.argv[1], 'tfidf', sys.argv[2])"


def fit_in_process(pool: str, out: Path, threads: int) -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-c", FIT, pool, str(out)], check=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default=str(SHARED / "safety" / "safe_pool.jsonl"))
    parser.add_argument("--responses", nargs="*", default=[], help="generation files (glob patterns) to judge with both fits")
    parser.add_argument("--threads", nargs=2, type=int, default=[1, 2])
    parser.add_argument("--json", help="also write the comparison here")
    args = parser.parse_args()
    if not Path(args.pool).is_file():
        print(f"{args.pool}: no safety pool here (the shared data is needed)", file=sys.stderr)
        return 2
    import numpy as np

    from spard.evaluation.judge_quality import responses_and_labels
    from spard.evaluation.judges.probe import Probe
    from spard.io import atomic_write_json, read_jsonl
    from spard.models.loading import file_sha256

    with tempfile.TemporaryDirectory() as tmp:
        probes, shas = [], []
        for t in args.threads:
            fit_in_process(args.pool, Path(tmp) / f"t{t}", t)
            probes.append(Probe.load(Path(tmp) / f"t{t}"))
            shas.append(file_sha256(Path(tmp) / f"t{t}" / "probe.safetensors"))
    a, b = probes
    texts, _ = responses_and_labels([args.pool])
    files = sorted({f for pattern in args.responses for f in glob.glob(pattern)})
    generated = [r["response"] for f in files for r in read_jsonl(f) if r.get("response") is not None]
    out = {"threads": args.threads, "weights_sha256": [s[:12] for s in shas],
           "weights_max_abs_diff": float(np.max(np.abs(a.weights - b.weights))),
           "weights_max_abs": float(np.max(np.abs(a.weights))), "bias_diff": abs(a.bias - b.bias)}
    for name, batch in (("pool", texts), ("generations", generated)):
        if not batch:
            continue
        pa, pb = a.predict_proba(batch), b.predict_proba(batch)
        out[name] = {"n": len(batch), "files": len(files) if name == "generations" else 1,
                     "verdicts_differ": int(np.sum((pa >= a.threshold) != (pb >= b.threshold))),
                     "max_abs_prob_diff": float(np.max(np.abs(pa - pb)))}
    print(json.dumps(out, indent=2))
    if args.json:
        atomic_write_json(Path(args.json), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
