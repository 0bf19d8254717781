"""Molecule states x = [pos, one-hot types]: the product process and the EGNN under every loss."""

import pytest
import torch
from ase.collections import g2

from models.config import EGNNConfig
from models.egnn import EGNN
from pipeline.batching import remove_mean
from pipeline.energies import Energy, HarmonicConfinement, SoftSphere
from pipeline.losses import ConstantBudget, ism_loss, local_dsm_loss
from pipeline.processes import GradientProcess, ProductProcess, vp_process
from pipeline.transitions import local_step

F64 = torch.float64
ELEMENTS = [1, 6, 7, 8, 9]  # QM9's H, C, N, O, F


def molecule_states(names=("CH3OH", "C2H6", "CH3CHO", "HCN")):
    """Real molecules from ase's g2 set as ``x (num_nodes, 3 + 5)`` and ``batch``."""
    rows, batch = [], []
    for i, name in enumerate(names):
        atoms = g2[name]
        pos = torch.tensor(atoms.positions, dtype=torch.float32)
        onehot = torch.nn.functional.one_hot(
            torch.tensor([ELEMENTS.index(z) for z in atoms.numbers]), len(ELEMENTS)
        ).float()
        rows.append(torch.cat([pos - pos.mean(0), onehot], dim=1))
        batch += [i] * len(atoms)
    return torch.cat(rows), torch.tensor(batch)


def molecule_process():
    physical = GradientProcess(
        Energy([HarmonicConfinement(1.0), SoftSphere(1.0, 1.0)]), com_free=True
    )
    return ProductProcess([(3, physical), (len(ELEMENTS), vp_process())])


def test_product_of_linear_parts_has_the_closed_form_transition():
    process = ProductProcess([(3, vp_process(com_free=True)), (5, vp_process())])
    x0, batch = molecule_states()
    x0 = x0.double()
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64)
    eps = torch.randn(x0.shape, dtype=F64)
    y_t, target = local_step(process, x0, process.schedule.integral(0 * t, t), batch, eps, "expm")
    tr = process.transition(x0, t, batch)
    std = tr.std[batch, None]
    expected_noise = torch.cat([remove_mean(eps[:, :3], batch), eps[:, 3:]], dim=1)
    torch.testing.assert_close(y_t, tr.mean + std * expected_noise)
    torch.testing.assert_close(target, -expected_noise / std)


def test_product_jacobian_is_block_diagonal_and_positions_stay_centred():
    process = molecule_process()
    x, batch = molecule_states()
    jac, mask = process.drift_jacobian(x.double(), batch)
    b, n = mask.shape
    full = jac.reshape(b, n, 8, n, 8)
    assert float(full[:, :, :3, :, 3:].abs().max()) == 0.0
    assert float(full[:, :, :3, :, :3].abs().max()) > 0.0
    y_t, target = local_step(
        process, x, torch.full((4,), 0.05), batch, torch.randn(x.shape), "expm"
    )
    torch.testing.assert_close(remove_mean(y_t[:, :3], batch), y_t[:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(remove_mean(target[:, :3], batch), target[:, :3], atol=1e-4, rtol=0)


@pytest.mark.parametrize("loss", ["local-dsm-expm", "local-dsm-taylor2", "ism"])
def test_egnn_trains_under_the_physical_drift(loss):
    """Any loss trains the EGNN through the score-network protocol: on a fixed evaluation draw the
    loss falls after a few dozen Adam steps on fresh draws."""
    torch.manual_seed(0)
    process = molecule_process()
    x0, batch = molecule_states()
    model = EGNN(EGNNConfig(num_types=5, hidden=32, layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def fn(*args, **kwargs):
        if loss == "ism":
            return ism_loss(*args, **kwargs)
        mode = loss.split("-")[-1]
        return local_dsm_loss(*args, mode=mode, step=ConstantBudget(0.2), **kwargs)

    def evaluate():
        return float(
            fn(model, process, x0, batch, generator=torch.Generator().manual_seed(7)).mean()
        )

    before = evaluate()
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        value = fn(model, process, x0, batch, generator=gen).mean()
        opt.zero_grad()
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert evaluate() < before
