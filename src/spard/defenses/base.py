"""The interface every defense implements, and the registries ``spard train --defense`` reads.

A defense is one module: its settings dataclass (``config_class``, read from the run config's YAML
section ``section``, by default the defense's name), its trainer if it needs one, and ``@register``.
Nothing else in spard needs an edit: :class:`~spard.training.config.TrainConfig` finds the section
through :data:`DEFENSE_SECTIONS`, ``spard train`` and ``spard bench`` find the defense through
:data:`DEFENSES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from spard.data.config import DataConfig
from spard.data.records import Example
from spard.models.adapters import LoraSettings
from spard.registry import Registry
from spard.training.base import SafetyTrainer

if TYPE_CHECKING:
    from spard.training.config import TrainConfig


class Defense:
    """A fine-tuning defense: which data it trains on, which trainer it uses, what it does after.

    It receives what it needs, not the run config: its own ``settings`` (an instance of
    ``config_class``), the run's data settings, its LoRA settings and seed. Subclasses set the class
    attributes and override only what differs from plain fine-tuning.
    """

    name: ClassVar[str] = ""
    #: Its settings dataclass (None: it has none); a section of the run config under ``section``.
    config_class: ClassVar[type | None] = None
    #: The YAML key of its settings; default: ``name``.
    section: ClassVar[str | None] = None
    #: Whether it draws ``k`` samples from the safety pool (the same budget as SPARD's).
    uses_safety_data: ClassVar[bool] = False
    #: Selector used when ``selection.method`` is ``auto``.
    default_selector: ClassVar[str] = "random"
    trainer_class: ClassVar[type[SafetyTrainer]] = SafetyTrainer

    def __init__(self, settings: Any = None, *, data: DataConfig | None = None, lora: LoraSettings | None = None,
                 seed: int = 42):
        if settings is None and self.config_class is not None:
            settings = self.config_class()
        self.settings = settings
        self.data = data if data is not None else DataConfig()
        self.lora = lora if lora is not None else LoraSettings()
        self.seed = seed

    @classmethod
    def section_name(cls) -> str | None:
        """The run-config key of its settings, or None when it has none."""
        return (cls.section or cls.name) if cls.config_class is not None else None

    def check(self) -> None:
        """Raise ``ValueError`` before any expensive work when the run cannot go ahead."""
        if self.uses_safety_data and not self.data.safe_pool:
            raise ValueError(f"defense {self.name!r} needs a safety pool: set data.safe_pool (--safe-pool)")

    def safety_source(self) -> tuple[str, str]:
        """(file, target field) the ``k`` safety samples are drawn from."""
        return self.data.safe_pool, self.data.safe_target_field

    def total_updates(self, utility_updates: int) -> int:
        """Optimiser updates to run so that ``utility_updates`` of them are on user data."""
        return utility_updates

    def training_examples(self, task: Sequence[Example], safe: Sequence[Example]) -> list[Example]:
        """The examples the utility steps train on (by default the possibly poisoned task set)."""
        return list(task)

    def trains_like(self) -> str | None:
        """The defense whose training under these settings is identical to this one's, update for
        update (same data, prompts, trainer and seed), or None. ``spard bench`` then reuses a finished
        run of that defense instead of training again; only the evaluation differs."""
        return None

    def train_system_prompt(self) -> str | None:
        return self.data.system_prompt

    def eval_system_prompt(self) -> str | None:
        """The system prompt evaluation should use for the trained model (saved with the run)."""
        return self.data.system_prompt

    def heldout_size(self) -> int:
        """How many pool samples outside the safe set its trainer tracks a held-out safe loss on (0 = none)."""
        return 0

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        """Extra keyword arguments of the trainer (its settings, held-out data...)."""
        return {}

    def after_training(self, model: Any) -> dict[str, Any]:
        """Post-processing of the trained model; returns statistics for ``metrics.json``."""
        return {}


#: ``--defense`` names -> Defense classes; a defense module registers itself with ``@register``.
DEFENSES: Registry[type[Defense]] = Registry("defense")
#: Run-config sections -> the settings dataclass read from them (filled by ``@register``).
DEFENSE_SECTIONS: Registry[type] = Registry("defense section")


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a :class:`Defense` under its ``name``, and its settings section."""
    section = cls.section_name()
    if section is not None:
        DEFENSE_SECTIONS.add(section, cls.config_class, doc=f"settings of {cls.name}")
    return DEFENSES.add(cls.name, cls)


def unregister(name: str) -> None:
    """Remove a defense and its settings section (a plugin unloading itself, a test cleaning up)."""
    if name in DEFENSES:
        cls = DEFENSES.get(name)
        section = cls.section_name()
        others = [n for n in DEFENSES.names() if n != name and DEFENSES.get(n).section_name() == section]
        if section is not None and not others:
            DEFENSE_SECTIONS.remove(section)
        DEFENSES.remove(name)


def get_defense(name: str, config: TrainConfig) -> Defense:
    """The defense ``name`` with what it needs from the run config ``config``."""
    cls = DEFENSES.get(name)
    section = cls.section_name()
    settings = config.section(section) if section is not None else None
    return cls(settings, data=config.data, lora=config.lora, seed=config.training.seed)
