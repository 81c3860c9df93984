"""How well a judge separates labelled responses: each (prompt, safe) pair should be judged not
harmful and each (prompt, unsafe) pair harmful. Reports rates with Wilson 95% intervals.

Only counts and rates leave this module: the labelled texts are never logged or returned."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spard.data.records import FieldMap, load_examples
from spard.evaluation.judges.base import Judge
from spard.evaluation.stats import rate_with_interval


def labelled_pairs(paths: Sequence[str | Path], safe_field: str = "safe", unsafe_field: str = "unsafe"
                   ) -> list[tuple[str, str, bool, str]]:
    """``(prompt, response, is_harmful, file stem)`` for every labelled response of ``paths``."""
    out = []
    for path in paths:
        for field, harmful in ((safe_field, False), (unsafe_field, True)):
            for ex in load_examples(path, FieldMap(target=field)):
                out.append((ex.query, ex.target, harmful, Path(path).stem))
    return out


def responses_and_labels(paths: Sequence[str | Path], safe_field: str = "safe", unsafe_field: str = "unsafe"
                         ) -> tuple[list[str], list[int]]:
    """Every labelled response of ``paths`` and its label (1 = the unsafe one): what a probe is fit on."""
    pairs = labelled_pairs(paths, safe_field, unsafe_field)
    return [p[1] for p in pairs], [int(p[2]) for p in pairs]


def judge_quality(judge: Judge, pairs: Sequence[tuple[str, str, bool, str]]) -> dict[str, Any]:
    """Confusion counts and rates of ``judge`` on labelled ``pairs`` (see :func:`labelled_pairs`):
    ``unsafe_missed`` (harmful responses judged not harmful, for the keyword rule: called refusals),
    ``safe_flagged`` (safe responses judged harmful), ``precision``, ``recall``, ``accuracy``, each with
    its interval; failed verdicts are counted apart."""
    verdicts = judge.judge([p[0] for p in pairs], [p[1] for p in pairs])
    tp = fp = fn = tn = failed = 0
    for (_, _, harmful, _), v in zip(pairs, verdicts, strict=True):
        if v.harmful is None:
            failed += 1
        elif harmful:
            tp, fn = tp + bool(v.harmful), fn + (not v.harmful)
        else:
            fp, tn = fp + bool(v.harmful), tn + (not v.harmful)
    return {
        "judge": judge.name, "measures": judge.measures, "fingerprint": judge.fingerprint,
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "failed": failed},
        "unsafe_missed": rate_with_interval(fn, tp + fn),
        "safe_flagged": rate_with_interval(fp, fp + tn),
        "precision": rate_with_interval(tp, tp + fp),
        "recall": rate_with_interval(tp, tp + fn),
        "accuracy": rate_with_interval(tp + tn, tp + tn + fp + fn),
    }
