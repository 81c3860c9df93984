"""SFT: plain fine-tuning, no defense (the attack's baseline)."""

from spard.defenses.base import Defense, register


@register
class SFT(Defense):
    name = "sft"
