"""SPAG's safety projection after every optimiser update, as a trainer mixin.

``SPAGMixin`` turns any ``transformers.Trainer`` subclass into a SPAG trainer by adding one base class:
``class SPAGSFTTrainer(SPAGMixin, SFTTrainer)`` is TRL's ``SFTTrainer`` with SPAG (docs/trl.md);
``SPAGTrainer`` is the mixin on the plain ``Trainer``, what ``spard train --defense spard`` uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from spard.training.base import SafetyTrainer, SafetyTrainerMixin
from spard.training.projection import PROJECTION_FORMS, safety_projection_step

logger = logging.getLogger(__name__)


@dataclass
class SPAGConfig:
    """SPAG's settings. ``tau="auto"`` sets tau to the starting model's mean loss on the safe set.

    ``radius`` is ``alpha_max`` for the reference form and the trust radius ``eta`` for the closed
    form. Authors' defaults: tau 0.2, delta 0.1, radius 1, 4 safe samples per update.
    """

    tau: float | str = 0.2
    delta: float = 0.1
    form: str = "reference"
    radius: float = 1.0
    safe_batch_size: int = 4
    #: after a projection, measure the safe loss again on the same batch (``safe_loss_after`` in the step
    #: log); logging only, a forward pass per projection, so off by default (the replication configs keep it)
    measure_after: bool = False
    #: Track the loss on this many held-out pool samples (not in the safe set) every ``heldout_every`` updates; 0 = off.
    heldout_size: int = 0
    heldout_every: int = 10

    def __post_init__(self) -> None:
        if self.form not in PROJECTION_FORMS:
            raise ValueError(f"spag.form must be one of {PROJECTION_FORMS}, got {self.form!r}")
        if isinstance(self.tau, str) and self.tau != "auto":
            raise ValueError(f"spag.tau must be a number or 'auto', got {self.tau!r}")


class SPAGMixin(SafetyTrainerMixin):
    """Alternates an ordinary optimiser update on the fine-tuning data with SPAG's safety step.

    The safety step (see :func:`spard.training.projection.safety_projection_step`) draws
    ``safe_batch_size`` samples from ``safe_dataset`` each update. Each step-log row gains
    ``safe_loss``, ``safe_loss_after``, ``fired``, ``step_length`` and ``grad_norm``.

    ``safe_dataset`` is in the trainer's own training format: tokenized rows for ``Trainer``; for a
    trainer that prepares its datasets (TRL's ``SFTTrainer``: ``messages``, prompt/completion or text
    rows) it is prepared the same way as ``train_dataset``. ``spag_config`` defaults to
    :class:`SPAGConfig` with ``tau="auto"``.
    """

    needs_safe_data = True

    def __init__(self, *args: Any, spag_config: SPAGConfig | None = None, heldout_dataset: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.safe_dataset = self._prepared(self.safe_dataset, "safe")
        self.heldout_dataset = self._prepared(heldout_dataset, "heldout")
        spag_config = spag_config or SPAGConfig(tau="auto")
        self.spag = spag_config
        self.tau: float | None = None if spag_config.tau == "auto" else float(spag_config.tau)
        self._safe_batches = None

    def _prepared(self, dataset: Any, name: str) -> Any:
        """``dataset`` tokenized like the training set when the trainer prepares datasets (TRL) and it is not yet."""
        prepare = getattr(self, "_prepare_dataset", None)
        columns = getattr(dataset, "column_names", None)
        if dataset is None or prepare is None or columns is None or "input_ids" in columns:
            return dataset
        return prepare(dataset, self.processing_class, self.args, False, None, name)

    def mean_safe_loss(self, dataset: Any = None, batch_size: int = 8) -> float:
        """Mean loss of the current weights over a dataset (default: the safe set), averaged over examples by batch."""
        dataset = self.safe_dataset if dataset is None else dataset
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = self._prepare_inputs(self.data_collator(rows))
                loss = self.accelerator.reduce(self.batch_loss(batch).detach(), "mean")
                total += float(loss.item()) * len(rows)
                count += len(rows)
        return total / count

    def on_train_start(self) -> None:
        if self.tau is None:  # (a resumed run restored it already)
            self.tau = self.mean_safe_loss()
            logger.info("SPAG tau=auto: starting model's mean safe loss is %.4f", self.tau)
        # one safe batch per update: a resumed run skips those its first part drew
        self._safe_batches = self.batches(self.safe_dataset, self.spag.safe_batch_size, self.args.seed, skip=self.resumed_step)

    def resume_state(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        if state.get("tau") is not None:
            self.tau = float(state["tau"])  # tau=auto was measured on the starting weights, not the resumed ones

    def after_optimizer_step(self) -> dict[str, Any]:
        batch = next(self._safe_batches)
        stats = safety_projection_step(
            self.trainable_parameters(),
            lambda: self.batch_loss(batch),
            tau=self.tau,
            delta=self.spag.delta,
            form=self.spag.form,
            radius=self.spag.radius,
            optimizer=self.optimizer,
            backward=self.accelerator.backward,
            reduce=lambda t: self.accelerator.reduce(t, "mean"),
            measure_after=self.spag.measure_after,
        )
        row = stats.as_dict()
        if self.heldout_dataset is not None and self.state.global_step % self.spag.heldout_every == 0:
            row["heldout_safe_loss"] = self.mean_safe_loss(self.heldout_dataset)
        return row

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        rows = self.step_records
        fired = [r for r in rows if r.get("fired")]
        out.update(
            {
                "tau": self.tau,
                "projection_form": self.spag.form,
                "projections_fired": len(fired),
                "projection_rate": len(fired) / len(rows) if rows else 0.0,
                "safe_loss_first": rows[0]["safe_loss"] if rows else None,
                "safe_loss_last": (rows[-1]["safe_loss_after"] if rows[-1].get("safe_loss_after") is not None
                                   else rows[-1]["safe_loss"]) if rows else None,
                "mean_step_length": sum(r["step_length"] for r in fired) / len(fired) if fired else 0.0,
            }
        )
        heldout = [r["heldout_safe_loss"] for r in rows if "heldout_safe_loss" in r]
        if heldout:
            out["heldout_safe_loss_first"], out["heldout_safe_loss_last"] = heldout[0], heldout[-1]
        return out


class SPAGTrainer(SPAGMixin, SafetyTrainer):
    """:class:`SPAGMixin` on spard's :class:`SafetyTrainer` (the plain ``transformers.Trainer``)."""
