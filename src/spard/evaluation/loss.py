"""Teacher-forced loss of a model on reference responses (for example held-out answer NLL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spard.data.formatting import IGNORE_INDEX, data_collator, tokenize_example
from spard.data.records import Example


def response_logprobs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> list[tuple[float, int]]:
    """Per example, ``(sum of log p over its response tokens, EOS included; number of those tokens)``,
    teacher-forced under the chat template. An example whose response does not fit ``max_length`` at
    all is an error (a score of a cut answer would be silently wrong)."""
    rows = []
    for ex in examples:
        row = tokenize_example(tokenizer, ex, max_length=max_length, system_prompt=system_prompt)
        if row is None:
            raise ValueError(f"example {ex.id!r}: its prompt fills max_length={max_length}; no response token left to score")
        rows.append(row)
    collate = data_collator(tokenizer)
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            mask = labels != IGNORE_INDEX
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            out += [(float(s), int(n)) for s, n in zip(picked.sum(dim=1), mask.sum(dim=1), strict=True)]
    model.train(was_training)
    return out


def response_nll(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> float:
    """Mean negative log-likelihood per response token (EOS included) over ``examples``.

    Tokens are pooled over all examples (a token-weighted mean), so batch size does not change it.
    Examples whose prompt fills ``max_length`` are dropped (logged), as in training.
    """
    kept = [ex for ex in examples
            if tokenize_example(tokenizer, ex, max_length=max_length, system_prompt=system_prompt) is not None]
    if not kept:
        raise ValueError(f"no example has a response token within max_length={max_length}")
    scores = response_logprobs(model, tokenizer, kept, max_length=max_length, batch_size=batch_size,
                               system_prompt=system_prompt)
    return -sum(s for s, _ in scores) / max(sum(n for _, n in scores), 1)
