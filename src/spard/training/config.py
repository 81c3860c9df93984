"""The configuration of one fine-tuning run (``spard train``), loadable from YAML.

The shared sections live here. Each defense's own settings are a dataclass in its defense module
(``spard.defenses.lisa.LisaConfig``...), registered with the defense and read from the YAML key of the
same name (``lisa: {rho: 0.1}``): :class:`TrainConfig` resolves those sections through
:data:`spard.defenses.base.DEFENSE_SECTIONS`, so a new defense needs no edit here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from spard.data.config import DataConfig
from spard.models.adapters import LoraSettings
from spard.models.loading import ModelConfig
from spard.selection.selectors import SelectionConfig

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
    #: the loss over the vocabulary in chunks of this many rows of logits, each recomputed in the backward
    #: pass (:mod:`spard.training.loss`; same loss, less memory); None = automatic: chunks of 1024 rows when
    #: one pass's float32 logits over every position would exceed 256 MiB (8 x 256 tokens of SmolLM2);
    #: 0 = never (the library's loss, what every run before this setting used)
    loss_chunk_size: int | None = None
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
    #: recompute activations in the backward pass (less memory, about a third more compute); for large models
    gradient_checkpointing: bool = False


def defense_sections() -> dict[str, type]:
    """Every registered defense section -> its settings dataclass (the built-in defenses loaded)."""
    import spard.defenses  # noqa: F401  (registers the built-in defenses)
    from spard.defenses.base import DEFENSE_SECTIONS

    return {name: DEFENSE_SECTIONS.get(name) for name in DEFENSE_SECTIONS.names()}


@dataclass
class TrainConfig:
    """One fine-tuning run. Per-defense settings are in ``sections`` (by YAML key, ``section(name)``
    or attribute access ``cfg.lisa``); a section not given holds its dataclass's defaults. In YAML and
    in :meth:`to_dict` the sections are top-level keys, as if they were fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    defense: str = "spard"
    output_dir: str = "runs/train"
    merge: bool = False
    embedding_cache: str | None = "default"
    progress: bool = True
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """The settings under the YAML key ``name`` (its defaults when not given; kept, so edits stick)."""
        known = defense_sections()
        if name not in known:
            raise ValueError(f"no defense has a settings section {name!r} (known: {', '.join(sorted(known))})")
        if name not in self.sections:
            self.sections[name] = known[name]()
        return self.sections[name]

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not fields: ``cfg.spag``, ``cfg.lisa``...
        if name.startswith("_") or name == "sections":
            raise AttributeError(name)
        try:
            return self.section(name)
        except ValueError:
            raise AttributeError(f"TrainConfig has no field or defense section {name!r}") from None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str) -> TrainConfig:
        """Build from a mapping whose defense sections are top-level keys (YAML, flags, ``config.yaml``)."""
        from spard.config import ConfigError, build_dataclass, from_dict

        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = defense_sections()
        fields = {f.name for f in dataclasses.fields(cls)} - {"sections"}
        unknown = sorted(set(data) - fields - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(fields | set(known)))})")
        sections = {name: from_dict(known[name], value, f"{where}.{name}") for name, value in data.items() if name in known}
        shared = {name: value for name, value in data.items() if name in fields}
        config = build_dataclass(cls, shared, where)
        config.sections = sections
        return config

    def to_mapping(self) -> dict[str, Any]:
        """Shared fields, then every registered defense section (defaults where not given) as top-level keys."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) if dataclasses.is_dataclass(getattr(self, f.name))
               else getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        for name in defense_sections():
            out[name] = dataclasses.asdict(self.section(name))
        return out


__all__ = ["MICRO_BATCH_TOKENS", "DataConfig", "TrainConfig", "TrainingSettings", "defense_sections", "micro_batching"]
