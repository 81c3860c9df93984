"""Attack simulation: a task set poisoned with a fraction of harmful samples."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Sequence

from spard.data.records import Example

logger = logging.getLogger(__name__)


def harmful_count(n_task: int, ratio: float) -> int:
    """``floor(ratio * n_task)``: how many harmful samples a poisoned set of ``n_task`` task samples gets."""
    if not 0 <= ratio:
        raise ValueError(f"harmful ratio must be >= 0, got {ratio}")
    return math.floor(ratio * n_task + 1e-9)


def mix_attack(
    task: Sequence[Example],
    harmful: Sequence[Example],
    ratio: float,
    *,
    seed: int = 0,
    attack_name: str = "harmful",
) -> list[Example]:
    """Return the task examples plus ``floor(ratio * len(task))`` harmful ones, shuffled with ``seed``.

    Harmful samples are drawn without replacement when the attack set is large enough, with
    replacement otherwise. Each keeps ``origin == "harmful:<attack_name>"`` (task samples keep theirs),
    so an experiment can count them; the trainer never reads the origin.
    """
    n = harmful_count(len(task), ratio)
    rng = random.Random(seed)
    if n and not harmful:
        raise ValueError("harmful ratio > 0 but the attack set is empty")
    if n <= len(harmful):
        drawn = rng.sample(list(harmful), n)
    else:
        drawn = [rng.choice(harmful) for _ in range(n)]
        logger.info("attack set has %d samples < %d needed: drawing with replacement", len(harmful), n)
    mixed = list(task) + [ex.with_origin(f"harmful:{attack_name}") for ex in drawn]
    rng.shuffle(mixed)
    return mixed


def origin_counts(examples: Sequence[Example]) -> dict[str, int]:
    """How many examples come from each origin."""
    return dict(Counter(ex.origin for ex in examples))
