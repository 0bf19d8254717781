"""Forward processes ``dx = beta(t) F(x) dt + sqrt(beta(t)) G dW`` on node states with a batch index.

A process is an autonomous SDE (drift field ``F``, constant diagonal noise ``G``) run on the clock of a
rate schedule beta(t) (:mod:`pipeline.schedules`). This covers

* the physical family ``F = -1/2 grad U`` with ``G = 1`` (:class:`GradientProcess`), whose stationary law
  is ``exp(-U)``; with ``U = k/2 |x|^2`` it is exactly EDM's variance-preserving SDE, with a closed-form
  transition;
* non-gradient drifts such as active Ornstein-Uhlenbeck particles (:class:`ActiveOUProcess`).

States are ``x: (num_nodes, d)`` with ``batch: (num_nodes,)``; times are per graph, ``(num_graphs,)``.
Centre-of-mass-free processes (molecule positions) project noise with P = I - 11^T/N per graph. Drift
Jacobians come from autograd per graph (vmapped over a padded view), never from hand derivations.
A state of several per-node parts, each under its own process here (molecules: positions and
types), is :class:`pipeline.node_parts.NodeParts`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import grad, hessian, jacrev, vmap

from pipeline.batching import from_dense, remove_mean, to_dense
from pipeline.energies import Energy, HarmonicConfinement, PairTerm, pair_hessian
from pipeline.schedules import PolynomialSchedule, Schedule


class NoClosedFormTransition(RuntimeError):
    """Raised when a caller needs ``q(x_t | x_0)`` in closed form and the process has none."""


@dataclass(frozen=True)
class Transition:
    """Gaussian transition ``x_t = mean + std * P eps``: ``mean (num_nodes, d)``, ``std (num_graphs,)``."""

    mean: Tensor
    std: Tensor


class ForwardProcess(ABC):
    """Interface shared by every process (see module docstring).

    Subclasses define ``drift_field``, ``drift_jacobian`` and ``noise_scale``; ``symmetric`` says the
    Jacobian of F is symmetric and the noise isotropic (gradient drifts), which enables the
    eigendecomposition path of the local transition.
    """

    schedule: Schedule
    com_free: bool = False
    symmetric: bool = False

    @abstractmethod
    def drift_field(self, x: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        """``F(x)``: ``(num_nodes, d)``."""

    @abstractmethod
    def drift_jacobian(
        self, x: Tensor, batch: Tensor, types: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-graph Jacobian of F on the padded view.

        Returns ``jac (num_graphs, max_nodes * d, max_nodes * d)`` (rows/columns of padding are zero) and
        ``mask (num_graphs, max_nodes)``.
        """

    def linear_rate(self) -> float:
        """``a`` in ``F(x) = a x + R(x)``: the part of the drift a ``split`` step integrates
        exactly (:func:`pipeline.transitions.local_step`); 0 (all of F frozen) by default."""
        return 0.0

    def noise_scale(self, d: int, like: Tensor) -> Tensor:
        """Diagonal of ``G``: ``(d,)``."""
        return torch.ones(d, dtype=like.dtype, device=like.device)

    def drift(self, x: Tensor, t: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        """``f(x, t) = beta(t) F(x)``: ``(num_nodes, d)``; ``t (num_graphs,)``."""
        return self.schedule.beta(t)[batch, None] * self.drift_field(x, batch, types)

    def diffusion(self, t: Tensor) -> Tensor:
        """Scalar part of ``g(t) = sqrt(beta(t)) G``: ``(num_graphs,)``."""
        return torch.sqrt(self.schedule.beta(t))

    def project(self, x: Tensor, batch: Tensor) -> Tensor:
        """Apply P (zero centre of mass per graph) if the process is CoM-free."""
        return remove_mean(x, batch) if self.com_free else x

    def transition(self, x0: Tensor, t: Tensor, batch: Tensor) -> Transition:
        """Closed-form ``q(x_t | x_0)``; processes without one raise :class:`NoClosedFormTransition`."""
        raise NoClosedFormTransition(f"{type(self).__name__} has no closed-form transition")


@dataclass
class GradientProcess(ForwardProcess):
    """The physical family ``f = -1/2 beta(t) grad U``, ``g = sqrt(beta(t))``: stationary law exp(-U).

    ``energy`` is an :class:`~pipeline.energies.Energy`; ``types`` (num_nodes,) may be passed wherever
    a term has per-element-pair parameters.
    """

    energy: Energy
    schedule: Schedule = field(default_factory=PolynomialSchedule)
    com_free: bool = False
    symmetric: bool = True

    def _dense(self, x: Tensor, batch: Tensor, types: Tensor | None):
        dense, mask = to_dense(x, batch)
        dense_types = None if types is None else to_dense(types[:, None], batch)[0][..., 0]
        return dense, mask, dense_types

    def potential(self, x: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        """``U`` per graph: ``(num_graphs,)``."""
        dense, mask, dt = self._dense(x, batch, types)
        return vmap(self.energy, in_dims=(0, 0, None if dt is None else 0))(dense, mask, dt)

    def drift_field(self, x: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        dense, mask, dt = self._dense(x, batch, types)
        g = vmap(grad(self.energy), in_dims=(0, 0, None if dt is None else 0))
        return -0.5 * from_dense(g(dense, mask, dt), mask)

    def linear_rate(self) -> float:
        """``-k/2`` for the harmonic confinements of U (on the zero-CoM subspace of a CoM-free
        process a centred confinement's drift is exactly ``-k/2 x``)."""
        return -0.5 * self.energy.confinement_constant()

    def drift_jacobian(self, x: Tensor, batch: Tensor, types: Tensor | None = None):
        """``-1/2 Hess U``: pair terms from per-pair blocks, other terms by whole-graph Hessians."""
        dense, mask, dt = self._dense(x, batch, types)
        b, n, d = dense.shape
        hess = dense.new_zeros(b, n * d, n * d)
        for term in self.energy.terms:
            if isinstance(term, PairTerm):
                hess = hess + pair_hessian(term, dense, mask, dt)
            else:
                h = vmap(hessian(term), in_dims=(0, 0, None if dt is None else 0))
                hess = hess + h(dense, mask, dt).reshape(b, n * d, n * d)
        return -0.5 * hess, mask

    def transition(self, x0: Tensor, t: Tensor, batch: Tensor) -> Transition:
        """For ``U = k/2 |x|^2``: mean ``exp(-k B/2) x0``, variance ``(1 - exp(-k B))/k`` (B = int_0^t beta)."""
        k = self.energy.harmonic_constant()
        if k is None:
            raise NoClosedFormTransition("the transition is closed-form only for a harmonic energy")
        b = self.schedule.integral(torch.zeros_like(t), t)
        mean = torch.exp(-0.5 * k * b)[batch, None] * x0
        return Transition(mean=mean, std=torch.sqrt(-torch.expm1(-k * b) / k))


def vp_process(schedule: Schedule | None = None, com_free: bool = False) -> GradientProcess:
    """EDM's variance-preserving SDE as the linear member of the physical family (U = |x|^2 / 2)."""
    return GradientProcess(
        energy=Energy([HarmonicConfinement(1.0, centred=com_free)]),
        schedule=schedule or PolynomialSchedule(),
        com_free=com_free,
    )


@dataclass
class ActiveOUProcess(ForwardProcess):
    """Active Ornstein-Uhlenbeck particles in a potential (the local-DSM paper's motivating example).

    Node state ``x = [r, eta]`` with position ``r`` and self-propulsion ``eta`` in ``dim`` dimensions
    (``d = 2 dim``): ``dr = (-grad_r U(r) + eta) dtau + sqrt(2 T) dW``,
    ``d eta = -eta / tau_p dtau + sqrt(2 / tau_p) * v dW'``. The drift is not a gradient, so the
    Jacobian is not symmetric and the noise not isotropic (Van Loan path).
    """

    energy: Energy
    dim: int = 2
    temperature: float = 0.1
    persistence: float = 1.0
    speed: float = 1.0
    schedule: Schedule = field(default_factory=PolynomialSchedule)

    def _field_one(self, state: Tensor, mask: Tensor) -> Tensor:
        r, eta = state[:, : self.dim], state[:, self.dim :]
        force = -grad(lambda p: self.energy(p, mask))(r)
        m = mask.to(state.dtype)[:, None]
        return torch.cat([force + eta, -eta / self.persistence], dim=-1) * m

    def drift_field(self, x: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        dense, mask = to_dense(x, batch)
        return from_dense(vmap(self._field_one)(dense, mask), mask)

    def drift_jacobian(self, x: Tensor, batch: Tensor, types: Tensor | None = None):
        dense, mask = to_dense(x, batch)
        b, n, d = dense.shape
        jac = vmap(jacrev(self._field_one))(dense, mask)
        return jac.reshape(b, n * d, n * d), mask

    def noise_scale(self, d: int, like: Tensor) -> Tensor:
        pos = torch.full((self.dim,), (2 * self.temperature) ** 0.5)
        act = torch.full((self.dim,), self.speed * (2 / self.persistence) ** 0.5)
        return torch.cat([pos, act]).to(like)


__all__ = [
    "ActiveOUProcess",
    "ForwardProcess",
    "GradientProcess",
    "NoClosedFormTransition",
    "Transition",
    "vp_process",
]
