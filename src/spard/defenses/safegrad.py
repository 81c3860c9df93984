"""SafeGrad-style gradient surgery (2025): keep the user-data update from undoing alignment.

Before each optimiser step, the alignment gradient ``g_a`` is computed on a mini-batch of safety
data. When the accumulated user gradient ``g_u`` conflicts with it (``g_u . g_a < 0``), its component
along ``g_a`` is removed::

    g <- g_u - (g_u . g_a / ||g_a||^2) g_a

so the applied gradient is orthogonal to ``g_a`` (no first-order increase of the alignment loss);
otherwise ``g_u`` is applied unchanged. Inner products are over all trainable weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spard.defenses.base import Defense, register
from spard.training.base import SafetyTrainer


def remove_conflict(user: Sequence[torch.Tensor], align: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], bool, float]:
    """Project ``user`` off ``align`` when their inner product is negative; returns (gradient, conflicted, cosine)."""
    dot = sum(float((u.double() * a.double()).sum()) for u, a in zip(user, align, strict=True))
    nu = sum(float(u.double().pow(2).sum()) for u in user) ** 0.5
    na2 = sum(float(a.double().pow(2).sum()) for a in align)
    cosine = dot / (nu * na2**0.5) if nu > 0 and na2 > 0 else 0.0
    if dot >= 0 or na2 == 0:
        return list(user), False, cosine
    coef = dot / na2
    return [u - coef * a.to(u.dtype) for u, a in zip(user, align, strict=True)], True, cosine


class SafeGradTrainer(SafetyTrainer):
    needs_safe_data = True

    def __init__(self, *args: Any, safegrad_config: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.safegrad = safegrad_config

    def on_train_start(self) -> None:
        self._align_batches = self.batches(self.safe_dataset, self.safegrad.alignment_batch_size, self.args.seed + 2)

    def alignment_gradient(self) -> list[torch.Tensor]:
        params = self.trainable_parameters()
        user = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        self.accelerator.backward(self.batch_loss(next(self._align_batches)))
        align = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, u in zip(params, user, strict=True):
            p.grad = u
        return align

    def before_optimizer_step(self) -> dict[str, Any]:
        params = self.trainable_parameters()
        align = self.alignment_gradient()
        grads, conflicted, cosine = remove_conflict([p.grad for p in params], align)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return {"conflict": conflicted, "cosine": cosine}

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        rows = self.step_records
        out["conflicts"] = sum(1 for r in rows if r.get("conflict"))
        out["conflict_rate"] = out["conflicts"] / len(rows) if rows else 0.0
        return out


@register
class SafeGrad(Defense):
    name = "safegrad"
    uses_safety_data = True
    trainer_class = SafeGradTrainer

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        return {"safegrad_config": self.config.safegrad}
