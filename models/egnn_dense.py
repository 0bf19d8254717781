"""EDM's padded, dense layout of the EGNN maths, run on the weights of an :class:`models.egnn.EGNN`.

This mirrors ``EGNN_dynamics_QM9._forward`` and ``egnn/egnn_new.py`` of EDM step by step: molecules
padded to ``n_max`` atoms with a node mask, all ``n_max^2`` ordered pairs of every molecule as edges
(the diagonal and padding removed by an edge mask, not skipped), the edge MLPs applied to the full
concatenation ``[h_i, h_j, e_ij]``. It exists to check that the sparse :class:`EGNN` computes the
same function (``tests/test_egnn.py``) and to measure what the sparse layout saves
(``benchmarks/bench_models.py``); it is not a model to train.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.egnn import EGNN


def _segment_sum(data: Tensor, row: Tensor, num: int, model: EGNN) -> Tensor:
    """EDM's ``unsorted_segment_sum`` with its 'sum' / 'mean' normalisation."""
    out = data.new_zeros((num, data.shape[1])).index_add_(0, row, data)
    if model.cfg.aggregation == "sum":
        return out / model.cfg.normalization_factor
    count = data.new_zeros((num, data.shape[1])).index_add_(0, row, torch.ones_like(data))
    count[count == 0] = 1
    return out / count


def dense_forward(
    model: EGNN, pos: Tensor, h: Tensor, t: Tensor, node_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """``pos (B, n, 3)``, ``h (B, n, K)``, ``t (B,)``, ``node_mask (B, n)`` -> scores shaped as inputs.

    EDM's mean aggregation counts masked edges too (``norm`` counts every row entry); like the
    sparse model it is exact for ``aggregation='sum'``, the configuration EDM trains.
    """
    cfg = model.cfg
    b, n, _ = pos.shape
    mask = node_mask.reshape(b * n, 1).to(pos.dtype)
    idx = torch.arange(b * n).reshape(b, n)
    row = idx[:, :, None].expand(b, n, n).reshape(-1)
    col = idx[:, None, :].expand(b, n, n).reshape(-1)
    edge_mask = (mask[row] * mask[col]) * (row != col).to(pos.dtype)[:, None]
    x0 = pos.reshape(b * n, 3) * mask
    feats = h.reshape(b * n, -1) * mask
    time = model.time(t.to(pos.dtype))[:, None, :].expand(b, n, -1).reshape(b * n, -1)
    feats = model.embedding(torch.cat([feats, time], dim=1))
    dist0 = (x0[row] - x0[col]).pow(2).sum(1, keepdim=True)
    x = x0
    for block in model.blocks:
        diff = x[row] - x[col]
        radial = diff.pow(2).sum(1, keepdim=True)
        unit = diff / (torch.sqrt(radial + 1e-8) + cfg.norm_constant)
        edge_attr = torch.cat([radial, dist0], dim=1)
        gcl = block.gcl
        m = gcl.edge_mlp(torch.cat([feats[row], feats[col], edge_attr], dim=1))
        if gcl.att_mlp is not None:
            m = m * torch.sigmoid(gcl.att_mlp(m))
        agg = _segment_sum(m * edge_mask, row, b * n, model)
        feats = (feats + gcl.node_mlp(torch.cat([feats, agg], dim=1))) * mask
        gate = block.coord.coord_mlp(torch.cat([feats[row], feats[col], edge_attr], dim=1))
        if cfg.tanh:
            gate = torch.tanh(gate) * cfg.coords_range
        x = (x + _segment_sum(unit * gate * edge_mask, row, b * n, model)) * mask
    vel = ((x - x0) * mask).reshape(b, n, 3)
    counts = node_mask.sum(1, keepdim=True).to(pos.dtype)
    vel = vel - (vel.sum(1) / counts)[:, None, :] * node_mask[:, :, None]
    h_out = (model.embedding_out(feats) * mask).reshape(b, n, -1)
    return vel, h_out
