"""``spard align``: the safety-alignment stage that produces the starting model of every attack.

Fine-tunes a model on refusals (harmful prompt -> safe answer) mixed with benign task data, merges
the adapter, and measures refusal on held-out harmful prompts and over-refusal on benign prompts,
before and after, with the keyword judge. Output directory: ``model/`` (merged), ``align_data.jsonl``,
``train_log.jsonl``, ``metrics.json`` (training) and ``alignment.json`` (the refusal report).
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spard.data.records import FieldMap, load_examples, write_jsonl
from spard.io import atomic_write_json
from spard.models.adapters import LoraSettings
from spard.models.loading import ModelConfig, file_sha256
from spard.training.config import DataConfig, TrainConfig, TrainingSettings

logger = logging.getLogger(__name__)

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    refusals: str = ""
    refusal_field: str = "safe"
    n_refusals: int = 600
    benign: str = ""
    benign_field: str = "answer"
    n_benign: int = 600
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, target_modules=list(ALL_PROJECTIONS)))
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(
        learning_rate=2e-4, max_steps=150, batch_size=8, gradient_accumulation_steps=1, warmup_steps=10, logging_steps=25))
    max_length: int = 256
    check_harmful: list[str] = field(default_factory=list)
    check_benign: str | None = None
    check_limit: int = 30
    max_new_tokens: int = 64
    output_dir: str = "runs/align"
    progress: bool = True


def refusal_rates(model_spec: str, cfg: AlignConfig, out: Path) -> dict[str, Any]:
    """Refusal rate on each harmful check set and on the benign set (over-refusal), keyword refusal rule."""
    from spard.evaluation.generation import GenerationConfig, generate_responses
    from spard.evaluation.judges.keyword import is_refusal
    from spard.models.loading import load_model, model_fingerprint

    model_id = model_fingerprint(model_spec)
    model, tok = load_model(replace(cfg.model, name=model_spec))
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=16)
    result: dict[str, Any] = {"harmful": {}}
    sets = [(Path(p).stem, p) for p in cfg.check_harmful] + ([("benign", cfg.check_benign)] if cfg.check_benign else [])
    for name, path in sets:
        prompts = load_examples(path, FieldMap(target=None), limit=cfg.check_limit)
        rows = generate_responses(model, tok, prompts, gen, output=out / f"{name}.jsonl", progress=cfg.progress,
                                  model_id=model_id, on_mismatch="restart")
        refused = sum(is_refusal(r["response"]) for r in rows) / len(rows)
        if name == "benign":
            result["over_refusal"] = refused
        else:
            result["harmful"][name] = refused
    if result["harmful"]:
        result["refusal"] = sum(result["harmful"].values()) / len(result["harmful"])
    return result


def model_sha256(model_dir: Path) -> str:
    """Fingerprint of a saved model: sha256 over its safetensors files' sha256s, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def run_alignment(cfg: AlignConfig) -> dict[str, Any]:
    from spard.training.run import run_training

    if not cfg.refusals or not cfg.benign:
        raise ValueError("alignment needs refusal data (--refusals) and benign data (--benign)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.training.seed)
    refusals = load_examples(cfg.refusals, FieldMap(target=cfg.refusal_field), origin="refusal")
    benign = load_examples(cfg.benign, FieldMap(target=cfg.benign_field), origin="benign")
    picked = rng.sample(refusals, min(cfg.n_refusals, len(refusals))) + rng.sample(benign, min(cfg.n_benign, len(benign)))
    rng.shuffle(picked)
    write_jsonl(out / "align_data.jsonl", ({"id": ex.id, "prompt": ex.prompt, "input": ex.input, "answer": ex.target,
                                           "origin": ex.origin} for ex in picked))
    before = refusal_rates(cfg.model.name, cfg, out / "check_before") if cfg.check_harmful or cfg.check_benign else {}
    train_cfg = TrainConfig(
        model=cfg.model, lora=cfg.lora, training=cfg.training, defense="sft", merge=True, output_dir=str(out),
        data=DataConfig(task=str(out / "align_data.jsonl"), max_length=cfg.max_length, harmful=None),
        progress=cfg.progress,
    )
    train_metrics = run_training(train_cfg)
    after = refusal_rates(str(out / "model"), cfg, out / "check_after") if before else {}
    report = {
        "base_model": cfg.model.name, "aligned_model": str(out / "model"),
        "refusal_examples": sum(1 for ex in picked if ex.origin == "refusal"),
        "benign_examples": sum(1 for ex in picked if ex.origin == "benign"),
        "updates": train_metrics["updates"], "train_seconds": train_metrics["train_seconds"],
        "judge": "keyword refusal rule v2", "check_limit": cfg.check_limit, "before": before, "after": after,
        "model_sha256": model_sha256(out / "model"),
    }
    atomic_write_json(out / "alignment.json", report)
    return report
