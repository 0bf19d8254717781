"""The forward process of a crystal state made of named parts, each with its own batch index.

A :class:`CrystalState` is three parts (MatterGen's corruption layout, Zeni et al. 2025):

* ``u (N, 3)``, per atom: fractional coordinates in *lifted* units, ``frac = (c u) mod 1``; its
  process is :class:`pipeline.torus.TorusProcess` (a wrapped Brownian motion, plus the periodic
  pair drift for ``drift="physical"``), variance exploding: ``sigma_u^2(t) = int_0^t beta``;
* ``lattice (B, 3, 3)``, per crystal (batch index ``arange(num_graphs)``): the lattice state of
  :class:`pipeline.lattice.LatticePrior`, VP: ``alpha^2 = e^{-int_0^t beta}``;
* ``h (N, K)``, per atom: scaled one-hot types, VP; or fixed (structure prediction, CSP).

``u``'s drift reads the lattice: every step reads the whole state at its start (the lattice frozen
over the step, a first-order treatment of the coupling, the order of the ``euler`` mode). The
:class:`CrystalProcess` gives what the generic part losses (:func:`pipeline.losses.parts_errors`)
and the first-order sampler (:func:`pipeline.samplers.reverse_first_order`) need: a forward draw
(:meth:`~CrystalProcess.simulate`), the local transition with its score target
(:meth:`~CrystalProcess.local_step`), the closed form from the data
(:meth:`~CrystalProcess.exact_step`, zero drift only) and the reverse step
(:meth:`~CrystalProcess.reverse_step`). Noise is drawn in float64, part by part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pipeline.batching import counts
from pipeline.energies import PairTerm
from pipeline.lattice import LatticePrior
from pipeline.samplers import posterior_step
from pipeline.schedules import Schedule, vp_signal_variance
from pipeline.torus import TorusProcess, wrapped_normal_score
from pipeline.transitions import Mode, local_step, vp_step


class CrystalState(NamedTuple):
    """A batch of crystal states (or scores, or errors shaped like them)."""

    u: Tensor  # (num_nodes, 3) lifted fractional coordinates, frac = c u mod 1
    lattice: Tensor  # (num_graphs, 3, 3) lattice states (LatticePrior.cell gives the cell)
    h: Tensor  # (num_nodes, K) type features


def noise_scales(schedule: Schedule, t: Tensor, floor: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``sigma_u(t) = sqrt(int_0^t beta)`` and ``sigma_VP(t)``, floored: ``(num_graphs,)`` float64."""
    t = t.double()
    sig_u = schedule.integral(torch.zeros_like(t), t).clamp(min=floor**2).sqrt()
    sig_vp = vp_signal_variance(schedule, t).clamp(min=floor**2).sqrt()
    return sig_u, sig_vp


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, dtype=torch.float64)


# The default sampler of crystals (``SamplerConfig`` with ``nfe`` and ``corrector`` None): 100
# predictor steps, each after a Langevin corrector move of 1.0 sigma_t^2 on the coordinates, so 200
# NFE. On the shipped Perov-5 model (1,000 crystals, learnt law, BENCHMARKS quality-perov-5)
# structural / compositional validity is 95.4 / 97.1 % at 100 NFE without a corrector (96.8 % at
# 500 NFE on a longer-trained one), 97.2 / 95.4 with DiffCSP's 0.4, 98.6 / 97.3 with 1.0, 97.7 /
# 96.3 with 2.0, and at 200 NFE 99.2 / 98.0 with 1.0 and 99.5 / 96.8 with 2.0: the corrector
# moves an atom off a site two of them share, which more predictor steps do not.
CRYSTAL_CORRECTOR = 1.0
CRYSTAL_NFE = 200


