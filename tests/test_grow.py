"""Function-preserving growth of an EGNN (models.grow): same function, every new weight learns."""

from __future__ import annotations

import pytest
import torch
from contracts import molecule_inputs

from models.config import EGNNConfig
from models.egnn import EGNN
from models.grow import grow_egnn

NAMES = ("CH3CH2OH", "C6H6", "H2O", "CF3CN")
SMALL = EGNNConfig(hidden=16, layers=2)


def _trained_like(cfg: EGNNConfig) -> EGNN:
    """An EGNN whose every weight is non-zero, as after training (zero-initialised layers too)."""
    torch.manual_seed(0)
    model = EGNN(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("hidden, layers", [(16, 2), (32, 2), (16, 4), (24, 3)])
def test_a_grown_egnn_computes_the_small_one_exactly(hidden, layers):
    small = _trained_like(SMALL)
    torch.manual_seed(1)
    large = grow_egnn(small, EGNN(EGNNConfig(hidden=hidden, layers=layers)).double())
    inp = molecule_inputs(NAMES)
    x = torch.cat([inp.pos, inp.h], dim=1)
    expected, got = small(x, inp.t, inp.batch), large(x, inp.t, inp.batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert expected.abs().max() > 1e-3  # a non-trivial function was compared


def test_every_weight_of_a_grown_egnn_learns_within_two_steps():
    small = _trained_like(SMALL)
    torch.manual_seed(1)
    large = grow_egnn(small, EGNN(EGNNConfig(hidden=24, layers=3)).double())
    inp = molecule_inputs(NAMES)
    x = torch.cat([inp.pos, inp.h], dim=1)
    target = torch.randn_like(x)
    optimizer = torch.optim.Adam(large.parameters(), lr=1e-4)  # steps of ~lr, whatever the scale
    moved = {}
    start = {name: p.detach().clone() for name, p in large.named_parameters()}
    for _ in range(2):
        optimizer.zero_grad()
        (large(x, inp.t, inp.batch) - target).pow(2).sum().backward()
        optimizer.step()
    for name, p in large.named_parameters():
        moved[name] = (p.detach() - start[name]).abs().max().item()
    assert min(moved.values()) > 0, [name for name, v in moved.items() if v == 0]


@pytest.mark.parametrize(
    "large, reason",
    [
        (EGNNConfig(hidden=8, layers=2), "hidden 16 -> 8"),
        (EGNNConfig(hidden=16, layers=1), "layers 2 -> 1"),
        (EGNNConfig(hidden=32, layers=2, attention=False), "different attention"),
    ],
)
def test_growth_into_a_smaller_or_different_network_is_refused(large, reason):
    with pytest.raises(ValueError, match=reason):
        grow_egnn(EGNN(SMALL), EGNN(large))
