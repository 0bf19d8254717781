"""Potential energies U whose gradients define the physical forward drift f = -1/2 beta(t) grad U.

Every term is a pure function of ONE padded graph: ``pos (max_nodes, d)``, ``mask (max_nodes,)`` and
optional integer ``types (max_nodes,)``, returning a scalar. Graph batches are handled by
``torch.func.vmap`` in :mod:`pipeline.processes`, which also takes gradients and Hessians by autograd
(no hand derivations). Terms avoid data-dependent shapes (masks multiply, never index) so that vmap
and Hessians work.

Pair terms are smooth with bounded forces (``phi'`` bounded on [0, inf)), so the drift stays finite
when atoms overlap. A pair parameter is a float or a ``(num_types, num_types)`` symmetric tensor
indexed by the node types (per-element-pair parameters).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp

Param = float | Tensor

# Added under the square root of |x_i - x_j|^2 so that r, and its derivatives, stay finite at r = 0.
_R2_EPS = 1e-12


def safe_length(v: Tensor) -> Tensor:
    """``sqrt(|v|^2 + 1e-12)`` over the last axis: a length with finite derivatives at ``v = 0``.

    ``v (..., d)`` -> ``(...)``, the units of ``v``. The sum is an einsum (4x faster than a sum
    over 3 on the ``(B, n, n, S, 3)`` image vectors of :mod:`pipeline.torus`).
    """
    return torch.sqrt(torch.einsum("...k,...k->...", v, v) + _R2_EPS)


def autodiff_radial(term: PairTerm, r: Tensor, params: tuple, order: int) -> tuple[Tensor, ...]:
    """``(phi'(r),)`` (order 1) or ``(phi'(r), phi''(r))`` (order 2) of any pair term, elementwise.

    Forward-mode autograd: phi is elementwise, so a JVP with ones is its derivative (composable
    with torch.func). ``r`` any shape, ``params`` from ``term.params``.
    """
    ones = torch.ones_like(r)

    def dphi(rr: Tensor) -> Tensor:
        return jvp(lambda x: term.phi(x, *params), (rr,), (ones,))[1]

    return (dphi(r),) if order == 1 else jvp(dphi, (r,), (ones,))


def _pair_param(value: Param, types: Tensor | None, like: Tensor) -> Tensor:
    """A pair parameter for node types ``(..., n)``: ``(..., n, n)``, or a scalar tensor if uniform."""
    if isinstance(value, Tensor) and value.dim() == 2:
        if types is None:
            raise ValueError("a per-element-pair parameter needs node types")
        return value.to(like)[types[..., :, None], types[..., None, :]]
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _pair_distances(pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Distances ``(n, n)`` and the pair weight ``(n, n)``: 1 for i < j both real, else 0."""
    diff = pos[:, None, :] - pos[None, :, :]
    r = torch.sqrt((diff**2).sum(-1) + _R2_EPS)
    real = mask[:, None] & mask[None, :]
    upper = torch.ones_like(r, dtype=torch.bool).triu(diagonal=1)
    return r, (real & upper).to(pos.dtype)


@dataclass(frozen=True)
class HarmonicConfinement:
    """``k/2 sum_i |x_i - c|^2`` with c the centre of mass (``centred``) or the origin.

    Centred, it is translation invariant and equals ``k/2 |x|^2`` on the zero-CoM subspace, whose drift
    alone is EDM's VP SDE when k = 1; about the origin it is the plain VP SDE of independent nodes.
    """

    k: float = 1.0
    centred: bool = True

    def __call__(self, pos: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        m = mask.to(pos.dtype)[:, None]
        centre = (pos * m).sum(0) / m.sum().clamp(min=1) if self.centred else 0.0
        return 0.5 * self.k * (((pos - centre) ** 2) * m).sum()


class PairTerm(ABC):
    """A radial pair energy ``sum_{i<j} phi(r_ij; params_ij)``.

    Subclasses give ``params(types, like)`` (each a scalar tensor or ``(..., n, n)`` per pair) and
    ``phi(r, *params)``, elementwise. Knowing the pair structure lets :func:`pair_hessian` build the
    Hessian from per-pair 3 x 3 blocks instead of differentiating the whole graph twice.
    """

    @abstractmethod
    def params(self, types: Tensor | None, like: Tensor) -> tuple[Tensor, ...]:
        """Pair parameters, each a scalar tensor or ``(..., n, n)``."""

    @staticmethod
    @abstractmethod
    def phi(r: Tensor, *params: Tensor) -> Tensor:
        """Pair energy, elementwise in r."""

    def __call__(self, pos: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        r, w = _pair_distances(pos, mask)
        return (w * self.phi(r, *self.params(types, r))).sum()

    def cutoff(self) -> float | None:
        """The distance (units of r) beyond which ``phi = 0`` for every pair, or None (infinite
        range). The periodic sum (:func:`pipeline.torus.cell_shifts`) skips images beyond it."""
        return None

    def radial_derivatives(self, r: Tensor, order: int) -> tuple[Tensor, ...]:
        """``(phi'(r),)`` (order 1) or ``(phi'(r), phi''(r))`` (order 2) elementwise, uniform
        parameters (no types). Forward-mode autograd (:func:`autodiff_radial`); terms with a closed
        form override it (it dominates the cost of the periodic drift)."""
        return autodiff_radial(self, r, self.params(None, r), order)


@dataclass(frozen=True)
class SoftSphere(PairTerm):
    """``eps (1 - r^2/sigma^2)^2`` for ``r < sigma``: soft-sphere repulsion, smooth at r = 0.

    Written in r^2 so that phi'(0) = 0: a radial term with a slope at r = 0 is a cone whose Hessian
    grows like 1/r as atoms overlap, which the linearised transition would turn into exploding
    directions. The force is at most ``8 eps / (3 sqrt(3) sigma)``.
    """

    epsilon: Param = 1.0
    sigma: Param = 1.0

    def params(self, types, like):
        return _pair_param(self.epsilon, types, like), _pair_param(self.sigma, types, like)

    @staticmethod
    def phi(r, eps, sig):
        return eps * torch.clamp(1 - (r / sig) ** 2, min=0.0) ** 2

    def cutoff(self) -> float:
        """``sigma`` (its largest entry when per element pair): ``phi(r >= sigma) = 0``."""
        return float(torch.as_tensor(self.sigma).max())

    def radial_derivatives(self, r: Tensor, order: int) -> tuple[Tensor, ...]:
        """Closed form, with ``g = max(1 - r^2/sigma^2, 0)``: ``phi' = -4 eps r g / sigma^2``,
        ``phi'' = -4 eps g / sigma^2 + 8 eps r^2 / sigma^4 [g > 0]`` (forward-mode autograd over
        the ``(B, n, n, S)`` images costs ~20x more)."""
        eps, sig = self.params(None, r)
        gap = torch.clamp(1 - (r / sig) ** 2, min=0.0)  # phi = eps gap^2
        d1 = -4 * eps * r / sig**2 * gap
        if order == 1:
            return (d1,)
        inside = (gap > 0).to(r.dtype)
        return d1, -4 * eps / sig**2 * gap + 8 * eps * r**2 / sig**4 * inside


@dataclass(frozen=True)
class Morse(PairTerm):
    """``D_e (1 - exp(-a (r_s - r0)))^2 - D_e`` with ``r_s = sqrt(r^2 + delta^2)``: a bond well of depth
    D_e near r0, zero at infinity. The softening delta makes it smooth at r = 0 (see SoftSphere).
    """

    depth: Param = 1.0
    width: Param = 1.0
    r0: Param = 1.0
    softening: float = 0.3

    def params(self, types, like):
        delta = torch.as_tensor(self.softening, dtype=like.dtype, device=like.device)
        return (*(_pair_param(v, types, like) for v in (self.depth, self.width, self.r0)), delta)

    @staticmethod
    def phi(r, de, a, r0, delta):
        rs = torch.sqrt(r**2 + delta**2)
        return de * ((1 - torch.exp(-a * (rs - r0))) ** 2 - 1)


@dataclass(frozen=True)
class CappedLennardJones(PairTerm):
    """Soft-core Lennard-Jones (Beutler et al. 1994): ``4 eps [(sigma/r_s)^12 - (sigma/r_s)^6]`` with
    ``r_s^6 = r^6 + alpha sigma^6``. Smooth, finite at r = 0, force bounded; alpha -> 0 gives plain LJ.
    """

    epsilon: Param = 1.0
    sigma: Param = 1.0
    alpha: float = 0.5

    def params(self, types, like):
        alpha = torch.as_tensor(self.alpha, dtype=like.dtype, device=like.device)
        return _pair_param(self.epsilon, types, like), _pair_param(self.sigma, types, like), alpha

    @staticmethod
    def phi(r, eps, sig, alpha):
        x6 = sig**6 / (r**6 + alpha * sig**6)
        return 4 * eps * (x6**2 - x6)


def pair_hessian(term: PairTerm, pos: Tensor, mask: Tensor, types: Tensor | None) -> Tensor:
    """Hessian of a pair term for a padded batch: ``pos (B, n, d)`` -> ``(B, n d, n d)``.

    A radial ``phi(|u|)`` has Hessian ``A = phi'' u u^T / r^2 + (phi' / r)(I - u u^T / r^2)`` in the
    pair vector ``u = x_i - x_j`` (the chain rule, for any phi); ``phi'`` and ``phi''`` come from
    forward-mode autograd, elementwise over all pairs at once (composable with torch.func). Each
    pair adds ``+A`` to the blocks (i, i) and (j, j) and ``-A`` to (i, j) and (j, i): O(n^2 d^2)
    work, against O(n^3 d) for a whole-graph Hessian.
    """
    b, n, d = pos.shape
    u = pos[:, :, None, :] - pos[:, None, :, :]  # (B, n, n, d)
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    w = (mask[:, :, None] & mask[:, None, :] & ~eye).to(pos.dtype)  # (B, n, n), both orders
    r = torch.sqrt((u**2).sum(-1) + _R2_EPS)
    d1, d2 = autodiff_radial(term, r, term.params(types, r), 2)
    unit = u / r[..., None]
    outer = unit[..., :, None] * unit[..., None, :]
    ident = torch.eye(d, dtype=pos.dtype, device=pos.device)
    blocks = (d2[..., None, None] * outer + (d1 / r)[..., None, None] * (ident - outer)) * w[
        ..., None, None
    ]
    hess = -blocks + torch.diag_embed(blocks.sum(2).permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)
    return hess.permute(0, 1, 3, 2, 4).reshape(b, n * d, n * d)


@dataclass(frozen=True)
class DoubleWell:
    """``a (x_0^2 - 1)^2 + 1/2 sum_{k>0} x_k^2`` on every node: wells at x_0 = +-1, barrier height a."""

    barrier: float = 1.0

    def __call__(self, pos: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        m = mask.to(pos.dtype)
        u = self.barrier * (pos[:, 0] ** 2 - 1) ** 2 + 0.5 * (pos[:, 1:] ** 2).sum(-1)
        return (m * u).sum()


@dataclass(frozen=True)
class GaussianMixturePotential:
    """``-log sum_k w_k N(x; mu_k, s_k^2 I)`` on every node: exp(-U) is exactly a Gaussian mixture.

    ``means (K, d)``, ``stds (K,)``, ``weights (K,)`` (normalised here).
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    def __call__(self, pos: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        mu, s = self.means.to(pos), self.stds.to(pos)
        logw = torch.log(self.weights.to(pos) / self.weights.sum())
        d = pos.shape[-1]
        sq = ((pos[:, None, :] - mu[None]) ** 2).sum(-1)  # (n, K)
        logp = logw - sq / (2 * s**2) - d * torch.log(s) - 0.5 * d * math.log(2 * math.pi)
        return -(mask.to(pos.dtype) * torch.logsumexp(logp, dim=-1)).sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of exp(-U) for one node: ``(n, d)``."""
        w = self.weights / self.weights.sum()
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[comp] + self.stds[comp, None] * noise


Term = HarmonicConfinement | SoftSphere | Morse | CappedLennardJones | DoubleWell
Term = Term | GaussianMixturePotential


@dataclass(frozen=True)
class Energy:
    """A sum of terms: ``U = sum_k term_k``."""

    terms: Sequence[Term]

    def __call__(self, pos: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        return sum(term(pos, mask, types) for term in self.terms)

    def confinement_constant(self) -> float:
        """The summed k of the harmonic confinements in U (0 without one): the linear part
        ``-k/2 x`` of the drift ``-1/2 grad U`` that a split step integrates exactly."""
        return float(sum(t.k for t in self.terms if isinstance(t, HarmonicConfinement)))

    def harmonic_constant(self) -> float | None:
        """k when U is a pure harmonic confinement (a linear drift with a closed-form transition)."""
        if len(self.terms) == 1 and isinstance(self.terms[0], HarmonicConfinement):
            return self.terms[0].k
        return None
