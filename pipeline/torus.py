"""The torus: periodic maths of fractional coordinates under a lattice (crystals).

* :func:`wrapped_normal_score`: the score of the wrapped normal, DiffCSP's exact-DSM target on the
  torus (Jiao et al. 2023, eq. 7), by summing images;
* :func:`cell_shifts`: which of the 27 cell shifts {-1, 0, 1}^3 a finite-range pair term can reach;
* :func:`periodic_pair_energy`, :func:`periodic_pair_gradient`, :func:`periodic_pair_hessian`: a
  radial pair term (:class:`pipeline.energies.PairTerm`) summed over the minimum image and its 26
  neighbours, with its fractional-coordinate gradient and Hessian from the term's own radial
  derivatives (``term.radial_derivatives``; closed form for soft spheres) and cut-off
  (``term.cutoff()``);
* :class:`TorusProcess`: the gradient process of that energy on lifted coordinates
  ``frac = c u mod 1`` with the lattice held fixed over a step (:mod:`pipeline.crystal_recipe`
  explains the state and why the lifted process is the right one).

The periodic sum equals the full lattice sum while the pair cut-off is below 1.5 x the smallest
cell height (true of real cells); only a finite-range term makes it exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.batching import from_dense, to_dense
from pipeline.energies import PairTerm, safe_length
from pipeline.processes import ForwardProcess
from pipeline.schedules import Schedule

# The 27 integer cell shifts {-1, 0, 1}^3 added to a wrapped fractional difference.
_SHIFTS = torch.tensor(
    [[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=torch.float64
)


def wrapped_normal_score(delta: Tensor, sigma: Tensor, images: int | None = None) -> Tensor:
    """``d/d delta log sum_k N(delta + k; 0, sigma^2)``, elementwise: the wrapped-normal score.

    ``delta`` any shape (any real; the result is 1-periodic in it), ``sigma`` broadcastable to it.
    Images ``k = -images..images`` (default ``ceil(6 max sigma) + 2``: the truncation error is below
    ``exp(-18)`` relative). Computed as the posterior mean of ``-(delta + k) / sigma^2`` over the
    images with a log-sum-exp, stable for every sigma.
    """
    delta = delta - torch.round(delta)
    sigma = torch.as_tensor(sigma, dtype=delta.dtype).expand_as(delta)
    if images is None:
        images = math.ceil(6 * float(sigma.max())) + 2
    k = torch.arange(-images, images + 1, dtype=delta.dtype)
    shifted = delta[..., None] + k  # (..., 2 images + 1)
    var = sigma[..., None] ** 2
    w = torch.softmax(-(shifted**2) / (2 * var), dim=-1)
    return (w * (-shifted / var)).sum(-1)


def cell_shifts(lattice: Tensor, cutoff: float | None) -> Tensor:
    """The cell shifts ``(S, 3)`` of {-1, 0, 1}^3 that can bring a pair closer than ``cutoff``.

    For a wrapped difference (``|Delta_k| <= 1/2``) and shift ``n``, the image's k-th fractional
    coordinate has size at least ``|n_k| - 1/2``, and ``|frac_k| <= |v| |a*_k|`` with ``a*_k`` the
    reciprocal vector (``|a*_k| = |a_i x a_j| / |det L|``, the inverse cell height). A shift with
    ``|n_k| - 1/2 >= cutoff |a*_k|`` for some k in every crystal of the batch only ever adds
    ``phi(r >= cutoff) = 0``: dropping it changes nothing and keeps 1 of 27 images for Perov-5
    cells. ``cutoff=None`` (an infinite-range term) keeps all 27. ``lattice (B, 3, 3)``.
    """
    shifts = _SHIFTS.to(lattice)
    if cutoff is None or lattice.shape[0] == 0:
        return shifts
    with torch.no_grad():
        a = lattice.detach()
        cross = torch.linalg.cross(a.roll(-1, dims=1), a.roll(-2, dims=1), dim=-1)  # (B, 3, 3)
        recip = torch.linalg.vector_norm(cross, dim=-1) / torch.linalg.det(a).abs()[:, None]
        recip = torch.nan_to_num(recip, nan=math.inf)  # a degenerate cell (0 / 0)
        reach = cutoff * recip.max(0).values  # (3,); inf for a singular cell keeps everything
        keep = ((shifts.abs() - 0.5) < reach).all(1)
    return shifts[keep]


def _image_vectors(frac: Tensor, lattice: Tensor, shifts: Tensor) -> Tensor:
    """Cartesian pair-image vectors ``(B, n, n, S, 3)`` of a padded batch.

    ``frac (B, n, 3)``, ``lattice (B, 3, 3)``, ``shifts (S, 3)``; entry ``[b, i, j, s]`` is
    ``(w(F_j - F_i) + n_s) L`` with ``w`` the wrap into [-0.5, 0.5].
    """
    diff = frac[:, None, :, :] - frac[:, :, None, :]
    diff = diff - torch.round(diff)
    images = diff[..., None, :] + shifts
    return torch.einsum("bijsk,bkl->bijsl", images, lattice)


def _pair_weight(mask: Tensor) -> Tensor:
    """``(B, n, n)``: 1 for ordered pairs ``i != j`` of real atoms."""
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def periodic_pair_energy(term: PairTerm, frac: Tensor, lattice: Tensor, mask: Tensor) -> Tensor:
    """``U(F; L) = sum_{i<j} sum_s phi(|(w(F_j - F_i) + n_s) L|)`` per crystal: ``(B,)``.

    ``frac (B, n, 3)`` padded fractional coordinates, ``lattice (B, 3, 3)``, ``mask (B, n)``.
    Self-image terms (i = j) do not depend on F and are left out.
    """
    v = _image_vectors(frac, lattice, cell_shifts(lattice, term.cutoff()))
    r = safe_length(v)
    phi = term.phi(r, *term.params(None, r)).sum(-1)  # (B, n, n)
    return 0.5 * (phi * _pair_weight(mask).to(phi.dtype)).sum((1, 2))


def periodic_pair_gradient(term: PairTerm, frac: Tensor, lattice: Tensor, mask: Tensor) -> Tensor:
    """``grad_F U`` ``(B, n, 3)``: ``-sum_j G_ij`` with ``G_ij = L sum_s phi'(r) v / r``.

    ``v = Delta L`` (rows), so ``grad_Delta phi(|Delta L|) = L grad_v`` (the chain rule);
    ``Delta_ij = F_j - F_i``. Forward-mode derivatives only, so it composes with torch.func.
    """
    v = _image_vectors(frac, lattice, cell_shifts(lattice, term.cutoff()))
    r = safe_length(v)
    (d1,) = term.radial_derivatives(r, 1)
    grad_v = torch.einsum("bijs,bijsl->bijl", d1 / r, v)  # (B, n, n, 3)
    g = torch.einsum("bijl,bkl->bijk", grad_v, lattice) * _pair_weight(mask)[..., None]
    return -g.sum(2)


def periodic_pair_hessian(term: PairTerm, frac: Tensor, lattice: Tensor, mask: Tensor) -> Tensor:
    """``Hess_F U`` ``(B, 3n, 3n)`` (node-major) from per-pair blocks ``H_ij = L sum_s A(v) L^T``.

    ``A = phi'' v v^T / r^2 + (phi' / r)(I - v v^T / r^2)`` is the Cartesian Hessian of a radial term
    (as :func:`pipeline.energies.pair_hessian`); each pair adds ``H_ij`` to the (i, i) block and
    ``-H_ij`` to (i, j).
    """
    b, n, _ = frac.shape
    v = _image_vectors(frac, lattice, cell_shifts(lattice, term.cutoff()))
    r = safe_length(v)
    d1, d2 = term.radial_derivatives(r, 2)
    eye = torch.eye(3, dtype=frac.dtype, device=frac.device)
    radial = torch.einsum("bijs,bijsl,bijsm->bijlm", (d2 - d1 / r) / r**2, v, v)
    cart = radial + (d1 / r).sum(3)[..., None, None] * eye  # summed over the images
    blocks = torch.einsum("bkl,bijlm,bpm->bijkp", lattice, cart, lattice)
    blocks = blocks * _pair_weight(mask)[..., None, None].to(blocks.dtype)  # (B, n, n, 3, 3)
    hess = -blocks + torch.diag_embed(blocks.sum(2).permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)
    return hess.permute(0, 1, 3, 2, 4).reshape(b, 3 * n, 3 * n)


class TorusProcess(ForwardProcess):
    """``du = -1/2 beta(t) grad_u U(c u; L) dt + sqrt(beta(t)) dW`` on lifted coordinates.

    ``u (num_nodes, 3)`` with ``frac = c u mod 1``; ``lattice (num_graphs, 3, 3)`` is held fixed (the
    recipe rebuilds the process at every step with the current lattice); ``pair=None`` is the
    zero drift. A gradient drift with unit noise, hence ``symmetric``.
    """

    symmetric = True
    com_free = False

    def __init__(self, lattice: Tensor, scale: float, pair: PairTerm | None, schedule: Schedule):
        self.lattice, self.scale, self.pair, self.schedule = lattice, scale, pair, schedule

    def _dense(self, u: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        dense, mask = to_dense(u, batch, self.lattice.shape[0])
        return self.scale * dense, mask

    def energy(self, u: Tensor, batch: Tensor) -> Tensor:
        """``U`` per crystal ``(num_graphs,)``."""
        if self.pair is None:
            return u.new_zeros(self.lattice.shape[0])
        frac, mask = self._dense(u, batch)
        return periodic_pair_energy(self.pair, frac, self.lattice.to(u), mask)

    def drift_field(self, x: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        if self.pair is None:
            return torch.zeros_like(x)
        frac, mask = self._dense(x, batch)
        grad_f = periodic_pair_gradient(self.pair, frac, self.lattice.to(x), mask)
        return -0.5 * self.scale * from_dense(grad_f, mask)

    def drift_jacobian(self, x: Tensor, batch: Tensor, types: Tensor | None = None):
        frac, mask = self._dense(x, batch)
        b, n = mask.shape
        if self.pair is None:
            return x.new_zeros(b, 3 * n, 3 * n), mask
        hess = periodic_pair_hessian(self.pair, frac, self.lattice.to(x), mask)
        return -0.5 * self.scale**2 * hess, mask


__all__ = [
    "TorusProcess",
    "cell_shifts",
    "periodic_pair_energy",
    "periodic_pair_gradient",
    "periodic_pair_hessian",
    "wrapped_normal_score",
]
