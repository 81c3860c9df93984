"""The interface every defense implements, and the registry ``spard train --defense`` reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from spard.data.records import Example
from spard.registry import Registry
from spard.training.base import SafetyTrainer

if TYPE_CHECKING:
    from spard.training.config import TrainConfig


class Defense:
    """A fine-tuning defense: which data it trains on, which trainer it uses, what it does after.

    Subclasses set the class attributes and override only what differs from plain fine-tuning.
    """

    name: ClassVar[str] = ""
    #: Whether it draws ``k`` samples from the safety pool (the same budget as SPARD's).
    uses_safety_data: ClassVar[bool] = False
    #: Selector used when ``selection.method`` is ``auto``.
    default_selector: ClassVar[str] = "random"
    trainer_class: ClassVar[type[SafetyTrainer]] = SafetyTrainer

    def __init__(self, config: TrainConfig):
        self.config = config

    def check(self) -> None:
        """Raise ``ValueError`` before any expensive work when the run cannot go ahead."""
        if self.uses_safety_data and not self.config.data.safe_pool:
            raise ValueError(f"defense {self.name!r} needs a safety pool: set data.safe_pool (--safe-pool)")

    def safety_source(self) -> tuple[str, str]:
        """(file, target field) the ``k`` safety samples are drawn from."""
        return self.config.data.safe_pool, self.config.data.safe_target_field

    def total_updates(self, utility_updates: int) -> int:
        """Optimiser updates to run so that ``utility_updates`` of them are on user data."""
        return utility_updates

    def training_examples(self, task: Sequence[Example], safe: Sequence[Example]) -> list[Example]:
        """The examples the utility steps train on (by default the possibly poisoned task set)."""
        return list(task)

    def trains_like(self) -> str | None:
        """The defense whose training under this config is identical to this one's, update for update
        (same data, prompts, trainer and seed), or None. ``spard bench`` then reuses a finished run of
        that defense instead of training again; only the evaluation differs."""
        return None

    def train_system_prompt(self) -> str | None:
        return self.config.data.system_prompt

    def eval_system_prompt(self) -> str | None:
        """The system prompt evaluation should use for the trained model (saved with the run)."""
        return self.config.data.system_prompt

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        """Extra keyword arguments of the trainer (its config section, held-out data...)."""
        return {}

    def heldout_size(self) -> int:
        """How many pool samples outside the safe set to hold out for tracking the safe loss (0 = none)."""
        return 0

    def after_training(self, model: Any) -> dict[str, Any]:
        """Post-processing of the trained model; returns statistics for ``metrics.json``."""
        return {}


#: ``--defense`` names -> Defense classes; a defense module registers itself with ``@register``.
DEFENSES: Registry[type[Defense]] = Registry("defense")


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a :class:`Defense` under its ``name``."""
    return DEFENSES.add(cls.name, cls)


def get_defense(name: str, config: TrainConfig) -> Defense:
    return DEFENSES.get(name)(config)
