"""LoRA through peft, or full fine-tuning, and saving the result."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    """LoRA hyperparameters; the defaults are SPARD's (r 32, alpha 8 on q, k, v, o). ``enabled=False`` trains all weights."""

    enabled: bool = True
    r: int = 32
    alpha: int = 8
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def prepare_for_training(model: Any, lora: LoraSettings) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter, or leave every weight trainable for full fine-tuning.

    A model that already carries an adapter (loaded from an adapter directory) is merged first, so the
    new adapter trains on top of the loaded weights.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if getattr(model, "is_loaded_in_4bit", False):  # QLoRA: norms in float32, inputs that carry gradients
        from peft import prepare_model_for_kbit_training

        if not lora.enabled:
            raise ValueError("a 4-bit model trains only through LoRA (QLoRA): keep lora.enabled")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if not lora.enabled:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("LoRA r=%d alpha=%d on %s: %d of %d parameters trainable", lora.r, lora.alpha, lora.target_modules, trainable, total)
    return model


def save_trained(model: Any, tokenizer: Any, output_dir: str | Path, *, merge: bool = False) -> Path:
    """Save the adapter (default) or the merged full model, with the tokenizer, as safetensors."""
    from peft import PeftModel

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if merge and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir
