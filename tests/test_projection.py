import math

import pytest
import torch

from spard.training.projection import reference_form_scales, safety_projection_step


def quadratic(params, target):
    """L(theta) = 0.5 * ||theta - target||^2 summed over tensors: gradient theta - target."""
    return lambda: 0.5 * sum(((p - t) ** 2).sum() for p, t in zip(params, target, strict=True))


def make(values):
    return [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in values]


def test_closed_form_lands_on_the_linearised_constraint():
    params = make([[1.0, 2.0], [2.0]])
    target = [torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
    loss_fn = quadratic(params, target)
    before = [p.detach().clone() for p in params]
    L0 = float(loss_fn())  # 4.5
    g = torch.cat([b.flatten() for b in before])  # gradient = theta
    tau = 4.0
    stats = safety_projection_step(params, loss_fn, tau=tau, delta=0.1, form="closed", radius=100.0, measure_after=True)
    assert stats.fired
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before, strict=True)])
    # linearised constraint is active: L0 + g . step == tau
    assert L0 + float(g @ step) == pytest.approx(tau, abs=1e-12)
    assert stats.step_length == pytest.approx(float(step.norm()), rel=1e-12)
    assert stats.safe_loss_after < L0


def test_closed_form_moves_exactly_the_trust_radius():
    params = make([[3.0, 4.0]])
    loss_fn = quadratic(params, [torch.zeros(2, dtype=torch.float64)])
    before = params[0].detach().clone()
    stats = safety_projection_step(params, loss_fn, tau=0.0, delta=0.0, form="closed", radius=0.5)
    assert float((params[0].detach() - before).norm()) == pytest.approx(0.5, abs=1e-12)
    assert stats.step_length == pytest.approx(0.5)


def test_no_step_when_safe_loss_within_slack():
    params = make([[0.1, 0.1]])
    loss_fn = quadratic(params, [torch.zeros(2, dtype=torch.float64)])  # L = 0.01
    before = params[0].detach().clone()
    stats = safety_projection_step(params, loss_fn, tau=0.005, delta=0.01, form="closed", radius=1.0)
    assert not stats.fired and stats.step_length == 0.0
    assert torch.equal(params[0].detach(), before)
    assert params[0].grad is None


def test_reference_form_scales_each_tensor_and_steps_the_optimizer():
    params = make([[3.0, 4.0], [0.1]])
    loss_fn = quadratic(params, [torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    L0 = float(loss_fn())  # 12.505
    tau = 12.0
    opt = torch.optim.SGD(params, lr=1.0)
    before = [p.detach().clone() for p in params]
    stats = safety_projection_step(params, loss_fn, tau=tau, delta=0.1, form="reference", radius=1.0, optimizer=opt)
    assert stats.fired
    # tensor 0: ||g||=5, alpha=min(0.505/5, 1)=0.101 -> step = 0.101 * g
    a0 = min((L0 - tau) / 5.0, 1.0)
    torch.testing.assert_close(params[0].detach(), before[0] - a0 * before[0])
    # tensor 1: ||g||=0.1, alpha=min(5.05, 1)=1 -> capped at alpha_max
    torch.testing.assert_close(params[1].detach(), before[1] - 1.0 * before[1])
    assert reference_form_scales([before[0], before[1]], L0, tau, 1.0) == pytest.approx([a0, 1.0])


def test_reference_form_uses_the_optimizers_own_state():
    params = make([[1.0, -1.0]])
    loss_fn = quadratic(params, [torch.zeros(2, dtype=torch.float64)])
    opt = torch.optim.Adam(params, lr=0.01)
    stats = safety_projection_step(params, loss_fn, tau=0.0, delta=0.0, form="reference", radius=1.0, optimizer=opt)
    assert len(opt.state[params[0]]) > 0  # Adam's moments were updated by the projection step
    assert stats.step_length == pytest.approx(0.01 * math.sqrt(2), rel=1e-3)  # Adam's first step is lr * sign


def test_reference_form_requires_optimizer_and_valid_form():
    params = make([[1.0]])
    with pytest.raises(ValueError, match="optimiser"):
        safety_projection_step(params, quadratic(params, [torch.zeros(1, dtype=torch.float64)]), tau=0, delta=0, form="reference")
    with pytest.raises(ValueError, match="projection form"):
        safety_projection_step(params, quadratic(params, [torch.zeros(1, dtype=torch.float64)]), tau=0, delta=0, form="nope")


def counting(loss_fn, calls):
    def counted():
        calls.append(1)
        return loss_fn()
    return counted


def test_the_after_measurement_is_one_more_forward_and_off_by_default():
    for measure in (False, True):
        params, calls = make([[3.0, 4.0]]), []
        loss_fn = counting(quadratic(params, [torch.zeros(2, dtype=torch.float64)]), calls)
        stats = safety_projection_step(params, loss_fn, tau=0.0, delta=0.0, **({"measure_after": True} if measure else {}))
        assert stats.fired and len(calls) == (2 if measure else 1)
        assert (stats.safe_loss_after is not None) == measure and (stats.seconds_after > 0) == measure
