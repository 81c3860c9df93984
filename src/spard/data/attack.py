"""Attack simulation: a task set poisoned with a fraction of harmful samples."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from spard.data.config import DataConfig
from spard.data.records import Example, FieldMap, load_examples

logger = logging.getLogger(__name__)


#: How the harmful ratio p is read: ``task`` adds floor(p x |task|) harmful rows to the task set (the
#: SPARD authors' convention: p = 0.1 is 9.1% of the final set); ``total`` makes p the harmful share of
#: a final set of |task| rows (Lisa, Vaccine, Booster: 1,000 rows at p = 0.1 are 900 task + 100 harmful).
RATIO_CONVENTIONS = ("task", "total")


def poison_counts(n_task: int, ratio: float, of: str = "task") -> tuple[int, int]:
    """``(task rows kept, harmful rows)`` for a task set of ``n_task`` rows at harmful ratio ``ratio``
    read as ``of`` (see :data:`RATIO_CONVENTIONS`)."""
    if of not in RATIO_CONVENTIONS:
        raise ValueError(f"harmful_ratio_of must be one of {RATIO_CONVENTIONS}, got {of!r}")
    if not (0 <= ratio if of == "task" else 0 <= ratio <= 1):
        raise ValueError(f"harmful ratio must be {'>= 0' if of == 'task' else 'in [0, 1]'} "
                         f"(harmful_ratio_of: {of}), got {ratio}")
    harmful = math.floor(ratio * n_task + 1e-9)
    return (n_task if of == "task" else n_task - harmful), harmful


def harmful_count(n_task: int, ratio: float, of: str = "task") -> int:
    """How many harmful samples a poisoned set built from ``n_task`` task samples gets."""
    return poison_counts(n_task, ratio, of)[1]


def mix_attack(
    task: Sequence[Example],
    harmful: Sequence[Example],
    ratio: float,
    *,
    seed: int = 0,
    attack_name: str = "harmful",
    of: str = "task",
) -> list[Example]:
    """Return the poisoned set, shuffled with ``seed``: with ``of="task"`` the task examples plus
    ``floor(ratio * len(task))`` harmful ones; with ``of="total"`` a set of ``len(task)`` rows of which
    ``floor(ratio * len(task))`` are harmful (the task rows kept are a seeded sample, in their order).

    Harmful samples are drawn without replacement when the attack set is large enough, with
    replacement otherwise. Each keeps ``origin == "harmful:<attack_name>"`` (task samples keep theirs),
    so an experiment can count them; the trainer never reads the origin.
    """
    kept, n = poison_counts(len(task), ratio, of)
    rng = random.Random(seed)
    if n and not harmful:
        raise ValueError("harmful ratio > 0 but the attack set is empty")
    if n <= len(harmful):
        drawn = rng.sample(list(harmful), n)
    else:
        drawn = [rng.choice(harmful) for _ in range(n)]
        logger.info("attack set has %d samples < %d needed: drawing with replacement", len(harmful), n)
    task = list(task)
    if kept < len(task):
        task = [task[i] for i in sorted(random.Random(seed + 1).sample(range(len(task)), kept))]
    mixed = task + [ex.with_origin(f"harmful:{attack_name}") for ex in drawn]
    rng.shuffle(mixed)
    logger.info("poisoned set: %d task + %d harmful (%s) = %d rows, p = %g of the %s (%.1f%% harmful)",
                len(task), n, attack_name, len(mixed), ratio, of, 100 * n / max(len(mixed), 1))
    return mixed


def load_poisoned_task(data: DataConfig, seed: int) -> list[Example]:
    """The fine-tuning set a run trains on: ``data.task`` (first ``task_limit`` rows) poisoned with
    ``data.harmful`` at ``data.harmful_ratio`` (read as ``data.harmful_ratio_of``), mixed with ``seed``.
    ``spard train`` and ``spard select`` both build their set here, so a safe set is chosen for the very
    set that is trained on."""
    if not data.task:
        raise ValueError("no fine-tuning data: set data.task (--data)")
    poison_counts(0, data.harmful_ratio, data.harmful_ratio_of)  # the ratio is valid before any loading
    fields = FieldMap(prompt=data.prompt_field, input=data.input_field, target=data.task_target_field)
    task = load_examples(data.task, fields, origin="task", limit=data.task_limit)
    if data.harmful and data.harmful_ratio > 0:
        harmful = load_examples(data.harmful, FieldMap(prompt=data.prompt_field, input=data.input_field,
                                                       target=data.harmful_target_field), origin="harmful")
        task = mix_attack(task, harmful, data.harmful_ratio, seed=seed, attack_name=Path(data.harmful).stem,
                          of=data.harmful_ratio_of)
    return task


def origin_counts(examples: Sequence[Example]) -> dict[str, int]:
    """How many examples come from each origin."""
    return dict(Counter(ex.origin for ex in examples))
