"""EGNN: contracts on every layer and the whole model, EDM's maths, protocol, stability."""

from __future__ import annotations

import pytest
import torch
from contracts import (
    Inputs,
    Kind,
    assert_close,
    assert_graph_contracts,
    molecule_inputs,
)
from torch import nn

from models.config import EGNNConfig
from models.egnn import EGNN, GCL, CoordUpdate, EquivariantBlock, edge_linear
from models.egnn_dense import dense_forward
from models.graph import fully_connected_edges

NAMES = ("CH3CH2OH", "C6H6", "H2O", "CF3CN", "C5H5N", "H")  # 9, 12, 3, 6, 11 and 1 atoms
SMALL = EGNNConfig(hidden=16, layers=2)
DTYPES = [torch.float64, torch.float32]


def _model(cfg: EGNNConfig, dtype: torch.dtype) -> EGNN:
    torch.manual_seed(0)
    return EGNN(cfg).to(dtype)


def _node_features(model: EGNN, inp: Inputs) -> torch.Tensor:
    """Hidden features as the first block sees them (invariant inputs for layer tests)."""
    time = model.time(inp.t)[inp.batch]
    return model.embedding(torch.cat([inp.h, time], dim=1))


def _edges(inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    edge_index = fully_connected_edges(inp.batch, inp.num_graphs)
    row, col = edge_index
    return edge_index, (inp.pos[row] - inp.pos[col]).pow(2).sum(-1, keepdim=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gcl_contracts(dtype):
    model = _model(SMALL, dtype)
    layer: GCL = model.blocks[0].gcl

    def fn(inp: Inputs) -> dict[str, torch.Tensor]:
        edge_index, dist2 = _edges(inp)
        return {"h": layer(_node_features(model, inp), edge_index, torch.cat([dist2, dist2], 1))}

    assert_graph_contracts(fn, {"h": Kind.INVARIANT}, molecule_inputs(NAMES, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_coord_update_contracts(dtype):
    model = _model(SMALL, dtype)
    layer: CoordUpdate = model.blocks[0].coord
    nn.init.normal_(layer.coord_mlp[-1].weight)  # a trained-size gate, not EDM's 1e-3 start

    def fn(inp: Inputs) -> dict[str, torch.Tensor]:
        edge_index, dist2 = _edges(inp)
        row, col = edge_index
        diff = inp.pos[row] - inp.pos[col]
        unit = diff / (dist2.sqrt() + 1.0)
        feats = _node_features(model, inp)
        return {"pos": layer(feats, inp.pos, edge_index, unit, torch.cat([dist2, dist2], 1))}

    assert_graph_contracts(fn, {"pos": Kind.POSITION}, molecule_inputs(NAMES, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_contracts(dtype):
    model = _model(SMALL, dtype)
    block: EquivariantBlock = model.blocks[0]

    def fn(inp: Inputs) -> dict[str, torch.Tensor]:
        edge_index, dist2 = _edges(inp)
        h, pos = block(_node_features(model, inp), inp.pos, edge_index, dist2)
        return {"h": h, "pos": pos}

    spec = {"h": Kind.INVARIANT, "pos": Kind.POSITION}
    assert_graph_contracts(fn, spec, molecule_inputs(NAMES, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        SMALL.model_copy(update={"cutoff": 2.5, "aggregation": "mean", "attention": False}),
        SMALL.model_copy(update={"time_embedding": "sinusoidal", "tanh": False}),
    ],
    ids=["edm", "radius-mean", "sinusoidal-untanh"],
)
def test_egnn_contracts(cfg, dtype):
    model = _model(cfg, dtype)
    for block in model.blocks:  # leave EDM's near-zero start so the position score is not ~0
        nn.init.normal_(block.coord.coord_mlp[-1].weight, std=0.3)

    def fn(inp: Inputs) -> dict[str, torch.Tensor]:
        pos_score, h_score = model.score(inp.pos, inp.h, inp.t, inp.batch)
        return {"pos": pos_score, "h": h_score}

    spec = {"pos": Kind.VECTOR, "h": Kind.INVARIANT}
    assert_graph_contracts(fn, spec, molecule_inputs(NAMES, dtype))


def test_edge_linear_equals_linear_on_concatenation():
    torch.manual_seed(1)
    h, attr = torch.randn(7, 5, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    edge_index = torch.randint(0, 7, (2, 12))
    lin = nn.Linear(12, 4).double()
    expected = lin(torch.cat([h[edge_index[0]], h[edge_index[1]], attr], dim=1))
    assert_close(edge_linear(lin, h, edge_index, attr), expected, "fused edge linear")


def test_sparse_model_equals_edm_dense_layout():
    """Same weights, same function as EDM's padded all-pairs computation with masks."""
    model = _model(SMALL, torch.float64)
    for block in model.blocks:
        nn.init.normal_(block.coord.coord_mlp[-1].weight, std=0.3)
    inp = molecule_inputs(NAMES)
    pos_score, h_score = model.score(inp.pos, inp.h, inp.t, inp.batch)
    n = torch.bincount(inp.batch)
    dense_pos = torch.zeros(len(NAMES), int(n.max()), 3, dtype=torch.float64)
    dense_h = torch.zeros(len(NAMES), int(n.max()), 5, dtype=torch.float64)
    mask = torch.arange(int(n.max()))[None, :] < n[:, None]
    dense_pos[mask], dense_h[mask] = inp.pos, inp.h
    vel, h_out = dense_forward(model, dense_pos, dense_h, inp.t, mask)
    assert_close(pos_score, vel[mask], "position score vs EDM layout")
    assert_close(h_score, h_out[mask], "type score vs EDM layout")
    assert pos_score.abs().max() > 1e-2  # the comparison is not between two zeros


def test_parameter_counts_match_config_and_edm():
    for cfg in (SMALL, EGNNConfig(attention=False, time_embedding="sinusoidal")):
        assert sum(p.numel() for p in EGNN(cfg).parameters()) == cfg.parameter_count()
    # EDM's QM9 model (5 types + charge, time appended): 5.34 M at 9 x 256, 0.60 M at 4 x 128.
    assert round(EGNNConfig(num_types=6, layers=9, hidden=256).parameter_count() / 1e6, 2) == 5.34
    assert round(EGNNConfig(num_types=6).parameter_count() / 1e6, 2) == 0.60


def test_protocol_shape_com_free_and_time_dependent():
    model = _model(SMALL, torch.float64)
    inp = molecule_inputs(NAMES)
    x = torch.cat([inp.pos, inp.h], dim=1)
    out = model(x, inp.t, inp.batch)
    assert out.shape == x.shape and out.dtype == x.dtype
    com = torch.zeros(len(NAMES), 3, dtype=out.dtype).index_add_(0, inp.batch, out[:, :3])
    assert com.abs().max() < 1e-12
    assert (model(x, inp.t + 0.05, inp.batch) - out).abs().max() > 1e-6


def test_fresh_network_moves_atoms_little_and_trains():
    """EDM's initialisation: the first position score is a small fraction of a bond length (each
    edge moves an atom by ~1e-3 coords_range); Adam then fits a fixed target without blowing up."""
    model = _model(SMALL, torch.float32)
    inp = molecule_inputs(NAMES[:5], torch.float32)
    x = torch.cat([inp.pos, inp.h], dim=1)
    out = model(x, inp.t, inp.batch)
    assert torch.isfinite(out).all()
    assert out[:, :3].abs().max() < 0.2
    target = torch.cat([0.5 * torch.tanh(inp.pos), inp.h], dim=1)
    target[:, :3] -= (
        torch.zeros(5, 3).index_add_(0, inp.batch, target[:, :3])
        / torch.bincount(inp.batch)[:, None]
    )[inp.batch]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (model(x, inp.t, inp.batch) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]


def test_gradcheck_tiny_model():
    """Finite differences agree with autograd (float64), positions and type features."""
    model = _model(EGNNConfig(hidden=6, layers=2), torch.float64)
    for block in model.blocks:
        nn.init.normal_(block.coord.coord_mlp[-1].weight, std=0.3)
    inp = molecule_inputs(("H2O", "CH4"))
    x = torch.cat([inp.pos, inp.h], dim=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: model(y, inp.t, inp.batch), (x,))


def test_radius_graph_with_large_cutoff_equals_fully_connected():
    inp = molecule_inputs(NAMES)
    full = _model(SMALL, torch.float64)
    radius = EGNN(SMALL.model_copy(update={"cutoff": 100.0})).double()
    radius.load_state_dict(full.state_dict())
    x = torch.cat([inp.pos, inp.h], dim=1)
    assert_close(radius(x, inp.t, inp.batch), full(x, inp.t, inp.batch), "cutoff 100 A")
