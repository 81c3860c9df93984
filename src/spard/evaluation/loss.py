"""Teacher-forced loss of a model on reference responses (for example held-out answer NLL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spard.data.formatting import IGNORE_INDEX, tokenize_example, tokenize_examples
from spard.data.records import Example


def response_logprobs(model: Any, tokenizer: Any, examples: Sequence[Example], *, max_length: int = 256,
                      batch_size: int = 8, system_prompt: str | None = None) -> list[tuple[float, int]]:
    """Per example, ``(sum of log p over its response tokens, EOS included; number of those tokens)``,
    teacher-forced under the chat template. An example whose response does not fit ``max_length`` at
    all is an error (a score of a cut answer would be silently wrong).

    Batches are padded on the left with positions counted from each row's first real token, so every
    response ends at the last position and the model computes vocabulary logits only for the last
    ``longest response + 1`` positions (``logits_to_keep``) instead of all of them: for a two-token
    label after an 80-token prompt, 1/25 of the language-model head's work and memory."""
    rows = []
    for ex in examples:
        row = tokenize_example(tokenizer, ex, max_length=max_length, system_prompt=system_prompt)
        if row is None:
            raise ValueError(f"example {ex.id!r}: its prompt fills max_length={max_length}; no response token left to score")
        rows.append(row)
    return _rows_logprobs(model, tokenizer, rows, batch_size)


def _rows_logprobs(model: Any, tokenizer: Any, rows: Sequence[dict[str, list[int]]], batch_size: int) -> list[tuple[float, int]]:
    """:func:`response_logprobs` on rows tokenized already (``input_ids`` and ``labels``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            scored = max(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in chunk)
            ids = torch.tensor([[pad] * (width - len(r["input_ids"])) + r["input_ids"] for r in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in chunk], device=device)
            labels = torch.tensor([[IGNORE_INDEX] * (width - len(r["labels"])) + r["labels"] for r in chunk], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = min(width, scored + 1)
            logits = _last_logits(model, ids, mask, positions, keep)
            targets = labels[:, width - keep + 1 :]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            valid = targets != IGNORE_INDEX
            picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
            out += [(float(s), int(n)) for s, n in zip(picked.sum(dim=1), valid.sum(dim=1), strict=True)]
    model.train(was_training)
    return out


def _last_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
    """float32 logits of the last ``keep`` positions (the whole sequence for a model without ``logits_to_keep``)."""
    try:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    except TypeError:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[:, -keep:].float()


def response_nll(model: Any, tokenizer: Any, examples: Sequence[Example], *, max_length: int = 256,
                 batch_size: int = 8, system_prompt: str | None = None) -> float:
    """Mean negative log-likelihood per response token (EOS included) over ``examples``.

    Tokens are pooled over all examples (a token-weighted mean), so batch size does not change it.
    Examples whose prompt fills ``max_length`` are dropped (logged), as in training.
    """
    rows = tokenize_examples(tokenizer, examples, max_length=max_length, system_prompt=system_prompt)
    scores = _rows_logprobs(model, tokenizer, rows, batch_size)
    return -sum(s for s, _ in scores) / max(sum(n for _, n in scores), 1)
