"""Local Gaussian transitions of a forward process, the heart of local-DSM.

Over a step from s to t the drift is linearised at ``y_s``: ``F(y) ~ F_s + J_s (y - y_s)``. On the
process clock the step lasts ``B = int_s^t beta`` (:mod:`pipeline.schedules`), and the linear SDE has
Gaussian transition (Singhal, Goldstein & Ranganath 2024, eq. 9; DESIGN.md):

    m = y_s + B phi1(J B) F_s,               phi1(z) = (e^z - 1) / z
    Sigma = int_0^B e^{J r} G G^T P e^{J^T r} dr.

``y_t = m + L eps`` with ``Sigma = L L^T`` and the regression target
``grad_{y_t} log q(y_t | y_s) = -Sigma^+ (y_t - m) = -L^{-T} eps``. Modes:

* ``expm``: exact moments of the linearised SDE. Gradient drifts (J symmetric, G isotropic) use
  ``eigh(J)``: ``m = y + Q diag(B phi1(lam B)) Q^T F``, ``Sigma = Q diag(G^2 B phi1(2 lam B)) Q^T``, and
  the symmetric square root L. Other drifts use Van Loan's block exponential and a Cholesky factor.
* ``taylor2``: second order in B with Jacobian-vector products only (large systems):
  ``m = y + B F + B^2/2 J F``, ``L = sqrt(B) (I + B/2 J) G``, ``L^{-T} ~ B^{-1/2} (I - B/2 J^T) G^{-1}``.
* ``euler``: J = 0, ``m = y + B F``, ``L = sqrt(B) G``.
* ``split``: the exponential Euler step (Hochbruck & Ostermann 2010, "Exponential integrators",
  eq. 2.9) on ``F(y) = a y + R(y)`` with ``a`` the process's :meth:`linear_rate` (``-k/2`` of a
  harmonic confinement): J = a I exactly, R frozen at ``y_s``, so
  ``m = e^{aB} y + B phi1(aB) R(y_s)``, ``L = sqrt(B phi1(2aB)) G``. Exact for a linear drift at
  any B (EDM's VP process: ``m = e^{-B/2} y``, ``L^2 = 1 - e^{-B}``); the error comes only from
  the nonlinear rest R. Its cost is euler's: one drift evaluation, no Jacobian.

All moments are computed in float64 whatever the caller's dtype (the block exponential loses all
precision in float32 for stiff or short steps; see DESIGN.md, Numerics).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.func import jvp, vjp

from pipeline.batching import from_dense, to_dense
from pipeline.processes import ForwardProcess

Mode = Literal["expm", "taylor2", "euler", "split"]
MODES: tuple[Mode, ...] = ("expm", "taylor2", "euler", "split")


def phi1(z: Tensor) -> Tensor:
    """``(e^z - 1) / z``, continuous at 0 (Taylor branch for |z| < 1e-6)."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z**2 / 6, torch.expm1(safe) / safe)


def _spectral(q: Tensor, values: Tensor, v: Tensor) -> Tensor:
    """``Q diag(values) Q^T v`` per graph: ``q (B, n, n)``, ``values (B, n)``, ``v (B, n)``."""
    return torch.einsum("bij,bj,bkj,bk->bi", q, values, q, v)


def _flat(dense: Tensor) -> Tensor:
    return dense.reshape(dense.shape[0], -1)


