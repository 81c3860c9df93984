"""Embedding throughput of the selection encoder (all-MiniLM-L6-v2): prompts per second, cold and cached.

    python benchmarks/embed_throughput.py [--n 2000] [--batch-size 32] [--json results/select_scale/embed_throughput.json]

The first N prompts of the safety pool (the toy pool without ../shared) are embedded three ways in one
run: in file order, batch by batch (``unsorted``: every batch padded to its longest prompt); through
sentence-transformers' ``encode`` as spard calls it (``sorted``: it orders the texts by length, so
batches hold prompts of similar length); and again through spard's embedding cache once it holds them
(``cached``: a dictionary lookup by sha256 of each text). Ratios are against ``unsorted``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def prompts(n: int) -> tuple[list[str], str]:
    from spard.data.records import FieldMap, load_examples

    path = SHARED / "safety" / "safe_pool.jsonl"
    source = "shared safety pool"
    if not path.is_file():
        from spard.bench.toydata import write_toy_benchmark

        path = write_toy_benchmark(Path(tempfile.mkdtemp()) / "toy")["safe_pool"]
        source = "toy pool"
    return [ex.embedding_text for ex in load_examples(path, FieldMap(target="safe"), limit=n)], source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default="results/select_scale/embed_throughput.json")
    args = parser.parse_args()
    from spard.selection.embeddings import embed_texts
    from spard.selection.safe_set import make_encoder

    texts, source = prompts(args.n)
    encoder = make_encoder("minilm", batch_size=args.batch_size)
    encoder.encode(texts[:64])  # warm-up
    started = time.perf_counter()
    unsorted = np.vstack([encoder.model.encode(texts[i:i + args.batch_size], batch_size=args.batch_size,
                                               normalize_embeddings=True, show_progress_bar=False)
                          for i in range(0, len(texts), args.batch_size)])
    t_unsorted = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        cold = embed_texts(texts, encoder, cache)
        t_sorted = time.perf_counter() - started
        started = time.perf_counter()
        warm = embed_texts(texts, encoder, cache)
        t_cached = time.perf_counter() - started
    result = {"source": source, "n": len(texts), "batch_size": args.batch_size,
              "mean_chars": float(np.mean([len(t) for t in texts])),
              "prompts_per_second": {"unsorted": len(texts) / t_unsorted, "sorted": len(texts) / t_sorted,
                                     "cached": len(texts) / t_cached},
              "speedup_vs_unsorted": {"sorted": t_unsorted / t_sorted, "cached": t_unsorted / t_cached},
              "max_abs_difference_sorted_vs_unsorted": float(np.abs(cold - unsorted).max()),
              "cached_equals_cold": bool(np.array_equal(cold, warm))}
    print(json.dumps(result, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    from spard.io import atomic_write_json

    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
