"""``spard align``: the safety-alignment stage that produces the starting model of every attack.

Fine-tunes a model on refusals (harmful prompt -> safe answer) mixed with benign data, merges the
adapter, and measures, before and after, with the keyword refusal rule: refusal on held-out harmful
prompts and over-refusal (benign prompts refused) on each benign check set, every rate with its
Wilson 95% interval. Output directory: ``model/`` (merged), ``align_data.jsonl``, ``train_log.jsonl``,
``metrics.json`` (training) and ``alignment.json`` (the report).

The mix is the refusal file (``refusals``, ``n_refusals``), the benign file (``benign``, ``n_benign``)
and any further sources in ``mix`` (:class:`AlignSource`: a file, its target field, how many rows,
which rows to keep, and whether to replace the targets by the start model's own answers:
self-distillation, which keeps the model's helpfulness on the prompts it is given). A source may not
be one of the check sets: the sets over-refusal is measured on are never trained on.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spard.data.records import Example, FieldMap, load_examples, write_jsonl
from spard.io import atomic_write_json
from spard.models.adapters import LoraSettings
from spard.models.loading import ModelConfig, file_sha256
from spard.training.config import DataConfig, TrainConfig, TrainingSettings

logger = logging.getLogger(__name__)

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEEP = ("all", "refusal", "answer")


@dataclass
class AlignSource:
    """One more source of alignment data. ``keep``: ``all`` rows, only those whose target is a
    ``refusal`` by the keyword rule, or only those whose target is an ``answer`` (not a refusal; e.g.
    the pool's helpful replies to sensitive-looking prompts). ``self_distill``: train on the start
    model's own greedy answers to these prompts instead of the file's targets."""

    path: str
    field: str = "answer"
    n: int = 600
    keep: str = "all"
    self_distill: bool = False
    origin: str = "benign"

    def __post_init__(self) -> None:
        if self.keep not in KEEP:
            raise ValueError(f"align mix {self.path}: keep must be one of {KEEP}, got {self.keep!r}")
        if self.n < 0:
            raise ValueError(f"align mix {self.path}: n must be >= 0, got {self.n}")


@dataclass
class AlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    refusals: str = ""
    refusal_field: str = "safe"
    n_refusals: int = 600
    #: which refusal rows to keep (see :class:`AlignSource`); ``all`` is what the first version did
    refusal_keep: str = "all"
    benign: str = ""
    benign_field: str = "answer"
    n_benign: int = 600
    mix: list[AlignSource] = field(default_factory=list)
    distill_max_new_tokens: int = 128
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, target_modules=list(ALL_PROJECTIONS)))
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(
        learning_rate=2e-4, max_steps=150, batch_size=8, gradient_accumulation_steps=1, warmup_steps=10, logging_steps=25))
    max_length: int = 256
    check_harmful: list[str] = field(default_factory=list)
    #: benign prompt sets for over-refusal (a path or a list); never trained on
    check_benign: list[str] | str | None = None
    check_limit: int = 30
    max_new_tokens: int = 64
    output_dir: str = "runs/align"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.check_benign, str):
            self.check_benign = [self.check_benign]
        self.check_benign = list(self.check_benign or [])
        if self.refusal_keep not in KEEP:
            raise ValueError(f"align.refusal_keep must be one of {KEEP}, got {self.refusal_keep!r}")

    def sources(self) -> list[AlignSource]:
        """Every source of the mix: the refusal file, the benign file, then ``mix``."""
        out = [AlignSource(self.refusals, self.refusal_field, self.n_refusals, self.refusal_keep, origin="refusal")]
        if self.benign:
            out.append(AlignSource(self.benign, self.benign_field, self.n_benign))
        return out + list(self.mix)


def refusal_rates(model_spec: str, cfg: AlignConfig, out: Path) -> dict[str, Any]:
    """Refusal on each harmful check set and over-refusal on each benign check set (keyword refusal
    rule), with Wilson 95% intervals; ``refusal`` and ``over_refusal`` are the means over the sets."""
    from spard.evaluation.generation import GenerationConfig, generate_responses
    from spard.evaluation.judges.keyword import is_refusal
    from spard.evaluation.stats import rate_with_interval
    from spard.models.loading import load_model, model_fingerprint

    model_id = model_fingerprint(model_spec)
    model, tok = load_model(replace(cfg.model, name=model_spec))
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=16)
    result: dict[str, Any] = {"harmful": {}, "intervals": {}}
    benign_names = [Path(p).stem for p in cfg.check_benign]
    sets = [(Path(p).stem, p) for p in cfg.check_harmful] + list(zip(benign_names, cfg.check_benign, strict=True))
    for name, path in sets:
        prompts = load_examples(path, FieldMap(target=None), limit=cfg.check_limit)
        rows = generate_responses(model, tok, prompts, gen, output=out / f"{name}.jsonl", progress=cfg.progress,
                                  model_id=model_id, on_mismatch="restart")
        refused = sum(is_refusal(r["response"]) for r in rows)
        result["intervals"][name] = rate_with_interval(refused, len(rows))
        if name in benign_names:
            result.setdefault("benign", {})[name] = refused / len(rows)
        else:
            result["harmful"][name] = refused / len(rows)
    if result["harmful"]:
        result["refusal"] = sum(result["harmful"].values()) / len(result["harmful"])
    if result.get("benign"):
        result["over_refusal"] = sum(result["benign"].values()) / len(result["benign"])
    return result


def _check_not_trained_on(cfg: AlignConfig) -> None:
    checks = {Path(p).resolve(): p for p in [*cfg.check_harmful, *cfg.check_benign]}
    for source in cfg.sources():
        if Path(source.path).resolve() in checks:
            raise ValueError(f"align: {source.path} is both training data and a check set; the sets over-refusal "
                             "and refusal are measured on must never be trained on")


def pick_source(source: AlignSource, rng: random.Random) -> list[Example]:
    """``source.n`` rows of ``source`` (after ``keep``), drawn with ``rng``."""
    from spard.evaluation.judges.keyword import is_refusal

    needs_targets = not source.self_distill or source.keep != "all"  # keep filters on the file's targets
    rows = load_examples(source.path, FieldMap(target=source.field if needs_targets else None), origin=source.origin)
    if source.keep != "all":
        want = source.keep == "refusal"
        rows = [ex for ex in rows if ex.target is not None and is_refusal(ex.target) == want]
    if len(rows) < source.n:
        logger.warning("align: %s has %d rows after keep=%s, fewer than n=%d: taking them all",
                       source.path, len(rows), source.keep, source.n)
    return rng.sample(rows, min(source.n, len(rows)))


def self_distilled(examples: list[Example], cfg: AlignConfig, out: Path, name: str) -> list[Example]:
    """``examples`` with their targets replaced by the start model's greedy answers (cached, resumable)."""
    from spard.evaluation.generation import GenerationConfig, generate_responses
    from spard.models.loading import load_model, model_fingerprint

    model, tok = load_model(cfg.model)
    gen = GenerationConfig(max_new_tokens=cfg.distill_max_new_tokens, batch_size=16)
    rows = generate_responses(model, tok, examples, gen, output=out / "distill" / f"{name}.jsonl",
                              progress=cfg.progress, model_id=model_fingerprint(cfg.model.name), on_mismatch="restart")
    answers = {r["id"]: r["response"] for r in rows}
    kept = [replace(ex, target=answers[ex.id]) for ex in examples if answers[ex.id].strip()]
    logger.info("align: self-distilled %d answers for %s", len(kept), name)
    return kept


def model_sha256(model_dir: Path) -> str:
    """Fingerprint of a saved model: sha256 over its safetensors files' sha256s, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def run_alignment(cfg: AlignConfig) -> dict[str, Any]:
    from spard.training.run import run_training

    if not cfg.refusals or not (cfg.benign or cfg.mix):
        raise ValueError("alignment needs refusal data (--refusals) and benign data (--benign or mix)")
    _check_not_trained_on(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metrics.json").exists() and not (out / "model" / "config.json").exists():
        # a committed report whose model is not here (a fresh clone): that training is not finished here
        logger.info("align: %s has the metrics of an earlier alignment but not its model; training it again", out)
        (out / "metrics.json").unlink()
    rng = random.Random(cfg.training.seed)
    picked: list[Example] = []
    counts: dict[str, int] = {}
    for i, source in enumerate(cfg.sources()):
        rows = pick_source(source, rng)
        if source.self_distill:
            rows = self_distilled(rows, cfg, out, f"{i}-{Path(source.path).stem}")
        label = f"{source.origin}:{Path(source.path).stem}" + (":distilled" if source.self_distill else "")
        counts[label] = counts.get(label, 0) + len(rows)
        picked += rows
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
        "benign_examples": sum(1 for ex in picked if ex.origin != "refusal"),
        "mix": counts,
        "updates": train_metrics["updates"], "train_seconds": train_metrics["train_seconds"],
        "judge": "keyword refusal rule v2", "check_limit": cfg.check_limit, "before": before, "after": after,
        "model_sha256": model_sha256(out / "model"),
    }
    atomic_write_json(out / "alignment.json", report)
    return report
