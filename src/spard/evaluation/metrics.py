"""Task metrics: GSM8K final-number accuracy, OpenBookQA choice accuracy, classification labels, exact match, contains."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from spard.evaluation.classification import label_correct
from spard.registry import Registry

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalise_number(text: str) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; ``"12 apples"`` -> ``"12"``; None when there is no number."""
    match = _NUMBER.search(text.replace("\u2212", "-"))
    if not match:
        return None
    raw = match.group(0).replace(",", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    value = value.normalize()
    if value == value.to_integral():
        value = value.quantize(Decimal(1))
    return format(value, "f")


def gsm8k_answer(text: str) -> str | None:
    """The number after the last ``####``, else the last number in the text (commas, currency, units dropped)."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        found = normalise_number(tail)
        if found is not None:
            return found
    numbers = _NUMBER.findall(text.replace("\u2212", "-"))
    for raw in reversed(numbers):
        found = normalise_number(raw)
        if found is not None:
            return found
    return None


def gsm8k_correct(response: str, reference: str) -> bool:
    predicted, gold = gsm8k_answer(response), gsm8k_answer(reference)
    return predicted is not None and predicted == gold


_CHOICE = re.compile(r"\banswer\s*([1-4])\b", re.IGNORECASE)


def openbookqa_choice(text: str) -> str | None:
    """``answer1``..``answer4`` from a response: the last ``answer3`` / ``Answer 3``, else the last lone digit 1-4."""
    found = _CHOICE.findall(text)
    if found:
        return f"answer{found[-1]}"
    lone = re.findall(r"(?<![\d.])([1-4])(?!\.?\d)", text)
    return f"answer{lone[-1]}" if lone else None


def openbookqa_correct(response: str, reference: str) -> bool:
    return openbookqa_choice(response) == reference.strip()


def _norm_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_match(response: str, reference: str) -> bool:
    return _norm_text(response) == _norm_text(reference)


def contains(response: str, reference: str) -> bool:
    return _norm_text(reference) in _norm_text(response)


#: ``--task`` names -> scorers ``(response, reference) -> correct``
TASK_METRICS: Registry[Callable[[str, str], bool]] = Registry("task")
TASK_METRICS.add("gsm8k", gsm8k_correct, "GSM8K: the response's final number equals the reference answer's")
TASK_METRICS.add("openbookqa", openbookqa_correct, "OpenBookQA: the option letter the response picks equals the reference")
TASK_METRICS.add("label", label_correct, "classification (SST-2, AG News): the label the response names first equals the "
                  "reference; naming none is wrong")
TASK_METRICS.add("exact", exact_match, "the response equals the reference, ignoring case, punctuation and spacing")
TASK_METRICS.add("contains", contains, "the reference appears in the response, ignoring case, punctuation and spacing")

#: The dataset column holding the reference each task is scored against.
REFERENCE_FIELD = {"gsm8k": "answer", "openbookqa": "target_answer", "label": "answer", "exact": "answer", "contains": "answer"}
#: Tasks scored against a finite label set (``labels=``): their references are the labels.
LABEL_TASKS = {"label"}


def correct_items(task: str, responses: Sequence[str], references: Sequence[str],
                  labels: Sequence[str] | None = None) -> list[bool]:
    """Per item, whether the response is right under the task's scorer (``labels``: a label task's label set)."""
    scorer = TASK_METRICS.get(task)
    if task in LABEL_TASKS:
        if not labels:
            raise ValueError(f"task {task!r} needs its label set")
        return [scorer(r, ref, labels) for r, ref in zip(responses, references, strict=True)]
    return [scorer(r, ref) for r, ref in zip(responses, references, strict=True)]


def accuracy(task: str, responses: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None) -> float:
    hits = correct_items(task, responses, references, labels)
    return sum(hits) / len(hits) if hits else 0.0
