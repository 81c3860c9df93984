"""Lisa (Huang et al., NeurIPS 2024): bi-state optimisation with a proximal term.

Updates cycle through ``alignment_steps`` updates on safety data and ``finetune_steps`` updates on
the user's data. In each state the update also follows the gradient of ``rho/2 ||theta - theta_s||^2``,
``theta_s`` being the trainable weights at the last switch of state; that pull keeps the two states
from drifting apart. The trainer runs more updates in all so that the user-data updates equal the
configured budget (``max_steps``); the user batches drawn during alignment updates are not used.
"""

from __future__ import annotations

from typing import Any

import torch

from spard.defenses.base import Defense, register
from spard.training.base import SafetyTrainer


def add_proximal_gradient(params: list[torch.nn.Parameter], anchor: list[torch.Tensor], rho: float) -> float:
    """``grad += rho * (theta - anchor)``, the gradient of ``rho/2 ||theta - anchor||^2``; returns ``||theta - anchor||``."""
    sq = 0.0
    with torch.no_grad():
        for p, a in zip(params, anchor, strict=True):
            diff = p.detach() - a
            sq += float(diff.float().pow(2).sum())
            if rho:
                p.grad = rho * diff if p.grad is None else p.grad.add_(diff, alpha=rho)
    return sq**0.5


class LisaTrainer(SafetyTrainer):
    needs_safe_data = True

    def __init__(self, *args: Any, lisa_config: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lisa = lisa_config
        self._anchor: list[torch.Tensor] | None = None
        self._state: str | None = None

    def state_at(self, step: int) -> str:
        """``alignment`` or ``finetune`` for the 0-based update ``step``; cycles start with alignment."""
        cycle = self.lisa.alignment_steps + self.lisa.finetune_steps
        return "alignment" if step % cycle < self.lisa.alignment_steps else "finetune"

    def on_train_start(self) -> None:
        self._align_batches = self.batches(self.safe_dataset, self.lisa.alignment_batch_size or self.args.per_device_train_batch_size,
                                           self.args.seed + 1)

    def training_step(self, model, inputs, num_items_in_batch=None):
        state = self.state_at(self.state.global_step)
        if state != self._state:  # a switch: the proximal anchor is the weights right now
            self._anchor = [p.detach().clone() for p in self.trainable_parameters()]
            self._state = state
        if state == "alignment":
            inputs, num_items_in_batch = next(self._align_batches), None
        return super().training_step(model, inputs, num_items_in_batch)

    def before_optimizer_step(self) -> dict[str, Any]:
        proximal = self.state.global_step >= self.lisa.proximal_from * self.state.max_steps
        distance = add_proximal_gradient(self.trainable_parameters(), self._anchor, self.lisa.rho if proximal else 0.0)
        return {"state": self._state, "distance_to_switch": distance}

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        rows = self.step_records
        out["alignment_updates"] = sum(1 for r in rows if r.get("state") == "alignment")
        out["finetune_updates"] = sum(1 for r in rows if r.get("state") == "finetune")
        out["rho"] = self.lisa.rho
        return out


@register
class Lisa(Defense):
    name = "lisa"
    uses_safety_data = True
    trainer_class = LisaTrainer

    def check(self) -> None:
        super().check()
        if self.config.lisa.finetune_steps <= 0 or self.config.lisa.alignment_steps < 0:
            raise ValueError("lisa.finetune_steps must be > 0 and lisa.alignment_steps >= 0")

    def total_updates(self, utility_updates: int) -> int:
        """Updates needed so that ``utility_updates`` of them are on user data."""
        a, f = self.config.lisa.alignment_steps, self.config.lisa.finetune_steps
        full, rest = divmod(utility_updates, f)
        return full * (a + f) + (a + rest if rest else 0)

    def trainer_kwargs(self, heldout_dataset: Any = None) -> dict[str, Any]:
        return {"lisa_config": self.config.lisa}
