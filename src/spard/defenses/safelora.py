"""SafeLoRA (Hsu et al., NeurIPS 2024): project drifting LoRA updates onto the alignment subspace.

For every LoRA-adapted weight ``W``, the alignment matrix is ``V = W_aligned - W_unaligned`` (the
model being fine-tuned minus the same model before safety alignment). Its projector is

    paper form:       C = V V^T / ||V||_F               (as in the SafeLoRA paper and code)
    orthogonal form:  C = U_r U_r^T                       (U_r: top-r left singular vectors of V)

The LoRA update ``dW = s B A`` is compared with ``C dW`` by cosine similarity; layers whose
similarity is below ``threshold`` (or the ``num_layers`` least similar) get ``B <- C B``, so their
update becomes ``C dW``. The orthogonal form is an exact projection (``C (C dW) = C dW``); the paper
form also rescales.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from spard.defenses.base import Defense, register


@dataclass
class SafeLoRAConfig:
    """SafeLoRA: project LoRA updates of layers whose update drifts from the alignment direction.

    ``unaligned_model`` is the base model before safety alignment; the aligned model is the one being
    fine-tuned. Layers are projected where the cosine between the projected and the original update is
    below ``threshold``, or, when ``num_layers`` is set, the ``num_layers`` least similar layers.
    ``projection``: ``paper`` (V V^T / ||V||_F) or ``orthogonal`` (onto the top-``rank`` left singular
    vectors of V; ``rank`` defaults to the LoRA rank).
    """

    unaligned_model: str | None = None
    threshold: float = 0.5
    num_layers: int | None = None
    projection: str = "paper"
    rank: int | None = None

logger = logging.getLogger(__name__)


def alignment_projector(v: torch.Tensor, form: str = "paper", rank: int = 8) -> torch.Tensor:
    """The ``out x out`` projector built from the alignment matrix ``v`` (see the module docstring)."""
    v = v.double()
    if form == "paper":
        norm = torch.linalg.matrix_norm(v)
        return v @ v.T / norm if norm > 0 else torch.zeros(v.shape[0], v.shape[0], dtype=v.dtype)
    if form == "orthogonal":
        u, s, _ = torch.linalg.svd(v, full_matrices=False)
        r = min(rank, int((s > s.max() * 1e-10).sum()) if s.numel() else 0)
        return u[:, :r] @ u[:, :r].T
    raise ValueError(f"safelora.projection must be paper or orthogonal, got {form!r}")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two weight matrices, flattened (1.0 when either is zero)."""
    a, b = a.detach().double(), b.detach().double()
    na, nb = a.norm(), b.norm()
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else 1.0


def lora_layers(model: Any) -> dict[str, Any]:
    """Base-weight name (as in the unwrapped model) -> peft LoRA layer, for every adapted linear layer."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            base = name.replace("base_model.model.", "", 1)
            out[f"{base}.weight"] = module
    return out


def apply_safelora(model: Any, unaligned: dict[str, torch.Tensor], *, threshold: float, num_layers: int | None,
                   form: str = "paper", rank: int = 8) -> dict[str, Any]:
    """Project the LoRA updates of ``model`` in place; ``unaligned`` maps weight names to the unaligned weights."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("SafeLoRA needs a LoRA model (lora.enabled = true)")
    plans = []
    for name, layer in layers.items():
        if name not in unaligned:
            raise ValueError(f"the unaligned model has no weight {name!r}: is it the same architecture?")
        aligned = layer.base_layer.weight.detach()
        if unaligned[name].shape != aligned.shape:
            raise ValueError(f"{name}: unaligned weight shape {tuple(unaligned[name].shape)} != {tuple(aligned.shape)}")
        C = alignment_projector(aligned.double() - unaligned[name].double(), form, rank)
        B, A = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        dW = layer.scaling["default"] * (B.double() @ A.double())
        plans.append((name, layer, C, cosine(C @ dW, dW)))
    sims = [p[3] for p in plans]
    if num_layers is not None:
        cut = sorted(sims)[: max(0, num_layers)]
        chosen = {p[0] for p in sorted(plans, key=lambda p: p[3])[: len(cut)]}
    else:
        chosen = {p[0] for p in plans if p[3] < threshold}
    with torch.no_grad():
        for name, layer, C, _ in plans:
            if name in chosen:
                B = layer.lora_B["default"].weight
                B.copy_((C @ B.double()).to(B.dtype))
    logger.info("SafeLoRA projected %d of %d LoRA layers", len(chosen), len(plans))
    return {"layers": len(plans), "projected": sorted(chosen), "similarity": {p[0]: p[3] for p in plans},
            "projection": form}


def load_weights(spec: str, names: set[str]) -> dict[str, torch.Tensor]:
    from spard.models.loading import load_model

    model, _ = load_model(spec)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
    del model
    return state


@register
class SafeLoRA(Defense):
    """SafeLoRA: after training, project the LoRA update of the least aligned layers onto the alignment subspace."""

    name = "safelora"
    config_class = SafeLoRAConfig

    def check(self) -> None:
        if not self.settings.unaligned_model:
            raise ValueError(
                "safelora needs the model before safety alignment: set safelora.unaligned_model (--unaligned-model); "
                "the model being fine-tuned is taken as the aligned one"
            )
        if not self.lora.enabled:
            raise ValueError("safelora projects LoRA updates: it cannot run with full fine-tuning")

    def after_training(self, model: Any) -> dict[str, Any]:
        cfg = self.settings
        unaligned = load_weights(cfg.unaligned_model, set(lora_layers(model)))
        stats = apply_safelora(model, unaligned, threshold=cfg.threshold, num_layers=cfg.num_layers,
                               form=cfg.projection, rank=cfg.rank or self.lora.r)
        stats["unaligned_model"] = cfg.unaligned_model
        return stats
