"""SafeGrad (Yi et al., 2025, arXiv 2508.07172): gradient surgery that keeps the user-data update
from undoing alignment.

Before each optimiser step, the alignment gradient ``g_a`` is computed on a mini-batch of safety
data. Its loss (``safegrad.alignment_loss``) is, as in the paper, the KL divergence from the aligned
start model's next-token distributions to the current model's, on the response tokens of the safety
samples (``kl``: ``mean_t KL(p_aligned(.|x_<t) || p_theta(.|x_<t))``; the aligned model is the LoRA
base with the adapter switched off, or a frozen copy under full fine-tuning), or the cross-entropy on
the refusals (``ce``, this project's earlier form). When the accumulated user gradient ``g_u`` conflicts with it (``g_u . g_a < 0``), its component
along ``g_a`` is removed::

    g <- g_u - (g_u . g_a / ||g_a||^2) g_a

so the applied gradient is orthogonal to ``g_a`` (no first-order increase of the alignment loss);
otherwise ``g_u`` is applied unchanged. Inner products are over all trainable weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spard.defenses.base import Defense, register
from spard.training.base import SafetyTrainer


@dataclass
class SafeGradConfig:
    """SafeGrad: remove the conflicting component of the user gradient along the alignment gradient.
    ``alignment_loss``: ``kl`` (the paper: KL to the aligned start model on safety data) or ``ce``."""

    alignment_batch_size: int = 4
    alignment_loss: str = "kl"


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


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_t KL(p_ref || p)`` over the positions that predict a label (``labels != -100``, shifted
    by one as in causal LM training); logits ``[batch, seq, vocab]``."""
    mask = labels[:, 1:] != -100
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)[mask]
    logq = torch.log_softmax(reference_logits[:, :-1].float(), dim=-1)[mask]
    if logp.numel() == 0:
        return logits.sum() * 0.0
    return (logq.exp() * (logq - logp)).sum(-1).mean()


class SafeGradTrainer(SafetyTrainer):
    needs_safe_data = True

    def __init__(self, *args: Any, safegrad_config: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.safegrad = safegrad_config
        self._reference = None

    def on_train_start(self) -> None:
        self._align_batches = self.batches(self.safe_dataset, self.safegrad.alignment_batch_size, self.args.seed + 2,
                                           skip=self.resumed_step)
        if self.safegrad.alignment_loss == "kl" and not hasattr(self.model, "disable_adapter"):
            import copy

            self._reference = copy.deepcopy(self.model).eval().requires_grad_(False)  # full fine-tuning

    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            if self._reference is not None:
                return self._reference(**inputs).logits
            with self.model.disable_adapter():
                return self.model(**inputs).logits

    def alignment_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.safegrad.alignment_loss == "ce":
            return self.batch_loss(batch)
        logits = self.model_wrapped(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return kl_to_reference(logits, self.reference_logits(batch), batch["labels"])

    def alignment_gradient(self) -> list[torch.Tensor]:
        params = self.trainable_parameters()
        user = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        self.accelerator.backward(self.alignment_loss(next(self._align_batches)))
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
    """SafeGrad: remove the user gradient's component that conflicts with the alignment gradient (KL or CE)."""

    name = "safegrad"
    config_class = SafeGradConfig
    uses_safety_data = True
    trainer_class = SafeGradTrainer

    def check(self) -> None:
        super().check()
        if self.settings.alignment_loss not in ("kl", "ce"):
            raise ValueError(f"safegrad.alignment_loss must be 'kl' or 'ce', got {self.settings.alignment_loss!r}")

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        return {"safegrad_config": self.settings}
