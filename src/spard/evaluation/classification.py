"""Classification tasks (SST-2, AG News, OpenBookQA's four options): two ways to score a model.

* **Generated label.** The response is normalised to a label (:func:`label_of`: the label named first,
  as a whole word, ignoring case); a response that names none is wrong.
* **Label log-likelihood** (generation-free). For prompt ``x`` and labels ``y_1..y_L`` the prediction is
  ``argmax_j log p(y_j + EOS | x)``, the sum of the token log-probabilities of the whole answer
  ``y_j`` followed by the end of the turn, under the chat template the model is fine-tuned with. It is
  the label the model is most likely to answer *exactly*; it costs one forward pass per prompt (its
  key/value cache is shared by the labels) and one short pass over the label tokens, with no sampling
  and no parsing.
"""

from __future__ import annotations

import re
import warnings
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


def same_label(a: str, b: str) -> bool:
    """Two label strings name the same label (case and surrounding space aside)."""
    return a.strip().lower() == b.strip().lower()


def label_correct(response: str, reference: str, labels: Sequence[str]) -> bool:
    predicted = label_of(response, labels)
    return predicted is not None and same_label(predicted, reference)


def task_labels(references: Sequence[str]) -> list[str]:
    """The label set of a classification task: its distinct references, sorted; an error for fewer than two."""
    labels = sorted({r.strip() for r in references if r and r.strip()})
    if len(labels) < 2:
        raise ValueError(f"a classification task needs at least two distinct labels in its reference column, found {labels}")
    return labels


def label_loglikelihoods(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str], *,
                         system_prompt: str | None = None, batch_size: int = 16,
                         max_length: int = 2048) -> list[list[float]]:
    """``out[i][j] = log p(labels[j] + EOS | examples[i].prompt)`` in nats (see the module docstring).

    One forward pass per prompt: a batch of prompts (left-padded) runs once and keeps its key/value
    cache, which is repeated for the ``L`` labels; the label tokens then run as one short batch of
    ``B x L`` continuations. The first label token's log-probability comes from the prompt pass, the
    others from the continuation pass. The same tokens as :func:`spard.data.formatting.tokenize_example`
    (prompt and answer tokenized apart, EOS appended), so the score is the one a teacher-forced pass
    over each (prompt, label) pair gives."""
    import torch

    from spard.data.formatting import prompt_text

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    answers = [tokenizer(label, add_special_tokens=False)["input_ids"] + [eos] for label in labels]
    width_l = max(len(a) for a in answers)
    answer_ids = torch.tensor([a + [pad] * (width_l - len(a)) for a in answers])
    answer_mask = torch.tensor([[1] * len(a) + [0] * (width_l - len(a)) for a in answers])
    prompts = []
    for ex in examples:
        ids = tokenizer(prompt_text(tokenizer, ex, system_prompt), add_special_tokens=False)["input_ids"]
        if len(ids) + width_l > max_length:
            raise ValueError(f"example {ex.id!r}: prompt and label exceed max_length={max_length} tokens")
        prompts.append(ids)
    device = next(model.parameters()).device
    n_labels = len(labels)
    out: list[list[float]] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            first = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # B x V: the first answer token
            cache = first.past_key_values
            cache.batch_repeat_interleave(n_labels)
            cont_ids = answer_ids.repeat(len(chunk), 1).to(device)  # row b * L + j is label j of prompt b
            cont_mask = torch.cat([mask.repeat_interleave(n_labels, dim=0), answer_mask.repeat(len(chunk), 1).to(device)], dim=1)
            cont_pos = positions[:, -1:].repeat_interleave(n_labels, dim=0) + 1 + torch.arange(width_l, device=device)
            with warnings.catch_warnings():  # transformers 5 renames the argument; older versions know only this one
                warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated")
                rest = model(input_ids=cont_ids, attention_mask=cont_mask, position_ids=cont_pos, past_key_values=cache).logits
            rest_logp = torch.log_softmax(rest[:, :-1].float(), dim=-1)  # predicts answer tokens 2..width_l
            targets = cont_ids[:, 1:]
            valid = answer_mask.repeat(len(chunk), 1).to(device)[:, 1:].bool()
            later = (rest_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * valid).sum(dim=1)  # (B*L)
            head = first_logp.repeat_interleave(n_labels, dim=0).gather(1, cont_ids[:, :1]).squeeze(1)
            scores = (head + later).view(len(chunk), n_labels)
            out += scores.tolist()
    model.train(was_training)
    return out


def loglik_predictions(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str],
                       **kwargs: Any) -> list[str]:
    """The most likely label for each example (:func:`label_loglikelihoods`; ties go to the earlier label)."""
    out = []
    for row in label_loglikelihoods(model, tokenizer, examples, labels, **kwargs):
        out.append(labels[max(range(len(labels)), key=lambda j: (row[j], -j))])
    return out
