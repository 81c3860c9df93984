"""SPAG's safety step: project the weights back when the safe loss rises above the threshold.

After each utility step, with ``L_s`` the safe loss of the new weights ``theta`` and ``g = grad L_s``
over the trainable weights, nothing happens while ``L_s <= tau + delta``. Otherwise:

closed form (``"closed"``)
    project onto the linearised constraint ``L_s + g . (theta' - theta) <= tau`` inside a trust region
    of radius ``eta``::

        theta <- theta - min((L_s - tau) / ||g||^2, eta / ||g||) * g

    so the step either lands on the constraint's boundary or has length exactly ``eta``.

reference form (``"reference"``, the SPARD authors' code)
    scale each parameter tensor's gradient by ``alpha_p = min((L_s - tau) / ||g_p||, alpha_max)`` and
    take one step of the fine-tuning optimiser itself (same state and learning rate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

PROJECTION_FORMS = ("closed", "reference")


@dataclass
class ProjectionStats:
    """What one safety step did; ``step_length`` is ``||theta_after - theta_before||``."""

    safe_loss: float
    fired: bool
    safe_loss_after: float | None = None
    grad_norm: float | None = None
    step_length: float = 0.0
    scale: float | None = None
    #: wall seconds of the safety check's forward, of the projection (backward and update; 0 when it did
    #: not fire) and of the measurement after it (logging only; 0 when skipped); each ends on a
    #: ``.item()``, which waits for the device
    seconds_check: float = 0.0
    seconds_projection: float = 0.0
    seconds_after: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grads(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def safety_projection_step(
    params: Sequence[torch.nn.Parameter],
    safe_loss_fn: Callable[[], torch.Tensor],
    *,
    tau: float,
    delta: float,
    form: str = "closed",
    radius: float = 1.0,
    optimizer: torch.optim.Optimizer | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    measure_after: bool = False,
) -> ProjectionStats:
    """Perform SPAG's safety check and, when ``L_s > tau + delta``, its projection.

    ``params`` are the trainable weights; ``safe_loss_fn()`` returns the loss on a safe mini-batch
    with a graph to differentiate. ``radius`` is ``eta`` (closed form) or ``alpha_max`` (reference
    form, which needs ``optimizer``). ``backward`` and ``reduce`` let a distributed caller use its
    own backward and average the loss across processes; by default ``loss.backward()`` and identity.
    Gradients are zeroed on return. A safe loss that is not finite raises ``FloatingPointError``:
    silently skipping the projection would let an unsafe run pass as a defended one.
    """
    if form not in PROJECTION_FORMS:
        raise ValueError(f"projection form must be one of {PROJECTION_FORMS}, got {form!r}")
    if form == "reference" and optimizer is None:
        raise ValueError("the reference form steps the fine-tuning optimiser: pass optimizer")
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.grad = None
    started = time.perf_counter()
    loss = safe_loss_fn()
    loss_value = float((reduce(loss.detach()) if reduce else loss.detach()).item())
    checked = time.perf_counter()
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"SPAG: the safe loss is {loss_value}: the weights or the safe batch are broken "
                                 "(a diverged update or an empty target); stopping instead of skipping the projection")
    if loss_value <= tau + delta:
        return ProjectionStats(safe_loss=loss_value, fired=False, safe_loss_after=loss_value,
                               seconds_check=checked - started)

    (backward or torch.Tensor.backward)(loss)
    grads = _grads(params)
    grad_norm = float(torch.sqrt(sum(g.detach().float().pow(2).sum() for g in grads)).item())
    excess = loss_value - tau
    if grad_norm == 0.0:
        stats = ProjectionStats(loss_value, True, loss_value, 0.0, 0.0, 0.0)
    elif form == "closed":
        scale = min(excess / grad_norm**2, radius / grad_norm)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g.to(p.dtype), alpha=-scale)
        stats = ProjectionStats(loss_value, True, None, grad_norm, scale * grad_norm, scale)
    else:
        before = [p.detach().clone() for p in params]
        scales = reference_form_scales(grads, loss_value, tau, radius)
        with torch.no_grad():
            for p, g, s in zip(params, grads, scales, strict=True):
                p.grad = g * s
        optimizer.step()
        with torch.no_grad():
            moved = math.sqrt(sum(float((p - b).float().pow(2).sum().item()) for p, b in zip(params, before, strict=True)))
        stats = ProjectionStats(loss_value, True, None, grad_norm, moved, None)
    for p in params:
        p.grad = None
    projected = time.perf_counter()
    stats.seconds_check, stats.seconds_projection = checked - started, projected - checked
    if measure_after:
        with torch.no_grad():
            after = safe_loss_fn().detach()
        stats.safe_loss_after = float((reduce(after) if reduce else after).item())
        stats.seconds_after = time.perf_counter() - projected
    return stats


def reference_form_scales(grads: Sequence[torch.Tensor], safe_loss: float, tau: float, alpha_max: float) -> list[float]:
    """Per-tensor factors of the reference form: ``min((L_s - tau) / ||g_p||, alpha_max)`` (0 for a zero gradient)."""
    out = []
    for g in grads:
        norm = float(g.float().norm().item())
        out.append(min((safe_loss - tau) / norm, alpha_max) if norm > 0 else 0.0)
    return out
