"""``spard demo`` / ``make demo``: align, attack, defend and evaluate, offline, in about 15 minutes.

Uses the embedded default model (SmolLM2-135M-Instruct) and the self-written toy benchmark
(:mod:`spard.bench.toydata`): its attack teaches compliance-shaped answers with no real content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spard.bench.config import BenchConfig
from spard.bench.toydata import write_toy_benchmark
from spard.config import from_dict
from spard.models.loading import DEFAULT_MODEL


def demo_config(output_dir: str | Path, model: str = DEFAULT_MODEL, steps: int = 40) -> BenchConfig:
    out = Path(output_dir)
    data = write_toy_benchmark(out / "data", n_task=400, n_test=30, seed=0)
    raw: dict[str, Any] = {
        "name": "demo",
        "output_dir": str(out),
        "align": {
            "model": {"name": model},
            "refusals": str(data["safe_pool"]), "n_refusals": 240,
            "benign": str(data["task"]), "n_benign": 240,
            "training": {"learning_rate": 3e-4, "max_steps": 60, "batch_size": 8, "gradient_accumulation_steps": 1,
                         "warmup_steps": 5, "logging_steps": 20},
            "max_length": 128,
            "check_harmful": [str(data["eval"])], "check_benign": str(data["task_test"]),
            "check_limit": 20, "max_new_tokens": 32,
        },
        "train": {
            "data": {"task": str(data["task"]), "safe_pool": str(data["safe_pool"]), "max_length": 128},
            "lora": {"r": 16, "alpha": 32},
            "training": {"learning_rate": 3e-4, "max_steps": steps, "batch_size": 8, "gradient_accumulation_steps": 1,
                         "warmup_steps": 0, "logging_steps": 20},
            "selection": {"min_k": 32, "embedding_model": "minilm"},
            "spag": {"tau": "auto", "delta": 0.0, "form": "closed", "radius": 1.0, "safe_batch_size": 4},
        },
        "attacks": {"toy": str(data["attack"])},
        "eval_sets": {"toy": str(data["eval"])},
        "eval": {"harmful_limit": 40, "task_data": str(data["task_test"]), "task": "gsm8k", "task_limit": 30,
                 "judges": ["keyword"], "generation": {"max_new_tokens": 40, "batch_size": 16}},
        "defenses": ["sft", "spard"],
        "grids": [{"models": ["@aligned"], "attacks": ["toy"], "defenses": ["sft", "spard"], "harmful_ratios": [0.2],
                   "seeds": [0]}],
    }
    return from_dict(BenchConfig, raw, "demo")