class CrystalProcess:
    """The joint forward process of :class:`CrystalState` (module docstring).

    ``scale`` is ``c`` (``frac = c u``), ``pair`` the periodic pair term of ``u``'s drift (None:
    zero drift), ``lattice`` the cell map of the lattice state, ``types_given`` keeps ``h`` fixed
    (target 0) and ``type_scale`` bounds its denoised value when it is not.
    """

    default_corrector = CRYSTAL_CORRECTOR  # pipeline.samplers.SamplerConfig.corrector = None
    default_nfe = CRYSTAL_NFE  # pipeline.samplers.SamplerConfig.nfe = None

    def __init__(
        self,
        schedule: Schedule,
        scale: float,
        pair: PairTerm | None,
        lattice: LatticePrior,
        types_given: bool,
        type_scale: float,
    ):
        self.schedule, self.scale, self.pair, self.lattice = schedule, scale, pair, lattice
        self.types_given, self.type_scale = types_given, type_scale

    def cell(self, lattice: Tensor, batch: Tensor) -> Tensor:
        """Cells ``L (B, 3, 3)`` of lattice states ``lattice (B, 3, 3)``; ``batch (N,)``."""
        return self.lattice.cell(lattice, counts(batch, lattice.shape[0]))

    def _lattice_noise(self, lattice: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal noise shaped like ``lattice (B, 3, 3)``, symmetric on a symmetric
        lattice (:meth:`pipeline.lattice.LatticePrior.symmetrized`)."""
        return self.lattice.symmetrized(_noise(lattice, generator))

    def torus(self, lattice: Tensor, batch: Tensor, schedule: Schedule | None = None):
        """``u``'s process with the cell of the lattice *state* ``lattice (B, 3, 3)`` held fixed."""
        cell = self.cell(lattice, batch)
        return TorusProcess(cell, self.scale, self.pair, schedule or self.schedule)

    def _types_step(self, h: Tensor, budget: Tensor, generator) -> tuple[Tensor, Tensor]:
        """The VP step of the types and its target; given types (CSP) stay, target 0."""
        if self.types_given:
            return h, torch.zeros_like(h)
        return vp_step(h, budget, _noise(h, generator))

    def simulate(
        self,
        x0: CrystalState,
        batch: Tensor,
        t: Tensor,
        generator: torch.Generator | None,
        mode: Mode = "euler",
        max_budget: float = 0.25,
    ) -> CrystalState:
        """A draw of the forward process at ``t (num_graphs,)`` from ``x0`` (no network).

        ``h`` and (zero drift) ``u`` and ``lattice`` from their closed forms; with a pair drift
        ``(u, L)`` jointly in equal steps of rate budget <= ``max_budget``: a ``mode`` local step of
        ``u`` under the lattice at the step's start, then the exact VP step of ``L``.
        """
        total = self.schedule.integral(torch.zeros_like(t), t)
        h = self._types_step(x0.h, total[batch, None], generator)[0]
        if self.pair is None:
            u = x0.u + total.sqrt()[batch, None] * _noise(x0.u, generator)
            lattice, _ = vp_step(
                x0.lattice, total[:, None, None], self._lattice_noise(x0.lattice, generator)
            )
            return CrystalState(u, lattice, h)
        n_steps = max(1, math.ceil(float(total.max()) / max_budget)) if total.numel() else 0
        b = total / max(n_steps, 1)
        u, lattice = x0.u, x0.lattice
        for _ in range(n_steps):
            eps = _noise(u, generator)
            u, _ = local_step(self.torus(lattice, batch), u, b, batch, eps, mode)
            lattice, _ = vp_step(lattice, b[:, None, None], self._lattice_noise(lattice, generator))
        return CrystalState(u, lattice, h)

    def local_step(
        self,
        x_s: CrystalState,
        budget: Tensor,
        batch: Tensor,
        generator: torch.Generator | None,
        mode: Mode = "expm",
    ) -> tuple[CrystalState, CrystalState]:
        """Local-DSM's step over ``budget = int_s^t beta (num_graphs,)``: ``x_t`` and the target.

        ``u``: the linearised transition (:func:`pipeline.transitions.local_step`; the zero drift's
        step is exact in any mode, so it takes ``euler`` and skips the eigendecomposition), whose
        lifted Gaussian score is the wrapped one's in conditional mean (:mod:`pipeline.crystal_recipe`);
        lattice and types: their exact VP steps. Noise in part order ``u, lattice, h``.
        """
        mode = mode if self.pair is not None else "euler"
        eps = _noise(x_s.u, generator)
        u_t, target_u = local_step(self.torus(x_s.lattice, batch), x_s.u, budget, batch, eps, mode)
        lat_t, target_l = vp_step(
            x_s.lattice, budget[:, None, None], self._lattice_noise(x_s.lattice, generator)
        )
        h_t, target_h = self._types_step(x_s.h, budget[batch, None], generator)
        return CrystalState(u_t, lat_t, h_t), CrystalState(target_u, target_l, target_h)

    def exact_step(
        self, x0: CrystalState, batch: Tensor, t: Tensor, generator: torch.Generator | None
    ) -> tuple[CrystalState, CrystalState]:
        """Exact DSM's draw from the data (zero drift only): ``x_t`` and ``grad log q(x_t | x_0)``.

        ``u``: DiffCSP's target, the wrapped-normal score of ``frac_t`` given ``frac_0`` (Jiao et
        al. 2023, eq. 7; :func:`pipeline.torus.wrapped_normal_score`) times ``c``; lattice and
        types: closed-form VP. ``ValueError`` with a pair drift (no closed form).
        """
        if self.pair is not None:
            raise ValueError("exact-dsm needs the closed-form transition: use drift='linear'")
        total = self.schedule.integral(torch.zeros_like(t), t)
        sig_u = total.sqrt()[batch, None]
        eps = _noise(x0.u, generator)
        u_t = x0.u + sig_u * eps
        delta = self.scale * sig_u * eps
        target_u = self.scale * wrapped_normal_score(delta, self.scale * sig_u)
        lat_t, target_l = vp_step(
            x0.lattice, total[:, None, None], self._lattice_noise(x0.lattice, generator)
        )
        h_t, target_h = self._types_step(x0.h, total[batch, None], generator)
        return CrystalState(u_t, lat_t, h_t), CrystalState(target_u, target_l, target_h)

    def rademacher(
        self, x: CrystalState, batch: Tensor, generator: torch.Generator | None
    ) -> CrystalState:
        """Hutchinson's probe for ISM: signs +-1 shaped like ``x``, drawn part by part."""
        return CrystalState(*(torch.randint(0, 2, v.shape, generator=generator) * 2 - 1 for v in x))

    def wrap(self, state: CrystalState) -> CrystalState:
        """``u`` wrapped into ``[0, 1/c)^3`` (everything is periodic in it)."""
        return state._replace(u=torch.remainder(state.u, 1.0 / self.scale))

    def reverse_step(
        self,
        score: Callable[[CrystalState, Tensor, Tensor], CrystalState],
        x: CrystalState,
        t: Tensor,
        s: Tensor,
        batch: Tensor,
        generator: torch.Generator | None,
        eta: float,
        noise_scale: float = 1.0,
    ) -> CrystalState:
        """One reverse step from ``t`` to ``s < t`` (scalar tensors), stable at any step size.

        Every part as DDIM on its own marginal (:func:`pipeline.samplers.posterior_step`; ``eta =
        1`` is DDPM's ancestral step, as DiffCSP samples lattice and types, ``eta = 0`` the
        probability-flow ODE's exponential integrator), free of the sign flip of Euler-Maruyama,
        whose factor ``1 - beta dt (1/2 + ...)`` turns negative once ``beta dt > 2`` (under EDM's
        schedule ``beta(0.99) = 194``: 100 uniform Euler steps blew lattices up to NaN or crushed
        them flat). Noise is drawn for the lattice, then the types, then ``u``, each scaled by
        ``noise_scale`` (:class:`pipeline.samplers.SamplerConfig`).

        Lattice and types are VP (``alpha_t^2 = e^{-int_0^t beta}``, ``sigma^2 = 1 - alpha^2``,
        ``v = 1 - e^{-B}``, ``B = int_s^t beta``). ``x0_hat`` is clipped to a box that holds the
        data's convex hull (types: ``[0, type_scale]``; lattice: :meth:`LatticePrior.clip`): the
        exact posterior mean lies in that hull, so the projection never moves it and only bounds
        an untrained network, whose lattice output grows like ``|L|^3`` through the Gram
        features and fed back on itself to overflow. Coordinates ``u`` are variance-exploding
        (``alpha = 1``, ``sigma_u^2 = int_0^t beta``, ``v = B``; the torus needs no box); the pair
        drift ``F``, read at the state of time t (lattice included), adds ``-B F(u_t)`` (Euler).
        Given types (CSP) stay as they are; ``u`` is re-wrapped.
        """
        nb = x.lattice.shape[0]
        tt, ss = t.expand(nb).double(), s.expand(nb).double()
        zero = torch.zeros_like(tt)
        step = self.schedule.integral(ss, tt)
        total_t, total_s = self.schedule.integral(zero, tt), self.schedule.integral(zero, ss)
        pred = score(x, tt, batch)
        vp = (
            torch.exp(-0.5 * total_t),
            torch.exp(-0.5 * total_s),
            -torch.expm1(-total_t),
            -torch.expm1(-total_s),
            -torch.expm1(-step),
        )
        rows = torch.arange(nb)
        lattice = posterior_step(
            x.lattice,
            pred.lattice,
            rows,
            vp,
            eta,
            generator,
            self.lattice.clip,
            noise_scale,
            self.lattice.symmetrized,
        )
        h = x.h
        if not self.types_given:
            clip_h = lambda y: y.clamp(0.0, self.type_scale)  # noqa: E731
            h = posterior_step(x.h, pred.h, batch, vp, eta, generator, clip_h, noise_scale)
        one = torch.ones_like(tt)
        ve = (one, one, total_t, total_s, step)
        u = posterior_step(x.u, pred.u, batch, ve, eta, generator, noise_scale=noise_scale)
        u = u - step[batch, None] * self.torus(x.lattice, batch).drift_field(x.u, batch)
        return self.wrap(CrystalState(u, lattice, h))

    def langevin_correct(
        self,
        score: Callable[[CrystalState, Tensor, Tensor], CrystalState],
        x: CrystalState,
        t: Tensor,
        batch: Tensor,
        generator: torch.Generator | None,
        size: float,
    ) -> CrystalState:
        """One Langevin corrector move of the coordinates at fixed ``t`` (a scalar tensor).

        ``u <- u + e s_u + sqrt(2 e) z`` with ``e = size sigma_u^2(t)`` (``sigma_u^2 = int_0^t
        beta``), ``s_u`` the model's score: unadjusted Langevin dynamics that leave the marginal at
        ``t`` invariant as ``e -> 0``. Lattice and types stay, as in DiffCSP's corrector (Jiao et
        al. 2023, Algorithm 2, whose ``step_lr (sigma_t / sigma_1)^2`` in fractional units is this
        step with ``size = step_lr / sigma_1^2``: the step is scale-free). ``u`` is re-wrapped;
        ``z`` is drawn in float64.
        """
        tt = t.expand(x.lattice.shape[0]).double()
        e = (size * self.schedule.integral(torch.zeros_like(tt), tt))[batch, None]
        pred = score(x, tt, batch)
        u = x.u + e * pred.u.double() + (2 * e).sqrt() * _noise(x.u, generator)
        return self.wrap(x._replace(u=u))


__all__ = ["CRYSTAL_CORRECTOR", "CRYSTAL_NFE", "CrystalProcess", "CrystalState", "noise_scales"]
