"""SafeInstr (Bianchi et al., ICLR 2024): mix safety demonstrations into the fine-tuning set.

The demonstrations are ``k`` samples (SPARD's budget) drawn from the safety pool, at random by
default (``--selector`` switches). ``safeinstr.source: safety_demos`` draws them from
``data.safety_demos`` (the Safety-Tuned-LLaMAs demonstrations) instead of the shared pool.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from spard.data.records import Example
from spard.defenses.base import Defense, register


@dataclass
class SafeInstrConfig:
    """SafeInstr: mix ``k`` safety samples (the SPARD budget) into the fine-tuning set, drawn from the
    shared pool (``safe_pool``, the fairness default) or from ``data.safety_demos`` (``safety_demos``)."""

    source: str = "safe_pool"


@register
class SafeInstr(Defense):
    """SafeInstr: mix the k safety samples into the fine-tuning data."""

    name = "safeinstr"
    config_class = SafeInstrConfig
    uses_safety_data = True

    def check(self) -> None:
        if self.settings.source == "safety_demos":
            if not self.data.safety_demos:
                raise ValueError("safeinstr.source is safety_demos: set data.safety_demos (--safety-demos)")
        elif self.settings.source != "safe_pool":
            raise ValueError(f"safeinstr.source must be safe_pool or safety_demos, got {self.settings.source!r}")
        else:
            super().check()

    def safety_source(self) -> tuple[str, str]:
        d = self.data
        if self.settings.source == "safety_demos":
            return d.safety_demos, d.safety_demos_target_field
        return super().safety_source()

    def training_examples(self, task: Sequence[Example], safe: Sequence[Example]) -> list[Example]:
        mixed = list(task) + [ex.with_origin("safety") for ex in safe]
        random.Random(self.seed).shuffle(mixed)
        return mixed