def local_step(
    process: ForwardProcess,
    y: Tensor,
    budget: Tensor,
    batch: Tensor,
    eps: Tensor,
    mode: Mode = "expm",
    types: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One draw from the linearised transition and its score.

    Args:
        y: ``(num_nodes, d)`` the state ``y_s``.
        budget: ``(num_graphs,)`` ``B = int_s^t beta`` (> 0 where a target is needed).
        eps: ``(num_nodes, d)`` standard normal noise (CoM projection is applied here).
    Returns:
        ``y_t (num_nodes, d)`` and ``target (num_nodes, d) = grad log q(y_t | y_s)``, in y's dtype.
    """
    dtype = y.dtype
    y, eps, budget = y.double(), eps.double(), budget.double()
    if mode == "euler":
        y_t, target = _euler(process, y, budget, batch, eps, types)
    elif mode == "split":
        y_t, target = _split(process, y, budget, batch, eps, types)
    elif mode == "taylor2":
        y_t, target = _taylor2(process, y, budget, batch, eps, types)
    elif mode == "expm" and process.symmetric:
        y_t, target = _expm_symmetric(process, y, budget, batch, eps, types)
    elif mode == "expm":
        y_t, target = _expm_van_loan(process, y, budget, batch, eps, types)
    else:
        raise ValueError(f"unknown local-DSM mode {mode!r}; choose one of {MODES}")
    return y_t.to(dtype), target.to(dtype)


def _euler(process, y, budget, batch, eps, types):
    g = process.noise_scale(y.shape[1], y)
    b = budget[batch, None]
    y_t = y + b * process.drift_field(y, batch, types) + process.project(b.sqrt() * g * eps, batch)
    target = -process.project(eps, batch) / (b.clamp(min=1e-300).sqrt() * g)
    return y_t, target


def _split(process, y, budget, batch, eps, types):
    g = process.noise_scale(y.shape[1], y)
    a = process.linear_rate()
    b = budget[batch, None]
    rest = process.drift_field(y, batch, types) - a * y
    mean = torch.exp(a * b) * y + b * phi1(a * b) * rest
    std = (b * phi1(2 * a * b)).sqrt() * g
    y_t = mean + process.project(std * eps, batch)
    return y_t, -process.project(eps, batch) / std.clamp(min=1e-300)


def _taylor2(process, y, budget, batch, eps, types):
    g = process.noise_scale(y.shape[1], y)
    b = budget[batch, None]

    def field(z: Tensor) -> Tensor:
        return process.drift_field(z, batch, types)

    f, jf = jvp(field, (y,), (process.drift_field(y, batch, types),))
    eps = process.project(eps, batch)
    _, j_g_eps = jvp(field, (y,), (g * eps,))
    _, pullback = vjp(field, y)
    (jt_eps,) = pullback(eps / g)
    noise = b.sqrt() * (g * eps + 0.5 * b * j_g_eps)
    y_t = y + b * f + 0.5 * b**2 * jf + process.project(noise, batch)
    target = -process.project(eps / g - 0.5 * b * jt_eps, batch) / b.clamp(min=1e-300).sqrt()
    return y_t, target


def _expm_symmetric(process, y, budget, batch, eps, types):
    jac, mask = process.drift_jacobian(y, batch, types)
    lam, q = torch.linalg.eigh(jac)  # (B, nd), (B, nd, nd)
    g2 = float(process.noise_scale(1, y)[0]) ** 2
    b = budget[:, None]
    f = _flat(to_dense(process.drift_field(y, batch, types), batch)[0])
    e = _flat(to_dense(eps, batch)[0])
    var = g2 * b * phi1(2 * lam * b)  # (B, nd) eigenvalues of Sigma, > 0
    shape = (*mask.shape, y.shape[1])
    mean = y + from_dense(_spectral(q, b * phi1(lam * b), f).reshape(shape), mask)
    noise = from_dense(_spectral(q, var.sqrt(), e).reshape(shape), mask)
    score = from_dense(_spectral(q, var.clamp(min=1e-300).rsqrt(), e).reshape(shape), mask)
    return mean + process.project(noise, batch), -process.project(score, batch)


def van_loan_moments(jac: Tensor, noise_cov: Tensor, drift: Tensor, budget: Tensor):
    """Exact moments of ``dy = (F + J (y - y_s)) dtau + G dW`` over ``budget``, by block exponentials.

    Args: ``jac (B, n, n)``, ``noise_cov (B, n, n) = G G^T``, ``drift (B, n) = F_s``, ``budget (B,)``.
    Returns: mean displacement ``(B, n) = B phi1(J B) F`` and covariance ``(B, n, n)``.

    Van Loan (1978): ``expm([[-J, GG^T], [0, J^T]] h) = [[., E12], [0, E22]]`` gives
    ``Sigma(h) = E22^T E12``. That product of huge and tiny factors loses all precision for stiff,
    contracting J, so it is taken only over ``h = B / 2^k`` with ``h |J| <= 1/2``, then doubled k times:
    ``Sigma(2h) = Sigma(h) + e^{Jh} Sigma(h) e^{J^T h}`` and ``shift(2h) = shift(h) + e^{Jh} shift(h)``.
    """
    nb, n, _ = jac.shape
    norm = torch.linalg.matrix_norm(jac * budget[:, None, None], ord=1).max()
    k = max(0, math.ceil(math.log2(max(float(norm), 1e-300) / 0.5)))
    h = (budget / 2**k)[:, None, None]
    block = torch.zeros(nb, 2 * n, 2 * n, dtype=jac.dtype, device=jac.device)
    block[:, :n, :n] = -jac
    block[:, :n, n : 2 * n] = noise_cov
    block[:, n : 2 * n, n : 2 * n] = jac.transpose(1, 2)
    e = torch.linalg.matrix_exp(block * h)
    aug = torch.zeros(nb, n + 1, n + 1, dtype=jac.dtype, device=jac.device)
    aug[:, :n, :n] = jac
    aug[:, :n, n] = drift
    ea = torch.linalg.matrix_exp(aug * h)
    prop, shift = ea[:, :n, :n], ea[:, :n, n]
    cov = e[:, n : 2 * n, n : 2 * n].transpose(1, 2) @ e[:, :n, n : 2 * n]
    for _ in range(k):
        cov = cov + prop @ cov @ prop.transpose(1, 2)
        shift = shift + (prop @ shift[..., None])[..., 0]
        prop = prop @ prop
    return shift, 0.5 * (cov + cov.transpose(1, 2))


def _expm_van_loan(process, y, budget, batch, eps, types):
    if process.com_free:
        raise ValueError("centre-of-mass-free processes must be gradient drifts (symmetric mode)")
    jac, mask = process.drift_jacobian(y, batch, types)
    nb, n, d = (*mask.shape, y.shape[1])
    g2 = process.noise_scale(d, y).repeat(n) ** 2
    f = _flat(to_dense(process.drift_field(y, batch, types), batch)[0])
    shift, cov = van_loan_moments(jac, torch.diag_embed(g2.expand(nb, -1)), f, budget)
    chol = torch.linalg.cholesky(cov)
    e = _flat(to_dense(eps, batch)[0])[..., None]
    noise = (chol @ e)[..., 0]
    score = torch.linalg.solve_triangular(chol.transpose(1, 2), e, upper=True)[..., 0]
    back = lambda v: from_dense(v.reshape(nb, n, d), mask)  # noqa: E731
    return y + back(shift) + back(noise), -back(score)


def vp_step(x: Tensor, budget: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The exact step of the VP process ``dx = -1/2 beta x dt + sqrt(beta) dW`` over a rate budget.

    ``x`` any shape, ``budget = int_s^t beta`` broadcastable to it (>= 0), ``eps`` standard normal
    noise shaped like ``x``. Returns ``x_t = e^{-B/2} x + sqrt(1 - e^{-B}) eps`` and the score of
    the transition ``grad log q(x_t | x) = -eps / sqrt(1 - e^{-B})`` (Song et al. 2021, eq. 29;
    the closed form that local-DSM's linearisation reproduces for this linear drift).
    """
    var = -torch.expm1(-budget)
    return torch.exp(-0.5 * budget) * x + var.sqrt() * eps, -eps / var.clamp(min=1e-300).sqrt()


def simulate_forward(
    process: ForwardProcess,
    x0: Tensor,
    t: Tensor,
    batch: Tensor,
    mode: Mode = "expm",
    max_budget: float = 0.25,
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
    start: Tensor | None = None,
) -> Tensor:
    """Draw ``x_t`` from ``x_0`` (at time ``start``, default 0) by local-linearisation steps.

    Each graph's interval is cut into its own number of steps of equal rate budget, at most
    ``max_budget`` (the linearisation holds only while ``B |lambda(J)|`` is small; a non-convex U has
    growing directions that a long step would blow up). Exponential (``expm``) steps stay stable where
    plain Euler-Maruyama blows up (DESIGN.md, Numerics). ``t (num_graphs,)``; graphs with
    ``t == start`` are returned unchanged. No network is involved.

    Cost: a step moves only the graphs that still have steps to take, so the work is
    ``sum_g ceil(B_g / max_budget)`` graph-steps, not ``num_graphs * max_g ceil(B_g / max_budget)``.
    On EDM's schedule with uniform t the mean of ``B_g = -log alpha^2(t)`` is about 1.2 against a
    maximum of 11.5: about 9x fewer graph-steps, though the time falls only 1.4-1.6x (BENCHMARKS
    ``local-dsm-cost``) because the iterations, still as many as the largest ``B_g`` needs, cost
    mostly per call rather than per graph. The process then sees a sub-batch
    (graphs renumbered in order), so it must not hold per-graph state; processes that do (crystal
    lattices) are only ever simulated with equal ``t`` for every graph, which never sub-batches.
    """
    start = torch.zeros_like(t) if start is None else start

    def advance(x: Tensor, budget: Tensor, sub_batch: Tensor, sub_types: Tensor | None) -> Tensor:
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return local_step(process, x, budget, sub_batch, eps, mode, sub_types)[0]

    return advance_in_steps(
        advance, x0, process.schedule.integral(start, t), batch, max_budget, types
    )


def advance_in_steps(advance, x0, total: Tensor, batch: Tensor, max_budget: float, types=None):
    """Move every graph through its rate budget ``total (num_graphs,)`` in equal steps of at most
    ``max_budget`` (:func:`simulate_forward`'s loop): ``advance(x, budget, batch, types)`` takes one
    step of a sub-batch (graphs renumbered in order). ``x0`` is a node tensor or a NamedTuple of
    node tensors (a state of per-node parts, :mod:`pipeline.node_parts`); graphs with no budget
    are returned unchanged."""
    if not total.numel():
        return x0
    steps = torch.ceil(total / max_budget).clamp(min=0).long()
    per_step = total / steps.clamp(min=1)
    parts = not isinstance(x0, Tensor)
    x = x0
    for k in range(int(steps.max())):
        active = steps > k  # (num_graphs,)
        if bool(active.all()):
            x = advance(x, per_step, batch, types)
            continue
        nodes = active[batch]
        renumber = torch.cumsum(active, 0) - 1
        sub_batch = renumber[batch[nodes]]
        sub_types = None if types is None else types[nodes]
        sub = type(x)(*(v[nodes] for v in x)) if parts else x[nodes]
        moved = advance(sub, per_step[active], sub_batch, sub_types)
        x = (
            type(x)(*(_put(v, nodes, m) for v, m in zip(x, moved, strict=True)))
            if parts
            else _put(x, nodes, moved)
        )
    return x


def _put(x: Tensor, nodes: Tensor, moved: Tensor) -> Tensor:
    x = x.clone()
    x[nodes] = moved
    return x
