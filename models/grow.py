"""Function-preserving growth of a trained EGNN into a wider and deeper one.

``grow_egnn(small, large)`` writes ``small``'s weights into a freshly built ``large`` (same config but
``hidden >= small``'s and ``layers >= small``'s) so that ``large`` computes exactly the function of
``small``, yet every new parameter can learn. This is Net2Net's idea (Chen, Goodfellow & Shlens,
ICLR 2016: start a bigger network at the function of a trained one and keep training) with zero
initialisation instead of unit duplication:

- **wider**: each linear map of ``small`` is copied into the leading block of the matching map of
  ``large``; the new output rows keep their fresh random initialisation, the new input columns are
  set to zero. A new channel therefore has a non-zero value but no effect on any old channel, and
  the gradient of the zeroed weights (new channel value x upstream gradient) is non-zero from the
  first step.
- **deeper**: blocks beyond ``small``'s depth are appended with the output layers of their node MLP
  (``h <- h + node_mlp(.)``) and coordinate MLP (``x <- x + sum_j unit_ij gate_ij``) zeroed, so each
  starts as the identity map; their other layers keep the fresh initialisation, so the zeroed layers
  receive gradients at once.

Every EGNN linear map reads ``n`` width-sized segments followed by a part of fixed size (edge
features, types and time): ``[h_i, h_j, e_ij]``, ``[h, sum_j m_ij]``, ``[h]`` or ``[types, time]``.
The number of segments is read off the two shapes, so the copy needs no table of layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.egnn import EGNN

# The layers whose output is added to the residual state; zeroed in an appended block.
_IDENTITY_OUTPUTS = ("gcl.node_mlp.2", "coord.coord_mlp.4")


def _column_map(n_small: int, n_large: int, h_small: int, h_large: int) -> Tensor:
    """Where each of ``n_small`` input columns of a small linear map lies among ``n_large``.

    Inputs are ``k`` segments of the width (``h_small`` -> ``h_large`` each) and then a fixed part of
    ``n_small - k h_small`` columns; returns ``(n_small,)`` column indices into the large input.
    """
    k = 0 if h_large == h_small else (n_large - n_small) // (h_large - h_small)
    index = [s * h_large + c for s in range(k) for c in range(h_small)]
    fixed = n_small - k * h_small
    index += [k * h_large + c for c in range(fixed)]
    return torch.tensor(index, dtype=torch.long)


def _copy_linear(small: nn.Linear, large: nn.Linear, h_small: int, h_large: int) -> None:
    """Copy ``small`` into ``large``: old block copied, new columns zero, new rows left as built."""
    out_s, in_s = small.weight.shape
    in_l = large.weight.shape[1]
    cols = _column_map(in_s, in_l, h_small, h_large)
    rows = torch.arange(out_s)
    with torch.no_grad():
        new_cols = torch.ones(in_l, dtype=torch.bool)
        new_cols[cols] = False
        large.weight[:, new_cols] = 0.0
        large.weight[rows[:, None], cols[None, :]] = small.weight
        if small.bias is not None:
            large.bias[rows] = small.bias


def grow_egnn(small: EGNN, large: EGNN) -> EGNN:
    """Make ``large`` compute ``small``'s function (see the module docstring); returns ``large``.

    ``small``, ``large``: EGNNs whose configs agree in everything but ``hidden`` and ``layers``,
    with ``large``'s at least ``small``'s. ``large`` is changed in place. Raises ``ValueError``
    naming the config field that makes the growth impossible.
    """
    a, b = small.cfg, large.cfg
    differ = sorted(
        k for k, v in a.model_dump().items() if k not in ("hidden", "layers") and v != getattr(b, k)
    )
    if differ:
        raise ValueError(f"cannot grow an EGNN into one with a different {', '.join(differ)}")
    for field in ("hidden", "layers"):
        if getattr(b, field) < getattr(a, field):
            raise ValueError(
                f"cannot grow an EGNN into a smaller one: {field} {getattr(a, field)} -> "
                f"{getattr(b, field)}"
            )
    layers_small = dict(small.named_modules())
    for name, module in large.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name in layers_small:
            _copy_linear(layers_small[name], module, a.hidden, b.hidden)
        elif name.split(".", 2)[2] in _IDENTITY_OUTPUTS:  # blocks.<i>.<layer>
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
    return large
