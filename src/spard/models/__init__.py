"""Models: loading (hub id, directory, GGUF, alias), LoRA or full fine-tuning, saving."""

from spard.models.adapters import LoraSettings, prepare_for_training, save_trained
from spard.models.loading import (
    DEFAULT_MODEL,
    MODEL_ALIASES,
    ModelConfig,
    ModelNotFoundError,
    clear_quantization,
    load_model,
    load_tokenizer,
    minilm_path,
    resolve_model_path,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ALIASES",
    "LoraSettings",
    "ModelConfig",
    "ModelNotFoundError",
    "clear_quantization",
    "load_model",
    "load_tokenizer",
    "minilm_path",
    "prepare_for_training",
    "resolve_model_path",
    "save_trained",
]
