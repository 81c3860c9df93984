"""The configuration of one fine-tuning run (``spard train``), loadable from YAML.

The shared sections live here; each defense's own settings are a dataclass in its defense module
(``spard.defenses.lisa.LisaConfig``...), a section of :class:`TrainConfig` under the same YAML key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spard.data.config import DataConfig
from spard.defenses.lisa import LisaConfig
from spard.defenses.ptst import PTSTConfig
from spard.defenses.safegrad import SafeGradConfig
from spard.defenses.safeinstr import SafeInstrConfig
from spard.defenses.safelora import SafeLoRAConfig
from spard.models.adapters import LoraSettings
from spard.models.loading import ModelConfig
from spard.selection.selectors import SelectionConfig
from spard.training.spag import SPAGConfig

#: A micro-batch holds at most this many tokens by default: 8 x 256 tokens of SmolLM2-135M (vocabulary
#: 49,152) peak near 3 GB here (docs/results.md); 32 x 256 in one pass grew past 20 GB.
MICRO_BATCH_TOKENS = 2048


def micro_batching(batch_size: int, accumulation: int, max_length: int, micro: int | None = None) -> tuple[int, int]:
    """``(micro-batch, accumulation steps)`` that make one update of ``batch_size x accumulation`` rows in
    passes of ``micro`` rows: ``micro`` as given (it must divide ``batch_size``), or by default the largest
    divisor of ``batch_size`` with ``micro x max_length <= MICRO_BATCH_TOKENS`` (at least 1)."""
    if micro is None:
        cap = max(1, MICRO_BATCH_TOKENS // max(1, max_length))
        micro = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= cap)
    if micro < 1 or batch_size % micro:
        raise ValueError(f"training.micro_batch_size: {micro} must be >= 1 and divide training.batch_size ({batch_size})")
    return micro, accumulation * (batch_size // micro)


@dataclass
class TrainingSettings:
    """Optimiser and schedule; defaults are the SPARD paper's. ``max_steps > 0`` overrides ``epochs``."""

    learning_rate: float = 5e-5
    epochs: float = 10.0
    max_steps: int = -1
    #: rows per update on each process (before ``gradient_accumulation_steps``); the effective batch
    batch_size: int = 32
    gradient_accumulation_steps: int = 4
    #: rows per forward/backward pass; None = automatic: the largest divisor of ``batch_size`` whose
    #: ``micro x data.max_length`` stays within :data:`MICRO_BATCH_TOKENS` tokens. The update is the same
    #: (``batch_size / micro`` more accumulation steps); only peak memory changes. Memory grows with
    #: micro-batch x length x vocabulary (the float32 logits and their gradient dominate for small models).
    micro_batch_size: int | None = None
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    #: Seeds the poisoned mix, the safe-set draw (unless ``selection.seed`` is set), sampling and initialisation.
    seed: int = 42
    logging_steps: int = 10
    #: Write a checkpoint every this many updates (the last one is kept) so that ``--resume`` can
    #: continue an interrupted run; 0 = none.
    save_steps: int = 0
    bf16: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    defense: str = "spard"
    spag: SPAGConfig = field(default_factory=SPAGConfig)
    safeinstr: SafeInstrConfig = field(default_factory=SafeInstrConfig)
    lisa: LisaConfig = field(default_factory=LisaConfig)
    ptst: PTSTConfig = field(default_factory=PTSTConfig)
    safegrad: SafeGradConfig = field(default_factory=SafeGradConfig)
    safelora: SafeLoRAConfig = field(default_factory=SafeLoRAConfig)
    output_dir: str = "runs/train"
    merge: bool = False
    embedding_cache: str | None = "default"
    progress: bool = True


__all__ = ["MICRO_BATCH_TOKENS", "DataConfig", "LisaConfig", "PTSTConfig", "SafeGradConfig", "SafeInstrConfig", "SafeLoRAConfig",
           "TrainConfig", "TrainingSettings", "micro_batching"]
