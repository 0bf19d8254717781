"""The contract helpers catch deliberately broken modules (and pass a correct one)."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from contracts import (
    Inputs,
    Kind,
    assert_batch_independent,
    assert_no_cross_graph_gradient,
    assert_periodic_shift_invariant,
    assert_permutation_equivariant,
    assert_rotation_equivariant,
    assert_translation_invariant,
    crystal_inputs,
    molecule_inputs,
    random_orthogonal,
)

from models.embeddings import periodic_fourier_features
from models.graph import (
    fully_connected_edges,
    periodic_edges,
    remove_mean,
    scatter_mean,
    scatter_sum,
)

NAMES = ("CH3CH2OH", "H2O", "C6H6")
SPEC = {"pos": Kind.VECTOR}


def _pair_forces(inp: Inputs, pos: torch.Tensor) -> torch.Tensor:
    """A correct equivariant layer: sum_j (x_i - x_j) exp(-|x_i - x_j|) per molecule, (N, 3)."""
    row, col = fully_connected_edges(inp.batch, inp.num_graphs)
    diff = pos[row] - pos[col]
    weight = torch.exp(-diff.norm(dim=1, keepdim=True))
    return scatter_sum(diff * weight, row, pos.shape[0])


def correct(inp: Inputs) -> dict[str, torch.Tensor]:
    return {"pos": _pair_forces(inp, inp.pos)}


def uses_absolute_positions(inp: Inputs) -> dict[str, torch.Tensor]:
    """The classic bug: an absolute position leaks into a message weight."""
    row, col = fully_connected_edges(inp.batch, inp.num_graphs)
    diff = inp.pos[row] - inp.pos[col]
    weight = torch.exp(-diff.norm(dim=1, keepdim=True)) * (1.0 + 0.1 * inp.pos[row, :1])
    return {"pos": scatter_sum(diff * weight, row, inp.pos.shape[0])}


def centres_over_whole_batch(inp: Inputs) -> dict[str, torch.Tensor]:
    """Removes the mean over the whole batch instead of per molecule: graphs interact."""
    out = _pair_forces(inp, inp.pos) + inp.pos
    return {"pos": out - out.mean(0, keepdim=True)}


def depends_on_node_order(inp: Inputs) -> dict[str, torch.Tensor]:
    """Scales each node by its index inside its molecule: not permutation equivariant."""
    start = torch.cumsum(torch.bincount(inp.batch), 0) - torch.bincount(inp.batch)
    index = torch.arange(inp.batch.numel()) - start[inp.batch]
    return {"pos": _pair_forces(inp, inp.pos) * (1.0 + index[:, None])}


def not_com_free(inp: Inputs) -> dict[str, torch.Tensor]:
    """Correct per molecule except that it returns positions where a vector is declared."""
    return {"pos": remove_mean(inp.pos, inp.batch, inp.num_graphs) + inp.pos}


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    return molecule_inputs(NAMES)


def test_correct_module_passes(inputs):
    for check in (
        assert_rotation_equivariant,
        assert_translation_invariant,
        assert_permutation_equivariant,
        assert_batch_independent,
        assert_no_cross_graph_gradient,
    ):
        check(correct, SPEC, inputs)


@pytest.mark.parametrize(
    ("module", "check"),
    [
        (uses_absolute_positions, assert_rotation_equivariant),
        (uses_absolute_positions, assert_translation_invariant),
        (not_com_free, assert_translation_invariant),
        (centres_over_whole_batch, assert_batch_independent),
        (centres_over_whole_batch, assert_no_cross_graph_gradient),
        (depends_on_node_order, assert_permutation_equivariant),
    ],
)
def test_checks_catch_broken_module(inputs, module, check):
    with pytest.raises(AssertionError):
        check(module, SPEC, inputs)


def test_random_orthogonal_has_rotations_and_reflections():
    q = random_orthogonal(6, torch.Generator().manual_seed(0))
    eye = torch.eye(3, dtype=torch.float64).expand(6, 3, 3)
    assert torch.allclose(q @ q.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(q), torch.tensor([1.0, -1.0] * 3, dtype=torch.float64))


CRYSTAL_SPEC = {"frac": Kind.INVARIANT, "lattice": Kind.LATTICE}


def _periodic_crystal_module(inp: Inputs, frac_diff: torch.Tensor, gram: torch.Tensor):
    """Mean Fourier message per atom and a lattice head ``(1 + |mean message|) L``."""
    edge_index, _ = periodic_edges(inp.frac, inp.batch, inp.num_graphs)
    msg = periodic_fourier_features(frac_diff, 2)[:, :3] * gram[inp.batch[edge_index[0]], :1]
    node = scatter_mean(msg, edge_index[0], inp.frac.shape[0])
    scale = 1.0 + scatter_mean(node, inp.batch, inp.num_graphs).norm(dim=1)
    return {"frac": node, "lattice": scale[:, None, None] * inp.lattice}


def correct_crystal(inp: Inputs) -> dict[str, torch.Tensor]:
    _, frac_diff = periodic_edges(inp.frac, inp.batch, inp.num_graphs)
    gram = (inp.lattice @ inp.lattice.transpose(1, 2)).reshape(-1, 9)
    return _periodic_crystal_module(inp, frac_diff, gram)


def unwrapped_differences(inp: Inputs) -> dict[str, torch.Tensor]:
    """Uses raw fractional differences (no torus): breaks under moving an atom by a lattice vector."""
    edge_index, _ = periodic_edges(inp.frac, inp.batch, inp.num_graphs)
    frac_diff = 0.3 * (inp.frac[edge_index[1]] - inp.frac[edge_index[0]])
    gram = (inp.lattice @ inp.lattice.transpose(1, 2)).reshape(-1, 9)
    return _periodic_crystal_module(inp, frac_diff, gram)


def raw_lattice_entries(inp: Inputs) -> dict[str, torch.Tensor]:
    """Feeds the lattice matrix itself instead of L L^T: depends on the Cartesian frame."""
    _, frac_diff = periodic_edges(inp.frac, inp.batch, inp.num_graphs)
    return _periodic_crystal_module(inp, frac_diff, inp.lattice.reshape(-1, 9))


def test_crystal_checks_pass_a_periodic_module_and_catch_broken_ones():
    inp = crystal_inputs([bulk("NaCl", "rocksalt", a=5.64), bulk("ZnO", "wurtzite", a=3.25, c=5.2)])
    assert_periodic_shift_invariant(correct_crystal, CRYSTAL_SPEC, inp)
    assert_rotation_equivariant(correct_crystal, CRYSTAL_SPEC, inp)
    with pytest.raises(AssertionError, match="periodic shift|lattice translation"):
        assert_periodic_shift_invariant(unwrapped_differences, CRYSTAL_SPEC, inp)
    with pytest.raises(AssertionError, match="rotation"):
        assert_rotation_equivariant(raw_lattice_entries, CRYSTAL_SPEC, inp)
