"""SFT: plain fine-tuning, no defense (the attack's baseline)."""

from spard.defenses.base import Defense, register


@register
class SFT(Defense):
    """Plain supervised fine-tuning on the (possibly poisoned) user data: the baseline."""

    name = "sft"
