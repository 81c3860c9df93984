"""GPU-shaped check: SFT and SPARD LoRA updates at the paper's batch on a 7B-shaped model, and batched generation.

    python benchmarks/gpu_check.py                      # on CUDA: Qwen2.5-7B-shaped config, random weights, bf16
    python benchmarks/gpu_check.py --shape tiny         # anywhere (the test suite runs this on CPU)

No download: the model is built from a config with random weights (the speed and memory of a 7B
fine-tune do not depend on what the weights are). Settings: LoRA r 32 on q, k, v, o (the paper's),
bf16 autocast on CUDA, gradient checkpointing, sdpa attention, utility batch ``--batch`` rows per update
in micro-batches of ``--micro`` (gradient accumulation), and for SPARD ``--safe`` safe rows per update
(SPAG's projection step). Prints seconds per update of each (median after the first update), their
ratio, peak GPU memory, and the new tokens per second of greedy batched generation; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

SHAPES = {
    # Qwen2.5-7B-Instruct's shape (its config.json), 7.6B parameters
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512),
}


class StepTimer(TrainerCallback):
    """Records the wall time of every optimiser update: from the end of one update (or the start of
    training) to the end of the next, so data, passes, optimiser and hooks all count."""

    def __init__(self):
        self.times: list[float] = []
        self._last = 0.0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._now()
        self.times.append(now - self._last)
        self._last = now


def build_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**SHAPES[shape], tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.pad_token_id = 0
    return model


def random_rows(n: int, length: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=g).tolist()
    return [{"input_ids": row, "attention_mask": [1] * length, "labels": row} for row in ids]


def train_updates(defense: str, shape: str, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict:
    from transformers import TrainingArguments, default_data_collator

    from spard.data.formatting import as_dataset
    from spard.models.adapters import LoraSettings, prepare_for_training
    from spard.training.base import SafetyTrainer
    from spard.training.spag import SPAGConfig, SPAGTrainer

    model = prepare_for_training(build_model(shape, device, dtype), LoraSettings(r=32, alpha=8))
    vocab = SHAPES[shape]["vocab_size"]
    train = as_dataset(random_rows(args.batch * args.updates, args.length, vocab, seed=1))
    safe = as_dataset(random_rows(max(64, args.safe), args.length, vocab, seed=2))
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=args.micro,
                                  gradient_accumulation_steps=args.batch // args.micro, max_steps=args.updates,
                                  learning_rate=1e-4, warmup_steps=0, bf16=cuda, gradient_checkpointing=True,
                                  gradient_checkpointing_kwargs={"use_reentrant": False}, report_to=[],
                                  save_strategy="no", logging_steps=1000, disable_tqdm=True,
                                  remove_unused_columns=False, use_cpu=not cuda)
        kwargs = dict(model=model, args=targs, train_dataset=train, data_collator=default_data_collator,
                      callbacks=[timer])
        if defense == "spard":
            trainer = SPAGTrainer(**kwargs, safe_dataset=safe,
                                  spag_config=SPAGConfig(tau="auto", safe_batch_size=args.safe, form="closed"))
        else:
            trainer = SafetyTrainer(**kwargs)
        trainer.train()
        summary = trainer.summary()
    steady = timer.times[1:] or timer.times
    out = {"defense": defense, "updates": len(timer.times), "seconds_per_update": statistics.median(steady),
           "first_update_seconds": timer.times[0],
           "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    if defense == "spard":
        out["projections_fired"] = summary.get("projections_fired")
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def generation_speed(shape: str, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict:
    model = build_model(shape, device, dtype).eval()
    vocab = SHAPES[shape]["vocab_size"]
    prompts = torch.randint(3, vocab, (args.gen_batch, args.gen_prompt), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        model.generate(prompts[:, :8], max_new_tokens=2, do_sample=False)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.gen_new,
                             min_new_tokens=args.gen_new, do_sample=False)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    new = (out.shape[1] - prompts.shape[1]) * out.shape[0]
    return {"batch": args.gen_batch, "new_tokens": new, "seconds": seconds, "new_tokens_per_second": new / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="model shape (default: qwen2.5-7b on CUDA, tiny elsewhere)")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128, help="utility rows per update (the paper's)")
    parser.add_argument("--micro", type=int, default=16, help="rows per forward/backward pass")
    parser.add_argument("--safe", type=int, default=4, help="SPAG safe rows per update (the paper's)")
    parser.add_argument("--length", type=int, default=256, help="tokens per training row")
    parser.add_argument("--gen-batch", type=int, default=32)
    parser.add_argument("--gen-prompt", type=int, default=64)
    parser.add_argument("--gen-new", type=int, default=64)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = args.shape or ("qwen2.5-7b" if device == "cuda" else "tiny")
    if args.batch % args.micro:
        parser.error(f"--micro {args.micro} must divide --batch {args.batch}")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.perf_counter()
    runs = [train_updates(d, shape, args, device, dtype) for d in ("sft", "spard")]
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shape": shape,
              "settings": {k: v for k, v in vars(args).items() if k != "json"}, "runs": runs,
              "spard_over_sft": runs[1]["seconds_per_update"] / runs[0]["seconds_per_update"],
              "generation": generation_speed(shape, args, device, dtype)}
    result["wall_seconds"] = time.perf_counter() - started
    for r in runs:
        mem = f", peak GPU memory {r['peak_gpu_memory_gib']:.1f} GiB" if r["peak_gpu_memory_gib"] is not None else ""
        print(f"{r['defense']}: {r['seconds_per_update']:.2f} s/update (first {r['first_update_seconds']:.2f}){mem}")
    print(f"SPARD / SFT per update: {result['spard_over_sft']:.3f}")
    g = result["generation"]
    print(f"generation: {g['new_tokens_per_second']:.0f} new tokens/s (batch {g['batch']}); wall {result['wall_seconds']:.0f}s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
