"""Batched generation throughput as a multiple of one-at-a-time decoding, measured in the same run.

    .venv/bin/python benchmarks/generation_throughput.py [--model M] [--prompts 32] [--batch-size 16] [--max-new-tokens 64]

Prompts: the first N of ../shared/data/safety/eval/beavertails.jsonl (prompts only), else the toy
benchmark's held-out requests. Greedy decoding both ways; also checks the responses agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> int:
    from spard.data import FieldMap, load_examples
    from spard.evaluation.generation import GenerationConfig, generate_responses
    from spard.models import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    source = SHARED / "safety/eval/beavertails.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        if not source.exists():
            from spard.bench.toydata import write_toy_benchmark

            source = write_toy_benchmark(Path(tmp))["eval"]
        examples = load_examples(source, FieldMap(target=None), limit=args.prompts)
    model, tok = load_model(args.model)
    timings, outputs = {}, {}
    for label, batch in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=batch)
        start = time.perf_counter()
        rows = generate_responses(model, tok, examples, cfg, progress=False)
        timings[label] = time.perf_counter() - start
        outputs[label] = [r["response"] for r in rows]
        tokens = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in outputs[label])
        print(f"{label:>16}: {timings[label]:7.1f} s for {len(rows)} responses, {tokens / timings[label]:7.1f} new tokens/s")
    single, batched = timings["one at a time"], timings[f"batched ({args.batch_size})"]
    same = sum(a == b for a, b in zip(*outputs.values(), strict=True))
    print(f"speed-up of batched generation: {single / batched:.1f}x ({args.model}, {len(examples)} prompts, "
          f"max {args.max_new_tokens} new tokens); identical responses: {same}/{len(examples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
