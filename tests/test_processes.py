"""Physical drifts: symmetries, centre of mass, autograd against finite differences, closed forms."""

import pytest
import torch

from pipeline.batching import remove_mean, scatter_sum
from pipeline.energies import (
    CappedLennardJones,
    Energy,
    HarmonicConfinement,
    Morse,
    SoftSphere,
)
from pipeline.processes import GradientProcess, NoClosedFormTransition, vp_process

F64 = torch.float64
PER_PAIR = torch.tensor([[1.0, 1.4], [1.4, 1.9]], dtype=F64)  # per-element-pair sigma (2 types)

ENERGIES = {
    "harmonic": Energy([HarmonicConfinement(1.0)]),
    "soft-sphere": Energy([HarmonicConfinement(1.0), SoftSphere(2.0, 1.2)]),
    "morse": Energy([HarmonicConfinement(0.5), Morse(1.0, 1.5, 1.1)]),
    "capped-lj": Energy([HarmonicConfinement(1.0), CappedLennardJones(0.5, 1.0, 0.5)]),
    "per-pair": Energy([HarmonicConfinement(1.0), SoftSphere(1.0, PER_PAIR)]),
}


def random_orthogonal(gen: torch.Generator) -> torch.Tensor:
    """A random element of O(3), a reflection half of the time (float64)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.rand(1, generator=gen) < 0.5:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    return q


def molecules(gen):
    batch = torch.tensor([0] * 5 + [1] * 7)
    x = remove_mean(1.2 * torch.randn(12, 3, generator=gen, dtype=F64), batch)
    types = torch.randint(0, 2, (12,), generator=gen)
    return x, batch, types


@pytest.mark.parametrize("name", list(ENERGIES))
def test_drift_is_e3_and_permutation_equivariant_and_keeps_centre_of_mass(name):
    process = GradientProcess(ENERGIES[name], com_free=True)
    gen = torch.Generator().manual_seed(0)
    x, batch, types = molecules(gen)
    f = process.drift_field(x, batch, types)
    for _ in range(3):
        rot = random_orthogonal(gen)
        shift = torch.randn(2, 3, generator=gen, dtype=F64)[batch]
        torch.testing.assert_close(process.drift_field(x @ rot.T + shift, batch, types), f @ rot.T)
    perm = torch.cat([torch.randperm(5, generator=gen), 5 + torch.randperm(7, generator=gen)])
    torch.testing.assert_close(process.drift_field(x[perm], batch, types[perm]), f[perm])
    torch.testing.assert_close(
        scatter_sum(f, batch, 2), torch.zeros(2, 3, dtype=F64), atol=1e-12, rtol=0
    )
    u = process.potential(x, batch, types)
    torch.testing.assert_close(process.potential(x @ random_orthogonal(gen).T, batch, types), u)


@pytest.mark.parametrize("name", list(ENERGIES))
def test_autograd_drift_and_jacobian_match_finite_differences(name):
    process = GradientProcess(ENERGIES[name], com_free=True)
    gen = torch.Generator().manual_seed(1)
    x, batch, types = molecules(gen)
    h = 1e-6
    u0 = process.potential(x, batch, types)
    f = process.drift_field(x, batch, types)
    jac, _ = process.drift_jacobian(x, batch, types)
    for node, axis in [(0, 0), (3, 2), (9, 1)]:
        dx = torch.zeros_like(x)
        dx[node, axis] = h
        g = batch[node]
        du = (process.potential(x + dx, batch, types) - process.potential(x - dx, batch, types)) / (
            2 * h
        )
        assert float(-0.5 * du[g]) == pytest.approx(float(f[node, axis]), abs=1e-6)
        df = (
            process.drift_field(x + dx, batch, types) - process.drift_field(x - dx, batch, types)
        ) / (2 * h)
        local = int(node - (batch < g).sum())
        column = jac[g, :, local * 3 + axis]
        rows = df[batch == g].reshape(-1)
        torch.testing.assert_close(column[: rows.numel()], rows, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(u0).all()
    torch.testing.assert_close(jac, jac.transpose(1, 2))


def test_pair_forces_stay_bounded_when_atoms_overlap():
    batch = torch.zeros(2, dtype=torch.long)
    for name in ["soft-sphere", "morse", "capped-lj"]:
        process = GradientProcess(ENERGIES[name], com_free=True)
        for gap in [1e-9, 1e-3, 0.3]:
            x = torch.tensor([[0.0, 0.0, 0.0], [gap, 0.0, 0.0]], dtype=F64)
            f = process.drift_field(remove_mean(x, batch), batch)
            assert torch.isfinite(f).all() and float(f.abs().max()) < 50, (name, gap)


def test_harmonic_drift_is_the_vp_drift_and_only_it_has_a_closed_form():
    """U = |x - xbar|^2/2 gives F = -1/2 (x - xbar): EDM's VP drift on the CoM-free subspace."""
    gen = torch.Generator().manual_seed(2)
    x, batch, _ = molecules(gen)
    process = vp_process(com_free=True)
    torch.testing.assert_close(process.drift_field(x, batch), -0.5 * x)
    t = torch.tensor([0.3, 0.6], dtype=F64)
    tr = process.transition(x, t, batch)
    a2 = torch.exp(-process.schedule.integral(torch.zeros_like(t), t))
    torch.testing.assert_close(tr.std**2, 1 - a2)
    with pytest.raises(NoClosedFormTransition):
        GradientProcess(ENERGIES["soft-sphere"]).transition(x, t, batch)


def test_stationary_score_of_a_harmonic_trap_is_minus_k_x():
    """exp(-U) with U = k/2 |x|^2 (not centred): the score -grad U = 2 F = -k x."""
    k = 2.5
    process = GradientProcess(Energy([HarmonicConfinement(k, centred=False)]))
    x = torch.randn(6, 2, dtype=F64)
    torch.testing.assert_close(2 * process.drift_field(x, torch.arange(6)), -k * x)
