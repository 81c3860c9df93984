"""Teacher-forced loss of a model on reference responses (for example held-out answer NLL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spard.data.formatting import IGNORE_INDEX, data_collator, tokenize_examples
from spard.data.records import Example


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
    """
    rows = tokenize_examples(tokenizer, examples, max_length=max_length, system_prompt=system_prompt)
    collate = data_collator(tokenizer)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            mask = labels != IGNORE_INDEX
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += float(-(picked * mask).sum())
            count += int(mask.sum())
    model.train(was_training)
    return total / max(count, 1)
