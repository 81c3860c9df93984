"""``SafetyTrainer``: a ``transformers.Trainer`` with per-update hooks and a per-step JSONL log.

Defenses subclass it and override :meth:`before_optimizer_step` (gradient surgery),
:meth:`after_optimizer_step` (SPAG's projection) or :meth:`training_step` (Lisa's data switch).
The hooks run from a ``TrainerCallback``, so Trainer's own loop is never copied. The machinery is
:class:`SafetyTrainerMixin`, which works on top of any ``Trainer`` subclass (TRL's ``SFTTrainer``
included); ``SafetyTrainer`` is that mixin on the plain ``Trainer``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from spard.io import JsonlAppender

logger = logging.getLogger(__name__)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s safety batches: ``seed`` on rank 0 (single-process runs draw what they
    always drew), a distinct stream on every other rank."""
    return seed + 1_000_003 * rank


class _StepHooks(TrainerCallback):
    def __init__(self, trainer: SafetyTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._begin_training()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._pending.update(self.trainer.before_optimizer_step() or {})

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._finish_step()

    def on_save(self, args, state, control, **kwargs):
        self.trainer._save_resume_state(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._end_training()


class FreshPermutationBatches(torch.utils.data.Sampler):
    """Endless index batches for a ``DataLoader``: each is the first ``batch_size`` items of a fresh seeded
    permutation of ``range(n)`` (no repeat inside a batch, independent batches); ``skip`` draws are
    discarded first, so a resumed run continues the same stream."""

    def __init__(self, n: int, batch_size: int, seed: int, skip: int = 0):
        self.n, self.size, self.seed, self.skip = n, min(batch_size, n), seed, skip

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.skip):
            torch.randperm(self.n, generator=gen)
        while True:
            yield torch.randperm(self.n, generator=gen)[: self.size].tolist()


class SafetyTrainerMixin:
    """Hooks around each optimiser update and a JSONL row per update, for any ``Trainer`` subclass:
    put it first in the bases (``class T(SafetyTrainerMixin, SFTTrainer)``).

    Each row has ``step``, the update's data loss under :meth:`loss_name` (``utility_loss`` for the
    user's data; a subclass that trains on other data in some updates names it otherwise), whatever
    the hooks returned, and ``seconds``, the wall time of the whole update (the first row's counts from
    the end of :meth:`on_train_start`, so set-up such as SPAG's ``tau="auto"`` is not in it). ``step_log`` (a path) makes the rows land on disk as they are produced.
    """

    #: Whether the trainer draws batches from a safety (alignment) set, which must then be non-empty.
    needs_safe_data: bool = False

    def __init__(self, *args: Any, step_log: str | Path | None = None, safe_dataset: Any = None,
                 loss_chunk_size: int | None = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: ``training.loss_chunk_size``: 0 = the library's loss (the default here, so a TRL trainer's own
        #: ``compute_loss`` runs), None = chunked when a pass's logits would be large, N = chunks of N rows
        self.loss_chunk_size = loss_chunk_size
        self._chunked_loss_ok = True
        if self.needs_safe_data and (safe_dataset is None or len(safe_dataset) == 0):
            raise ValueError(f"{type(self).__name__} needs a non-empty safety set")
        self.safe_dataset = safe_dataset
        self.step_log_path = Path(step_log) if step_log else None
        self.step_records: list[dict[str, Any]] = []
        self._pending: dict[str, Any] = {}
        self._step_loss = 0.0
        self._log: JsonlAppender | None = None
        self._step_started = time.perf_counter()
        #: set by the caller before ``train(resume_from_checkpoint=...)``: the checkpoint folder and its step
        self.resume_dir: Path | None = None
        self.resumed_step = 0
        self.add_callback(_StepHooks(self))

    # ---- hooks for subclasses ----
    def loss_name(self) -> str:
        """The step-log field of the current update's data loss."""
        return "utility_loss"

    def on_train_start(self) -> None:
        """Called once before the first update (after the optimiser exists)."""

    def before_optimizer_step(self) -> dict[str, Any] | None:
        """Called with the accumulated (and clipped) gradients, right before ``optimizer.step()``."""
        return None

    def after_optimizer_step(self) -> dict[str, Any] | None:
        """Called after the optimiser and scheduler stepped and gradients were zeroed."""
        return None

    #: Whether the trainer can resume from a checkpoint with the same result as an uninterrupted run.
    resumable: bool = True

    def resume_state(self) -> dict[str, Any]:
        """What this trainer must carry across a resume beyond Trainer's own checkpoint (JSON)."""
        return {}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state` when resuming."""

    def summary(self) -> dict[str, Any]:
        """Totals over the run for ``metrics.json``."""
        losses = [r["utility_loss"] for r in self.step_records if math.isfinite(r.get("utility_loss", math.nan))]
        return {
            "updates": len(self.step_records),
            "utility_loss_first": losses[0] if losses else None,
            "utility_loss_last": losses[-1] if losses else None,
            "utility_loss_mean": sum(losses) / len(losses) if losses else None,
        }

    # ---- helpers ----
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def batches(self, dataset: Any, batch_size: int, seed: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Endless random mini-batches (without replacement inside a batch) from ``dataset``, on the device.

        Each process draws its own batches (the generator is seeded with :func:`rank_seed`), so a loss
        averaged over processes is a mean over ``world size x batch_size`` samples, as the user batch is.
        ``skip`` draws are discarded first (a resumed run continues the stream where it stopped)."""
        from torch.utils.data import DataLoader

        sampler = FreshPermutationBatches(len(dataset), batch_size, rank_seed(seed, self.accelerator.process_index), skip)
        for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator):
            yield self._prepare_inputs(batch)

    #: the collated keys a causal LM's forward takes; collators (TRL's) may add others, such as masks
    #: already folded into ``labels``
    MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "position_ids")

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean token loss of the (wrapped) model on a batch, with a graph."""
        inputs = {k: v for k, v in batch.items() if k in self.MODEL_INPUTS}
        loss = self._chunked_loss(self.model_wrapped, inputs)
        return loss if loss is not None else self.model_wrapped(**inputs).loss

    def _chunked_loss(self, model: Any, inputs: dict[str, torch.Tensor], num_items: Any = None) -> torch.Tensor | None:
        """The token loss by :func:`spard.training.loss.lm_loss` when ``loss_chunk_size`` asks for chunks on
        this batch's shape, else None (the caller uses the library's loss)."""
        from spard.training.loss import chunk_rows, lm_loss

        if (self.loss_chunk_size == 0 or not self._chunked_loss_ok or "labels" not in inputs
                or self.label_smoother is not None or self.compute_loss_func is not None):
            return None
        vocab = self.accelerator.unwrap_model(self.model).config.vocab_size
        rows = chunk_rows(self.loss_chunk_size, *inputs["input_ids"].shape, vocab)
        if not rows:
            return None
        loss = lm_loss(model, inputs, rows, num_items)
        self._chunked_loss_ok = loss is not None  # a model whose logits are post-processed never chunks again
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not return_outputs:
            counted = num_items_in_batch if self.model_accepts_loss_kwargs else None
            loss = self._chunked_loss(model, {k: v for k, v in inputs.items() if k in self.MODEL_INPUTS}, counted)
            if loss is not None:
                if self.args.average_tokens_across_devices and counted is not None:  # as Trainer.compute_loss scales
                    loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                                   else self.args.n_gpu)
                return loss
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # ---- plumbing ----
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_loss += float(loss.detach().float().item())
        return loss

    def _begin_training(self) -> None:
        if self.resume_dir is not None:
            import json

            state_file = Path(self.resume_dir) / "spard_state.json"
            saved = json.loads(state_file.read_text()) if state_file.exists() else {}
            self.resumed_step = int(saved.get("step", 0))
            self.load_resume_state(saved.get("trainer", {}))
            if self.step_log_path and self.step_log_path.exists():
                from spard.io import read_jsonl

                self.step_records = [r for r in read_jsonl(self.step_log_path) if r.get("step", 0) <= self.resumed_step]
                if self.is_world_process_zero():
                    from spard.data.records import write_jsonl

                    write_jsonl(self.step_log_path, self.step_records)  # rows past the checkpoint are redone
        if self.step_log_path and self.is_world_process_zero():
            self._log = JsonlAppender(self.step_log_path)
        self.on_train_start()
        self._step_started = time.perf_counter()

    def _save_resume_state(self, step: int) -> None:
        if not self.is_world_process_zero():
            return
        from spard.io import atomic_write_json

        folder = Path(self.args.output_dir) / f"checkpoint-{step}"
        if folder.is_dir():
            atomic_write_json(folder / "spard_state.json", {"step": step, "trainer": self.resume_state()})

    def _finish_step(self) -> None:
        row = {"step": self.state.global_step, self.loss_name(): self._step_loss}
        row.update(self._pending)
        row.update(self.after_optimizer_step() or {})
        now = time.perf_counter()
        row["seconds"] = now - self._step_started  # the whole update, hooks included (the first one: since start)
        self._step_started = now
        self._pending, self._step_loss = {}, 0.0
        self.step_records.append(row)
        if self._log:
            self._log.write(row)

    def _end_training(self) -> None:
        if self._log:
            self._log.close()
            self._log = None


class SafetyTrainer(SafetyTrainerMixin, Trainer):
    """:class:`SafetyTrainerMixin` on the plain ``transformers.Trainer``: what every spard defense trains with."""
