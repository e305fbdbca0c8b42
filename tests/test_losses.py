"""Router losses: values and gradients against the analytic ones."""

import numpy as np
import pytest
import torch

from dynamicdet.losses import RunningMedian, router_loss


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
