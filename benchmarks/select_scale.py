"""RD-DPP at scale: time and peak RSS of each stage for pools of 10^4..10^6 synthetic unit embeddings.

    python benchmarks/select_scale.py                                  # N = 1e4, 1e5, 1e6; M = 1e4; d = 384; k = 300
    python benchmarks/select_scale.py --sizes 10000 --spread iid --json /tmp/x.json

Each pool size runs in its own process (a clean peak RSS). Stages: ``data`` (making the synthetic pool
and reference, float32: the input a user would memory-map from ``--pool-embeddings``), ``relevance``
(blockwise max cosine) and ``greedy`` (screened greedy MAP, k picks: the factor B = diag(q) E, float32,
is formed only for the candidates, see ``spard.selection.dpp.greedy_map_screened``). Peak RSS
is sampled every 20 ms during each stage. ``--spread clustered`` (default) draws pool and reference
around shared cluster centres, so relevance has a realistic spread (a few pool clusters close to the
task, most far); ``iid`` draws uniform directions.

The exactness check (``--check`` items, default 20,000) runs the float32 pipeline (blockwise relevance,
float32 factor, eager greedy) and the float64 one (direct relevance, float64 factor, lazy greedy) on a
subsample and reports whether their picks are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 20 ms), in bytes."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic(n: int, m: int, d: int, spread: str, seed: int = 0, clusters: int = 256, noise: float = 0.08,
              block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Pool (n x d) and reference (m x d) unit float32 rows. ``clustered``: pool around ``clusters`` centres;
    the reference around 8 of them, so only the pool items of those clusters are relevant."""
    rng = np.random.default_rng(seed)
    pool = np.empty((n, d), dtype=np.float32)
    if spread == "iid":
        for s in range(0, n, block):
            pool[s : s + block] = unit_rows(rng.standard_normal((min(block, n - s), d), dtype=np.float32))
        return pool, unit_rows(rng.standard_normal((m, d), dtype=np.float32))
    centres = unit_rows(rng.standard_normal((clusters, d), dtype=np.float32))
    for s in range(0, n, block):
        size = min(block, n - s)
        rows = centres[rng.integers(0, clusters, size)] + noise * rng.standard_normal((size, d), dtype=np.float32)
        pool[s : s + size] = unit_rows(rows)
    task = rng.choice(clusters, 8, replace=False)
    reference = centres[rng.choice(task, m)] + noise * rng.standard_normal((m, d), dtype=np.float32)
    return pool, unit_rows(reference)


def run_one(n: int, m: int, d: int, k: int, spread: str, beta: float) -> dict:
    from spard.selection.dpp import greedy_map_screened
    from spard.selection.rd_dpp import max_cosine, quality

    stages = {}
    with PeakRSS() as s:
        pool, reference = synthetic(n, m, d, spread)
    stages["data"] = s
    with PeakRSS() as s:
        rel = max_cosine(pool, reference)
    stages["relevance"] = s
    with PeakRSS() as s:
        result = greedy_map_screened(pool, quality(rel, beta), k, dtype=np.float32)
    stages["greedy"] = s
    total = sum(st.seconds for name, st in stages.items() if name != "data")
    return {"n": n, "m": m, "d": d, "k": k, "spread": spread, "picked": len(result.indices),
            "relevance_quantiles": [float(x) for x in np.quantile(rel, [0.5, 0.9, 0.99, 1.0])],
            "seconds": {name: round(st.seconds, 2) for name, st in stages.items()},
            "selection_seconds": round(total, 2),
            "peak_rss_gib": {name: round(st.peak / 2**30, 3) for name, st in stages.items()},
            "peak_rss_gib_max": round(max(st.peak for st in stages.values()) / 2**30, 3)}


def compare_pipelines(pool: np.ndarray, reference: np.ndarray, k: int, beta: float, **blocks: int) -> dict:
    """The float32 pipeline (blockwise relevance, screened greedy, float32 factor) against the float64 one
    (direct relevance, full greedy): do they pick the same items?"""
    from spard.selection.dpp import greedy_map, greedy_map_screened
    from spard.selection.rd_dpp import kernel_factor, max_cosine, quality

    rel32 = max_cosine(pool, reference, **blocks)
    rel64 = (pool.astype(np.float64) @ reference.astype(np.float64).T).max(axis=1)
    fast = greedy_map_screened(pool, quality(rel32, beta), k, dtype=np.float32).indices
    exact = greedy_map(kernel_factor(pool, quality(rel64, beta), dtype=np.float64), k).indices
    same = bool(np.array_equal(fast, exact))
    return {"k": k, "relevance_max_abs_diff": float(np.abs(rel32 - rel64).max()), "same_picks": same,
            "first_difference": None if same else int(np.argmax(fast != exact))}


def exactness(n: int, m: int, d: int, k: int, spread: str, beta: float) -> dict:
    """The two pipelines on a synthetic subsample."""
    pool, reference = synthetic(n, m, d, spread, seed=1)
    return {"n": n, "spread": spread, **compare_pipelines(pool, reference, k, beta, pool_block=4096, reference_block=1024)}


def real_pool_check(ks: list[int]) -> dict | None:
    """On the real 8,646-item safety pool (MiniLM embeddings, reference: the first 1,000 GSM8K and SST-2
    training prompts), do the float32 and float64 pipelines pick the same items? None without ../shared."""
    from spard.data.records import FieldMap, load_examples
    from spard.selection.embeddings import embed_texts
    from spard.selection.safe_set import make_encoder

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (data / "safety" / "safe_pool.jsonl").is_file():
        return None
    encoder = make_encoder("minilm")
    pool = embed_texts([ex.embedding_text for ex in load_examples(data / "safety" / "safe_pool.jsonl", FieldMap(target="safe"))],
                       encoder, "default")
    out = {"pool": len(pool), "checks": []}
    for task in ("gsm8k", "sst2"):
        ref_rows = load_examples(data / task / "train.jsonl", FieldMap(target=None), limit=1000)
        ref = embed_texts([ex.embedding_text for ex in ref_rows], encoder, "default")
        for k in ks:
            check = compare_pipelines(pool, ref, k, 4.0)
            out["checks"].append({"reference": task, "k": k, "same_picks": check["same_picks"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reference", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=300)
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--spread", choices=["clustered", "iid"], default="clustered")
    parser.add_argument("--check", type=int, default=20_000, help="subsample size of the float32-vs-float64 check (0: skip)")
    parser.add_argument("--real-k", type=int, nargs="*", default=[64, 300],
                        help="budgets of the check on the real safety pool (skipped without ../shared)")
    parser.add_argument("--json", default="results/select_scale/select_scale.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size in this process
    parser.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        fn = exactness if args.exact else run_one
        print(json.dumps(fn(args.one, args.reference, args.dim, args.k, args.spread, args.beta)))
        return 0
    results = {"machine": f"{os.cpu_count()} CPUs", "runs": [], "exactness": None}
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--reference", str(args.reference), "--dim", str(args.dim),
               "--k", str(args.k), "--spread", args.spread, "--beta", str(args.beta)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(json.dumps(out))
        results["runs"].append(out)
    if args.check:
        cmd = [sys.executable, __file__, "--one", str(args.check), "--exact", "--reference", str(min(args.reference, 2000)),
               "--dim", str(args.dim), "--k", str(args.k), "--spread", args.spread, "--beta", str(args.beta)]
        results["exactness"] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(json.dumps(results["exactness"]))
    if args.real_k:
        results["real_pool"] = real_pool_check(args.real_k)
        print(json.dumps(results["real_pool"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    from spard.io import atomic_write_json

    atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
