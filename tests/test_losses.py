"""Router losses: values and gradients against the analytic ones."""

import numpy as np
import pytest
import torch

from dynamicdet.modeling.losses import RunningMedian, router_loss


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    phi = torch.rand(7, generator=g).requires_grad_(True)
    l1 = torch.rand(7, generator=g) * 3
    l2 = torch.rand(7, generator=g) * 3
    return phi, l1, l2


@pytest.mark.parametrize(
    ("kind", "kwargs", "analytic"),
    [
        ("naive", {}, lambda l1, l2: l2 - l1),
        ("naive_lambda", {"lam": 0.3}, lambda l1, l2: l2 - l1 + 0.3),
        ("adaptive_offset", {"delta": 0.25}, lambda l1, l2: l2 - l1 + 0.25),
    ],
)
def test_gradient_wrt_phi_is_analytic(data, kind, kwargs, analytic):
    phi, l1, l2 = data
    loss = router_loss(phi, l1, l2, kind=kind, **kwargs)
    (grad,) = torch.autograd.grad(loss, phi)
    # the loss is a mean over the batch: d mean / d phi_i = (1/B) dL_i/dphi_i
    torch.testing.assert_close(grad * len(phi), analytic(l1, l2))


def test_adaptive_offset_value_and_no_gradient_to_losses(data):
    phi, l1, l2 = data
    l1 = l1.clone().requires_grad_(True)
    delta = 0.4
    loss = router_loss(phi, l1, l2, kind="adaptive_offset", delta=delta)
    expected = ((1 - phi) * (l1 - delta / 2) + phi * (l2 + delta / 2)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert l1.grad is None  # L1, L2 are detached: only the router learns


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown router loss 'hinge'"):
        router_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), kind="hinge")


def test_running_median():
    rm = RunningMedian()
    assert rm.update(torch.tensor([3.0, 1.0])) == 2.0
    assert rm.update(torch.tensor([10.0])) == 3.0
    assert rm.update(torch.tensor([-1.0, 0.0, 7.0])) == float(np.median([3, 1, 10, -1, 0, 7]))


def test_soft_target_is_bce_towards_the_squashed_gain(data):
    _, l1, l2 = data
    z = torch.randn(7, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    loss = router_loss(torch.sigmoid(z), l1, l2, kind="soft_target", delta=0.3, logit=z, scale=0.5)
    t = torch.sigmoid((l1 - l2 - 0.3) / 0.5)
    # L = -t log(phi) - (1 - t) log(1 - phi), phi = sigmoid(z); dL/dz = phi - t
    expected = -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(grad * len(z), torch.sigmoid(z) - t)


def test_rank_loss_pushes_the_bigger_gain_up():
    l1, l2 = torch.tensor([3.0, 1.0, 2.0]), torch.zeros(3)  # gains 3 > 2 > 1
    z = torch.zeros(3, requires_grad=True)
    loss = router_loss(torch.sigmoid(z), l1, l2, kind="rank", logit=z)
    # 3 ordered pairs, each log(1 + e^0) at z = 0
    torch.testing.assert_close(loss, torch.tensor(np.log(2.0), dtype=torch.float32))
    (grad,) = torch.autograd.grad(loss, z)
    assert grad[0] < 0 < grad[1] and abs(float(grad[2])) < 1e-7  # descent raises the top gain, lowers the last
    tied = router_loss(torch.sigmoid(z), torch.ones(3), torch.zeros(3), kind="rank", logit=z)
    assert tied.item() == 0.0 and tied.requires_grad  # no pair to rank, still differentiable


@pytest.mark.parametrize("kind", ["soft_target", "rank"])
def test_ranking_losses_need_logits(kind):
    with pytest.raises(ValueError, match=f"router loss '{kind}' needs the router's logits"):
        router_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), kind=kind)
