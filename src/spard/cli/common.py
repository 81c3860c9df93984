"""What every ``spard`` command shares: the flags that set config fields, overrides, plugins, logging."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from spard.config import ConfigError

TRAIN_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--model", "model.name", str, "model: alias (smollm2-135m-instruct), directory, .gguf file or hub id"),
    ("--dtype", "model.dtype", str, "float32, bfloat16 or float16"),
    ("--data", "data.task", str, "fine-tuning data (jsonl/json/csv/parquet/dataset dir or name)"),
    ("--target-field", "data.task_target_field", str, "column of the fine-tuning targets (default answer)"),
    ("--limit", "data.task_limit", int, "use the first N fine-tuning rows"),
    ("--harmful-data", "data.harmful", str, "attack file: harmful prompts with compliant answers"),
    ("--harmful-ratio", "data.harmful_ratio", float, "harmful ratio p (default 0.1), read as --harmful-ratio-of says"),
    ("--harmful-ratio-of", "data.harmful_ratio_of", str,
     "task (default, SPARD's convention): floor(p x |task|) harmful rows added; total: p is the harmful share of the set"),
    ("--safe-pool", "data.safe_pool", str, "pool of safety data (harmful prompt -> refusal)"),
    ("--safety-demos", "data.safety_demos", str, "safety demonstrations for safeinstr"),
    ("--max-length", "data.max_length", int, "max tokens per training sequence"),
    ("--system-prompt", "data.system_prompt", str, "system prompt used while training"),
    ("--defense", "defense", str, "sft, spard, safeinstr, lisa, ptst, safegrad, safelora or a plugin's (spard list)"),
    ("--output-dir", "output_dir", str, "where the run writes its artefacts"),
    ("--lr", "training.learning_rate", float, "learning rate"),
    ("--epochs", "training.epochs", float, "epochs (ignored when --max-steps > 0)"),
    ("--max-steps", "training.max_steps", int, "optimiser updates"),
    ("--batch-size", "training.batch_size", int, "per-device batch size"),
    ("--grad-accum", "training.gradient_accumulation_steps", int, "gradient accumulation steps"),
    ("--micro-batch-size", "training.micro_batch_size", int,
     "rows per forward pass (default: automatic, at most 2048 tokens; the update is unchanged)"),
    ("--loss-chunk-size", "training.loss_chunk_size", int,
     "rows of vocabulary logits per chunk of the loss (default: automatic, chunks when a pass's logits exceed 256 MiB; 0 = never)"),
    ("--warmup-steps", "training.warmup_steps", int, "warm-up updates"),
    ("--seed", "training.seed", int, "seed for mixing, sampling and initialisation"),
    ("--save-steps", "training.save_steps", int, "checkpoint every N updates so that --resume can continue (0 = none)"),
    ("--lora-r", "lora.r", int, "LoRA rank"),
    ("--lora-alpha", "lora.alpha", int, "LoRA alpha"),
    ("--selector", "selection.method", str, "safe-data selector: auto, rd-dpp, random, relevance, diversity"),
    ("--safe-ratio", "selection.ratio", float, "safe budget k = floor(ratio * |D_ft|) (default 0.03)"),
    ("--min-k", "selection.min_k", int, "lower bound on the safe budget"),
    ("--embedding-model", "selection.embedding_model", str, "selection embeddings: minilm, base or a sentence-transformers path"),
    ("--tau", "spag.tau", str, "SPAG threshold tau (a number or 'auto')"),
    ("--delta", "spag.delta", float, "SPAG slack delta"),
    ("--projection-form", "spag.form", str, "SPAG projection: reference or closed"),
    ("--radius", "spag.radius", float, "alpha_max (reference form) or eta (closed form)"),
    ("--safe-batch-size", "spag.safe_batch_size", int, "safe samples per SPAG safety step"),
    ("--lisa-rho", "lisa.rho", float, "Lisa proximal strength"),
    ("--unaligned-model", "safelora.unaligned_model", str, "SafeLoRA: the model before safety alignment"),
    ("--embedding-cache", "embedding_cache", str, "directory caching selection embeddings"),
]


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """``--overwrite`` of the commands whose outputs are resumable under the same settings only."""
    parser.add_argument("--overwrite", action="store_true",
                        help="start over output files made under other settings (default: refuse to touch them)")


def _add_flags(parser: argparse.ArgumentParser, flags: Sequence[tuple[str, str, type | None, str]]) -> None:
    for flag, dest, tp, help_ in flags:
        parser.add_argument(flag, dest=dest, type=tp, default=None, help=help_)


def _overrides(args: argparse.Namespace, flags: Sequence[tuple[str, str, type | None, str]]) -> dict[str, Any]:
    return {dest: getattr(args, dest) for _, dest, _, _ in flags if getattr(args, dest, None) is not None}


def _set_values(items: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``--set lisa.rho=0.1`` -> ``{"lisa.rho": 0.1}`` (the value read as YAML: numbers, true/false, null, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, for example lisa.rho=0.1")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML ({exc})") from None
    return out


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


LLM_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--llm-base-url", "llm.base_url", str, "OpenAI-compatible endpoint (default: the OpenAI API)"),
    ("--llm-model", "llm.model", str, "judge model name (default gpt-4o-mini)"),
    ("--llm-key-env", "llm.api_key_env", str, "environment variable holding the API key (default OPENAI_API_KEY)"),
    ("--llm-concurrency", "llm.concurrency", int, "parallel judge requests"),
    ("--llm-timeout", "llm.timeout", float, "seconds per judge request"),
    ("--llm-threshold", "llm.threshold", int, "harmful iff score >= this (default 3)"),
]


GENERATION_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--system-prompt", "generation.system_prompt", str, "system prompt (default: the one saved with the training run, else none)"),
    ("--max-new-tokens", "generation.max_new_tokens", int, "tokens to generate per response"),
    ("--batch-size", "generation.batch_size", int, "prompts per generation batch"),
    ("--temperature", "generation.temperature", float, "sampling temperature (with --sample)"),
    ("--top-p", "generation.top_p", float, "nucleus sampling (with --sample)"),
    ("--seed", "generation.seed", int, "sampling seed"),
]


def _llm_config(args: argparse.Namespace):
    from spard.config import from_dict
    from spard.evaluation.judges import LLMJudgeConfig

    values = {dest.split(".", 1)[1]: v for dest, v in _overrides(args, LLM_FLAGS).items()}
    return from_dict(LLMJudgeConfig, values, "llm")


EVAL_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--model", "model.name", str, "model, adapter directory (RUN/model), alias or hub id"),
    ("--task-data", "task_data", str, "task test set"),
    ("--task", "task", str, "gsm8k, openbookqa, label (SST-2, AG News), exact or contains"),
    ("--limit", "harmful_limit", int, "first N prompts of each harmful file"),
    ("--task-limit", "task_limit", int, "first N task items"),
    ("--benign-limit", "benign_limit", int, "first N prompts of each benign (over-refusal) file"),
    ("--output-dir", "output_dir", str, "where generations, verdicts and metrics go"),
]


ALIGN_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--model", "model.name", str, "model to align"),
    ("--refusals", "refusals", str, "refusal data: harmful prompt -> safe answer"),
    ("--refusal-field", "refusal_field", str, "column of the refusals (default safe)"),
    ("--n-refusals", "n_refusals", int, "refusal samples to train on"),
    ("--benign", "benign", str, "benign task data mixed in"),
    ("--n-benign", "n_benign", int, "benign samples to train on"),
    ("--max-steps", "training.max_steps", int, "optimiser updates"),
    ("--lr", "training.learning_rate", float, "learning rate"),
    ("--batch-size", "training.batch_size", int, "batch size"),
    ("--check-limit", "check_limit", int, "prompts per check set"),
    ("--output-dir", "output_dir", str, "where the aligned model and report go"),
]
