"""Molecule states (pos, one-hot types): their process of named parts and the EGNN under every loss."""

import pytest
import torch
from ase.collections import g2

from models.config import EGNNConfig
from models.egnn import EGNN
from pipeline.batching import remove_mean
from pipeline.energies import Energy, HarmonicConfinement, SoftSphere
from pipeline.losses import ConstantBudget, ism_loss, local_dsm_loss
from pipeline.molecule_recipe import MoleculeState
from pipeline.node_parts import NodeParts
from pipeline.processes import GradientProcess, vp_process

F64 = torch.float64
ELEMENTS = [1, 6, 7, 8, 9]  # QM9's H, C, N, O, F


def molecule_states(names=("CH3OH", "C2H6", "CH3CHO", "HCN")):
    """Real molecules from ase's g2 set as a :class:`MoleculeState` and ``batch``."""
    rows, batch = [], []
    for i, name in enumerate(names):
        atoms = g2[name]
        pos = torch.tensor(atoms.positions, dtype=torch.float32)
        onehot = torch.nn.functional.one_hot(
            torch.tensor([ELEMENTS.index(z) for z in atoms.numbers]), len(ELEMENTS)
        ).float()
        rows.append(torch.cat([pos - pos.mean(0), onehot], dim=1))
        batch += [i] * len(atoms)
    x = torch.cat(rows)
    return MoleculeState(x[:, :3], x[:, 3:]), torch.tensor(batch)


def molecule_process():
    physical = GradientProcess(
        Energy([HarmonicConfinement(1.0), SoftSphere(1.0, 1.0)]), com_free=True
    )
    return NodeParts(MoleculeState(pos=physical, types=vp_process()))


@pytest.mark.parametrize("mode", ["expm", "split"])
def test_linear_parts_have_the_closed_form_transition(mode):
    """Every part steps under its own process: the expm and the split (exponential Euler) steps of
    the linear parts are the closed-form transition, the noise one joint draw."""
    process = NodeParts(MoleculeState(pos=vp_process(com_free=True), types=vp_process()))
    x0, batch = molecule_states()
    x0 = MoleculeState(*(v.double() for v in x0))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64)
    budget = process.schedule.integral(0 * t, t)
    y_t, target = process.local_step(x0, budget, batch, torch.Generator().manual_seed(3), mode)
    eps = torch.randn((batch.numel(), 8), generator=torch.Generator().manual_seed(3), dtype=F64)
    expected_noise = (remove_mean(eps[:, :3], batch), eps[:, 3:])
    closed = process.transition(x0, t, batch)
    for tr, y, score, e in zip(closed, y_t, target, expected_noise, strict=True):
        std = tr.std[batch, None]
        torch.testing.assert_close(y, tr.mean + std * e)
        torch.testing.assert_close(score, -e / std)


def test_noise_is_one_joint_draw_and_positions_stay_centred():
    """The parts' noise is the columns of one ``(N, 3 + K)`` draw (the random stream of the
    concatenated layout), and a physical step keeps positions and their target CoM-free."""
    process = molecule_process()
    x, batch = molecule_states()
    noise = process.noise(x, torch.Generator().manual_seed(5))
    joint = torch.randn((batch.numel(), 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(noise.pos, joint[:, :3]) and torch.equal(noise.types, joint[:, 3:])
    y_t, target = process.local_step(x, torch.full((4,), 0.05), batch, None, "expm")
    assert y_t.pos.shape == (batch.numel(), 3) and y_t.types.shape == (batch.numel(), 5)
    torch.testing.assert_close(remove_mean(y_t.pos, batch), y_t.pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(remove_mean(target.pos, batch), target.pos, atol=1e-4, rtol=0)


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
