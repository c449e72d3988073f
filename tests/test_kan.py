from __future__ import annotations

import pytest
import torch

from lungfusion.models import build_model
from lungfusion.models.kan import KAN, KANLinear, b_spline_basis, tabular_encoder, uniform_grid


def test_basis_is_a_partition_of_unity_on_the_grid():
    grid = uniform_grid(grid_size=5, spline_order=3, grid_range=(-1.0, 1.0))
    assert grid.shape == (5 + 2 * 3 + 1,)
    x = torch.linspace(-1.0, 0.999, 101).reshape(-1, 1)
    basis = b_spline_basis(x, grid, 3)
    assert basis.shape == (101, 1, 5 + 3)
    assert torch.allclose(basis.sum(-1), torch.ones(101, 1), atol=1e-5)
    assert (basis >= 0).all()
    # a cubic B-spline is non-zero on at most 4 consecutive intervals' worth of functions
    assert int((basis[50, 0] > 0).sum()) <= 4
    # far outside the extended grid every basis function vanishes
    assert torch.count_nonzero(b_spline_basis(torch.tensor([[10.0]]), grid, 3)) == 0


def test_kan_layer_shape_and_gradients():
    layer = KANLinear(in_features=6, out_features=3)
    x = torch.randn(5, 6, requires_grad=True)
    out = layer(x)
    assert out.shape == (5, 3)
    out.square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expects"):
        layer(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="grid_range"):
        KANLinear(in_features=2, out_features=2, grid_range=(1.0, -1.0))


def test_kan_learns_a_small_regression():
    torch.manual_seed(0)
    x = torch.rand(128, 2) * 4 - 2
    y = (torch.sin(2 * x[:, 0]) + x[:, 1] ** 2).unsqueeze(1)
    model = KAN(widths=(2, 4, 1))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    start = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(150):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05 * start
    assert loss.item() < 0.05


def test_mlp_alternative_and_clinical_net():
    mlp = tabular_encoder("mlp", n_features=5, hidden=8, out_features=8)
    assert mlp(torch.randn(3, 5)).shape == (3, 8)
    with pytest.raises(ValueError, match="tabular_encoder"):
        tabular_encoder("tree", n_features=5, hidden=8, out_features=8)
    for encoder in ("kan", "mlp"):
        net = build_model(
            "clinical_net", n_classes=2, in_shape=(4, 8, 8), n_tabular=5, tabular_encoder=encoder
        )
        logits = net({"tab": torch.randn(3, 5)})
        assert logits.shape == (3, 2)
        logits.sum().backward()
        assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(KeyError, match="tab"):
        net({"ct": torch.zeros(1, 1, 4, 8, 8)})
