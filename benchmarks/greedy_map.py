"""Factored greedy MAP versus the dense-kernel greedy of the SPARD authors' code, on one problem.

Default problem: the real one of the core issue. Pool = ../shared/data/safety/safe_pool.jsonl (8646
rows), reference = GSM8K train + 10% BeaverTails attack prompts (8220 rows), all-MiniLM-L6-v2
embeddings, q = max(r, 0)^4, k = floor(0.03 * 8220) = 246. Without ../shared/data, or with
--synthetic, a random problem of the same shape is used instead.

Both run in this process, on the same inputs (kernel construction included in both): wall time is
the best of a few repeats, peak memory is what the method allocated (tracemalloc, which sees NumPy
buffers). Prints both, the speed-up, and whether the picks agree.

    .venv/bin/python benchmarks/greedy_map.py [--synthetic] [--k 246]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_problem(synthetic: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    from spard.selection.rd_dpp import max_cosine, quality

    if not synthetic and (SHARED / "safety" / "safe_pool.jsonl").exists():
        from spard.data import FieldMap, load_examples, mix_attack
        from spard.selection.embeddings import embed_texts
        from spard.selection.safe_set import make_encoder

        pool = load_examples(SHARED / "safety/safe_pool.jsonl", FieldMap(target=None))
        ref = load_examples(SHARED / "gsm8k/train.jsonl", FieldMap(target=None))
        ref = mix_attack(ref, load_examples(SHARED / "safety/attack/beavertails.jsonl", FieldMap(target=None)), 0.1, seed=0)
        enc = make_encoder("minilm")
        e_pool = embed_texts([x.embedding_text for x in pool], enc)
        e_ref = embed_texts([x.embedding_text for x in ref], enc)
        label = f"real: pool {len(pool)}, reference {len(ref)}, all-MiniLM-L6-v2 (d={e_pool.shape[1]})"
    else:
        rng = np.random.default_rng(seed)
        e_pool = rng.normal(size=(8646, 384)).astype(np.float32)
        e_ref = rng.normal(size=(8220, 384)).astype(np.float32)
        e_pool /= np.linalg.norm(e_pool, axis=1, keepdims=True)
        e_ref /= np.linalg.norm(e_ref, axis=1, keepdims=True)
        label = "synthetic: pool 8646, reference 8220, random unit vectors (d=384)"
    return e_pool, quality(max_cosine(e_pool, e_ref), 4.0), label


def run(method: str, emb: np.ndarray, q: np.ndarray, k: int, repeats: int) -> dict:
    """Best wall time over ``repeats`` runs and the peak memory the method allocated (tracemalloc)."""
    from spard.selection.dpp import greedy_map, greedy_map_dense
    from spard.selection.rd_dpp import dense_kernel, kernel_factor

    def once():
        if method == "factored":
            return greedy_map(kernel_factor(emb, q), k, eps=1e-6)
        return greedy_map_dense(dense_kernel(emb, q, 1e-6), k)

    tracemalloc.start()
    result = once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        walls.append(time.perf_counter() - start)
    return {"method": method, "wall_s": min(walls), "peak_alloc_mb": peak / 2**20, "indices": result.indices.tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--k", type=int, default=246)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    emb, q, label = build_problem(args.synthetic)
    fast = run("factored", emb, q, args.k, repeats=5)
    dense = run("dense", emb, q, args.k, repeats=2)
    same = fast["indices"] == dense["indices"]
    print(f"problem: {label}, k={args.k}")
    print(f"factored greedy MAP : {fast['wall_s']:8.3f} s   peak memory allocated {fast['peak_alloc_mb']:8.1f} MiB")
    print(f"dense-kernel greedy : {dense['wall_s']:8.3f} s   peak memory allocated {dense['peak_alloc_mb']:8.1f} MiB")
    print(f"speed-up            : {dense['wall_s'] / fast['wall_s']:8.1f}x")
    print(f"same picks, same order: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"problem": label, "k": args.k, "factored": fast, "dense": dense, "same": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
