"""The causal-LM loss without float32 logits for every position of a batch.

A causal LM's loss is

    L = (1 / n) * sum_{t : y_{t+1} != -100} -log softmax(W h_t)[y_{t+1}]

over the final (normed) hidden states ``h_t``, the output embedding ``W`` (vocabulary x hidden) and the
next-token labels; ``n`` is the number of labelled tokens (or, under gradient accumulation, the count
over the whole accumulated batch that ``Trainer`` passes as ``num_items_in_batch``). The library's
path computes ``W h_t`` for *every* position and holds those float32 logits, their log-softmax and
their gradient: three ``batch x length x vocabulary`` tensors, 400 MB each for 8 x 256 tokens of
SmolLM2's 49,152 words. :func:`chunked_token_loss` computes the same sum over the labelled positions
only, ``chunk_size`` rows of logits at a time, each chunk recomputed in the backward pass (activation
checkpointing), so at most one chunk's logits are alive. The result equals the library's loss up to
floating-point summation order; :func:`lm_loss` checks on every call that the model's own logits are
``W h`` (no soft-capping or scaling) and otherwise uses the library's loss.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

#: ``training.loss_chunk_size`` = None (automatic) chunks the loss when one pass's float32 logits over
#: all positions would exceed this many bytes: 8 x 256 tokens of a 49,152-word vocabulary (403 MB) are
#: chunked, 8 x 128 (201 MB, every replication config) are not.
AUTO_CHUNK_LOGITS_BYTES = 256 * 2**20
#: rows of logits per chunk when chunking automatically (about 200 MB of float32 logits for 49,152 words)
AUTO_CHUNK_ROWS = 1024
IGNORE_INDEX = -100


def chunk_rows(setting: int | None, batch: int, length: int, vocab: int) -> int:
    """Rows of logits per chunk for a pass of ``batch x length`` tokens (0 = the library's loss).

    ``setting``: ``training.loss_chunk_size``; None decides by :data:`AUTO_CHUNK_LOGITS_BYTES`, 0 never
    chunks, N > 0 always chunks N rows at a time."""
    if setting is None:
        return AUTO_CHUNK_ROWS if batch * length * vocab * 4 > AUTO_CHUNK_LOGITS_BYTES else 0
    if setting < 0:
        raise ValueError(f"training.loss_chunk_size must be >= 0 or None (automatic), got {setting}")
    return setting


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk_size: int,
                       num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """``sum_t CE(head(hidden[:, t]), labels[:, t + 1]) / n`` over the labelled positions, ``chunk_size``
    rows of logits at a time.

    ``hidden``: final hidden states ``(batch, length, width)``; ``labels``: ``(batch, length)`` with
    ``-100`` where nothing is predicted; ``n`` = ``num_items`` when given (the accumulated batch's token
    count), else the number of labelled positions (a mean; NaN when there are none, as the library's
    mean is). Gradients flow to ``hidden`` and to the head's trainable weights."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    rows, targets = hidden[:, :-1][keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], chunk_size):
        piece = slice(start, start + chunk_size)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, head, rows[piece], targets[piece], use_reentrant=False)
        else:
            total = total + _chunk_loss(head, rows[piece], targets[piece])
    if num_items is None:
        return total / targets.numel()
    return total / (num_items.to(total.device) if torch.is_tensor(num_items) else num_items)


def output_head(model: Any) -> torch.nn.Module | None:
    """The vocabulary projection of a (PEFT- or DDP-wrapped) causal LM, or None."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if getter is not None else None


def lm_loss(model: Any, batch: dict[str, torch.Tensor], chunk_size: int,
            num_items: torch.Tensor | int | None = None) -> torch.Tensor | None:
    """The model's token loss on ``batch`` by :func:`chunked_token_loss`, or None where that would not be
    the library's loss: no head, or the model's logits are not ``head(last hidden state)``.

    The forward goes through ``model`` itself (its wrappers' hooks run) and asks for one position of
    logits, which serve as the check."""
    head = output_head(model)
    if head is None or "labels" not in batch:
        return None
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]
    with torch.no_grad():
        if not torch.allclose(head(hidden[:, -1:]).float(), out.logits.float(), rtol=1e-3, atol=1e-4):
            logger.warning("the model's logits are not its output head on its last hidden state (scaled or "
                           "soft-capped): using the library's loss")
            return None
    return chunked_token_loss(hidden, batch["labels"], head, chunk_size, num_items)
