"""CSPNet: periodic, rotation and permutation contracts on the layer and the model; heads."""

from __future__ import annotations

import math

import pytest
import torch
from ase.build import bulk
from contracts import Inputs, Kind, assert_close, assert_graph_contracts, crystal_inputs

from models.config import CSPNetConfig
from models.cspnet import CrystalScore, CSPNet, gram_features
from models.embeddings import gaussian_distance_features, periodic_fourier_features
from models.graph import minimum_image_distance, periodic_edges

SMALL = CSPNetConfig(hidden=16, layers=2, num_freqs=4, time_dim=8)
DTYPES = [torch.float64, torch.float32]


def _crystals() -> list:
    """Real elemental and binary cells, primitive (oblique lattices) and conventional."""
    return [
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("ZnO", "wurtzite", a=3.25, c=5.2),
        bulk("Fe", "bcc", a=2.87),
        bulk("Cu", "fcc", a=3.61, cubic=True),
        bulk("Si", "diamond", a=5.43),
    ]


def _model(cfg: CSPNetConfig, dtype: torch.dtype) -> CSPNet:
    torch.manual_seed(0)
    return CSPNet(cfg).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_csp_layer_contracts(dtype):
    model = _model(SMALL, dtype)

    def fn(inp: Inputs) -> dict[str, torch.Tensor]:
        edge_index, frac_diff = periodic_edges(inp.frac, inp.batch, inp.num_graphs)
        fourier = periodic_fourier_features(frac_diff, SMALL.num_freqs)
        feats = model.embedding(torch.cat([inp.h, model.time(inp.t)[inp.batch]], dim=1))
        gram = gram_features(inp.lattice)
        return {"h": model.layers[0](feats, gram, inp.batch, edge_index, fourier)}

    assert_graph_contracts(fn, {"h": Kind.INVARIANT}, crystal_inputs(_crystals(), dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        SMALL.model_copy(update={"layer_norm": True, "time_embedding": "scalar"}),
        SMALL.model_copy(update={"distance_features": 8}),
    ],
    ids=["diffcsp", "layernorm-scalar-time", "distances"],
)
def test_cspnet_contracts(cfg, dtype):
    model = _model(cfg, dtype)

    def fn(inp: Inputs) -> dict[str, torch.Tensor]:
        return model(inp.frac, inp.lattice, inp.h, inp.t, inp.batch)._asdict()

    spec = {"frac": Kind.INVARIANT, "lattice": Kind.LATTICE, "h": Kind.INVARIANT}
    assert_graph_contracts(fn, spec, crystal_inputs(_crystals(), dtype=dtype))


def test_output_shapes_and_time_dependence():
    model = _model(SMALL, torch.float64)
    inp = crystal_inputs(_crystals())
    out = model(inp.frac, inp.lattice, inp.h, inp.t, inp.batch)
    assert isinstance(out, CrystalScore)
    assert out.frac.shape == inp.frac.shape and out.h.shape == inp.h.shape
    assert out.lattice.shape == inp.lattice.shape
    later = model(inp.frac, inp.lattice, inp.h, inp.t + 0.1, inp.batch)
    assert (later.frac - out.frac).abs().max() > 1e-6


def test_lattice_score_turns_with_the_cell():
    """The lattice score is M(L L^T, ...) L: a cubic cell turned by 90 degrees about z has the same
    Gram matrix, hence the same M, and its score is the first score turned alike."""
    model = _model(SMALL, torch.float64)
    cell = crystal_inputs([bulk("Cu", "fcc", a=3.61, cubic=True)])
    quarter = torch.tensor(
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    turned = cell.lattice @ quarter.T
    assert torch.allclose(gram_features(turned), gram_features(cell.lattice))
    a = model(cell.frac, cell.lattice, cell.h, cell.t, cell.batch).lattice
    b = model(cell.frac, turned, cell.h, cell.t, cell.batch).lattice
    assert_close(b, a @ quarter.T, "90 degree turn")


def test_parameter_counts_match_config():
    for cfg in (
        SMALL,
        CSPNetConfig(),
        CSPNetConfig(layer_norm=True, time_embedding="scalar"),
        CSPNetConfig(distance_features=32),
    ):
        assert sum(p.numel() for p in CSPNet(cfg).parameters()) == cfg.parameter_count()


def test_minimum_image_distance_matches_analytic_lengths():
    """On a cubic cell of side a the displacement (0.9, 0, 0) is 0.1 a long (its image) and
    (0.5, 0.5, 0) a / sqrt 2; conventional fcc Cu's first two atoms and primitive (oblique) diamond
    Si's two atoms are nearest neighbours, a / sqrt 2 and a sqrt 3 / 4 apart, whatever lattice
    vector is added to the displacement; an atom's own images are 0 away."""
    a = 3.0
    gram = (a * a * torch.eye(3, dtype=torch.float64)).expand(3, 3, 3)
    diff = torch.tensor([[0.9, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], dtype=torch.float64)
    want = torch.tensor([0.1 * a, a / 2**0.5, a * (2 * 0.25**2) ** 0.5], dtype=torch.float64)
    assert_close(minimum_image_distance(diff, gram), want, "cubic cell")
    for atoms, bond in (
        (bulk("Cu", "fcc", a=3.61, cubic=True), 3.61 / 2**0.5),
        (bulk("Si", "diamond", a=5.43), 5.43 * 3**0.5 / 4),
    ):
        cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
        frac = torch.tensor(atoms.get_scaled_positions(), dtype=torch.float64)
        lattice_vector = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
        diff = torch.stack([frac[1] - frac[0] + lattice_vector, lattice_vector])
        got = minimum_image_distance(diff, (cell @ cell.T).expand(2, 3, 3))
        want = torch.tensor([bond, 0.0], dtype=torch.float64)
        assert_close(got, want, atoms.get_chemical_formula())


def test_gaussian_distance_features_peak_at_their_centres():
    """exp(-((d - mu) / delta)^2): 1 at a centre, e^-1 one spacing away, width set by the spacing."""
    centres = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    feats = gaussian_distance_features(centres, count=4, cutoff=3.0)
    assert_close(feats.diagonal(), torch.ones(4, dtype=torch.float64), "at the centres")
    assert_close(feats[1, 0], torch.tensor(math.exp(-1.0), dtype=torch.float64), "one spacing")
