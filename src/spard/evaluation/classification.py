"""Classification tasks (SST-2, AG News, OpenBookQA's four options): two ways to score a model.

* **Generated label.** The response is normalised to a label (:func:`label_of`: the label named first,
  as a whole word, ignoring case); a response that names none is wrong.
* **Label log-likelihood** (generation-free). For prompt ``x`` and labels ``y_1..y_L`` the prediction is
  ``argmax_j log p(y_j + EOS | x)``, the sum of the token log-probabilities of the whole answer
  ``y_j`` followed by the end of the turn, under the chat template the model is fine-tuned with. It is
  the label the model is most likely to answer *exactly*; it costs one teacher-forced forward pass per
  (prompt, label), with no sampling and no parsing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from spard.data.records import Example


def _label_pattern(label: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])" + re.escape(label.strip()) + r"(?![\w])", re.IGNORECASE)


def label_of(response: str, labels: Sequence[str]) -> str | None:
    """The label a response gives: of ``labels``, the one whose first whole-word occurrence (ignoring
    case) comes earliest in ``response``; the longer label on a tie ("Sci/Tech" over "Tech"); None when
    the response names no label."""
    best: tuple[int, int, str] | None = None
    for label in labels:
        found = _label_pattern(label).search(response)
        if found:
            rank = (found.start(), -len(label), label)
            best = rank if best is None or rank < best else best
    return best[2] if best else None


def label_correct(response: str, reference: str, labels: Sequence[str]) -> bool:
    predicted = label_of(response, labels)
    return predicted is not None and predicted.strip().lower() == reference.strip().lower()


def task_labels(references: Sequence[str]) -> list[str]:
    """The label set of a classification task: its distinct references, sorted; an error for fewer than two."""
    labels = sorted({r.strip() for r in references if r and r.strip()})
    if len(labels) < 2:
        raise ValueError(f"a classification task needs at least two distinct labels in its reference column, found {labels}")
    return labels


def label_loglikelihoods(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str], *,
                         system_prompt: str | None = None, batch_size: int = 16,
                         max_length: int = 2048) -> list[list[float]]:
    """``out[i][j] = log p(labels[j] + EOS | examples[i].prompt)`` in nats (see the module docstring)."""
    from spard.evaluation.loss import response_logprobs

    pairs = [ex.with_target(label) for ex in examples for label in labels]
    scores = response_logprobs(model, tokenizer, pairs, system_prompt=system_prompt, batch_size=batch_size,
                               max_length=max_length)
    width = len(labels)
    return [[s for s, _ in scores[i * width:(i + 1) * width]] for i in range(len(examples))]


def loglik_predictions(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str],
                       **kwargs: Any) -> list[str]:
    """The most likely label for each example (:func:`label_loglikelihoods`; ties go to the earlier label)."""
    out = []
    for row in label_loglikelihoods(model, tokenizer, examples, labels, **kwargs):
        out.append(labels[max(range(len(labels)), key=lambda j: (row[j], -j))])
    return out
