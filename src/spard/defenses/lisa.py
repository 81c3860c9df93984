"""Lisa (Huang et al., NeurIPS 2024): bi-state optimisation with a proximal term.

Updates cycle through ``alignment_steps`` updates on safety data and ``finetune_steps`` updates on
the user's data. As in the authors' code, each update's loss gets the proximal term
``rho/2 ||theta - theta_s||^2`` (``theta_s``: the trainable weights at the last switch of state) before
the backward pass, so it is clipped with the data gradient, from ``proximal_from x`` all updates on.

Two choices differ from the authors' trainer, both so that Lisa's user-data updates are exactly
SFT's: the trainer runs more updates in all so that the user-data updates equal the configured
budget, and the user batches the data loader hands out during alignment updates are deferred to the
following fine-tuning updates instead of being dropped (the authors' code replaces them), so Lisa's
n-th fine-tuning update sees SFT's n-th batch. Alignment updates log their loss as
``alignment_loss``, never as ``utility_loss``; the proximal term's value is logged as ``proximal``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from spard.defenses.base import Defense, register
from spard.training.base import SafetyTrainer


@dataclass
class LisaConfig:
    """Lisa: alternate ``alignment_steps`` updates on safety data and ``finetune_steps`` on user data,
    each with a proximal term ``rho/2 ||theta - theta_switch||^2`` to the weights at the last switch."""

    alignment_steps: int = 100
    finetune_steps: int = 900
    rho: float = 1.0
    alignment_batch_size: int | None = None  # default: the fine-tuning batch size
    #: Share of all updates made before the proximal term starts (the authors' code: 0.1, "for GSM8K
    #: the proximal term hurts convergence"); 0 = from the first update.
    proximal_from: float = 0.0


def proximal_term(params: list[torch.nn.Parameter], anchor: list[torch.Tensor], rho: float) -> torch.Tensor:
    """``rho/2 ||theta - anchor||^2`` over the trainable weights, with a graph (its gradient is
    ``rho (theta - anchor)``)."""
    total = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
    return 0.5 * rho * total


class LisaTrainer(SafetyTrainer):
    needs_safe_data = True
    resumable = False  # the anchor and the deferred user batches are not checkpointed yet

    def __init__(self, *args: Any, lisa_config: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lisa = lisa_config
        self._anchor: list[torch.Tensor] | None = None
        self._state: str | None = None
        self._deferred: deque[Any] = deque()
        self._micro_proximal = 0.0  # the proximal term's value in the current micro-step

    def state_at(self, step: int) -> str:
        """``alignment`` or ``finetune`` for the 0-based update ``step``; cycles start with alignment."""
        cycle = self.lisa.alignment_steps + self.lisa.finetune_steps
        return "alignment" if step % cycle < self.lisa.alignment_steps else "finetune"

    def loss_name(self) -> str:
        return "alignment_loss" if self._state == "alignment" else "utility_loss"

    def on_train_start(self) -> None:
        self._align_batches = self.batches(self.safe_dataset, self.lisa.alignment_batch_size or self.args.per_device_train_batch_size,
                                           self.args.seed + 1)

    def proximal_active(self) -> bool:
        return self.lisa.rho > 0 and self.state.global_step >= self.lisa.proximal_from * self.state.max_steps

    def training_step(self, model, inputs, num_items_in_batch=None):
        state = self.state_at(self.state.global_step)
        if state != self._state:  # a switch: the proximal anchor is the weights right now
            self._anchor = [p.detach().clone() for p in self.trainable_parameters()]
            self._state = state
        if state == "alignment":
            self._deferred.append(inputs)  # the user's batch waits for the next fine-tuning update
            inputs = next(self._align_batches)
        elif self._deferred:
            self._deferred.append(inputs)
            inputs = self._deferred.popleft()
        # batches are averaged per micro-batch (a deferred batch's token count is not this update's), so
        # Trainer divides each loss by the accumulation steps; the step log gets the data loss alone
        self._micro_proximal = 0.0
        loss = Trainer.training_step(self, model, inputs, None)
        self._step_loss += float(loss.detach().float()) - self._micro_proximal / self.current_gradient_accumulation_steps
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not self.proximal_active():
            return out
        loss = out[0] if return_outputs else out
        # training_step divides the loss by the accumulation steps: the term adds up to one per update
        prox = proximal_term(self.trainable_parameters(), self._anchor, self.lisa.rho)
        self._micro_proximal = float(prox.detach())
        loss = loss + prox.to(loss.dtype)
        return (loss, *out[1:]) if return_outputs else loss

    def before_optimizer_step(self) -> dict[str, Any]:
        with torch.no_grad():
            distance = sum(float((p.detach() - a).float().pow(2).sum()) for p, a in zip(
                self.trainable_parameters(), self._anchor, strict=True)) ** 0.5
        return {"state": self._state, "distance_to_switch": distance, "proximal": self._micro_proximal}

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        rows = self.step_records
        out["alignment_updates"] = sum(1 for r in rows if r.get("state") == "alignment")
        out["finetune_updates"] = sum(1 for r in rows if r.get("state") == "finetune")
        out["rho"] = self.lisa.rho
        return out


@register
class Lisa(Defense):
    """Lisa: alternates alignment updates on safety data with fine-tuning updates, a proximal pull between them."""

    name = "lisa"
    config_class = LisaConfig
    uses_safety_data = True
    trainer_class = LisaTrainer

    def check(self) -> None:
        super().check()
        if self.settings.finetune_steps <= 0 or self.settings.alignment_steps < 0:
            raise ValueError("lisa.finetune_steps must be > 0 and lisa.alignment_steps >= 0")

    def total_updates(self, utility_updates: int) -> int:
        """Updates needed so that ``utility_updates`` of them are on user data."""
        a, f = self.settings.alignment_steps, self.settings.finetune_steps
        full, rest = divmod(utility_updates, f)
        return full * (a + f) + (a + rest if rest else 0)

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        return {"lisa_config": self.settings}
