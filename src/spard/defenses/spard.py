"""SPARD: SPAG's projected alternating updates on an RD-DPP-selected safe set."""

from __future__ import annotations

from typing import Any

from spard.defenses.base import Defense, register
from spard.training.spag import SPAGConfig, SPAGTrainer


@register
class SPARD(Defense):
    """SPARD: SPAG's safety projection after every update, on a safe set chosen by RD-DPP."""

    name = "spard"
    config_class = SPAGConfig
    section = "spag"
    uses_safety_data = True
    default_selector = "rd-dpp"
    trainer_class = SPAGTrainer

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        return {"spag_config": self.settings, "heldout_dataset": heldout_dataset}

    def heldout_size(self) -> int:
        return self.settings.heldout_size
