"""Fine-tuning defenses behind one interface; ``DEFENSES`` maps ``--defense`` names to them."""

from spard.defenses import lisa, ptst, safegrad, safeinstr, safelora, sft, spard  # noqa: F401  (registration)
from spard.defenses.base import DEFENSES, Defense, get_defense, register

__all__ = ["DEFENSES", "Defense", "get_defense", "register"]
