"""The forward process of a state made of per-node named parts, each part with its own process.

A state is a NamedTuple of ``(num_nodes, d_part)`` tensors that share the node batch index
(molecules: :class:`pipeline.molecule_recipe.MoleculeState`, ``pos`` + ``types``).
:class:`NodeParts` holds a NamedTuple of the same type whose fields are the parts' own
:class:`~pipeline.processes.ForwardProcess` es, on one clock (one schedule); every step applies each
part's process to its part (:func:`pipeline.transitions.local_step`, the closed-form transition,
the CoM projection of a CoM-free part). Its noise is drawn once for the whole state,
``(num_nodes, sum_part d_part)`` with the parts' columns in order, and split into the parts: the
random stream of the concatenated layout ``[pos, types]``, so that fixed seeds give the samples
and losses they gave before the state was split. A bare tensor with one process is the one-part
state :class:`Nodes` (:func:`as_parts`), which is how the generic losses and samplers serve
single-tensor processes.

:class:`NodeParts` implements :class:`pipeline.losses.PartsProcess` (``simulate``,
``local_step``, ``exact_step``, ``rademacher``) and what the reverse samplers of
:mod:`pipeline.samplers` read (``parts``, ``project``, ``noise``, ``transition``, ``score``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pipeline.processes import ForwardProcess
from pipeline.transitions import Mode, advance_in_steps, local_step


class Nodes(NamedTuple):
    """A state of one per-node part (a single-tensor state)."""

    x: Tensor


def map_parts(fn: Callable[..., Tensor], *states):
    """``type(states[0])(fn(a_part, b_part, ...) for each part)``."""
    return type(states[0])(*(fn(*parts) for parts in zip(*states, strict=True)))


class NodeParts:
    """Independent per-node parts on one clock (module docstring).

    ``parts`` a NamedTuple of :class:`ForwardProcess` (its type is the state's type); ``types
    (num_nodes,)`` per-node element labels passed to every drift (per-element-pair parameters).
    ``ValueError`` unless every part runs on the same schedule.
    """

    def __init__(self, parts: Any, types: Tensor | None = None):
        if not parts or len({repr(p.schedule) for p in parts}) != 1:
            raise ValueError("the parts of a state must share one schedule")
        self.parts, self.types, self.schedule = parts, types, parts[0].schedule

    def split(self, joint: Tensor, like):
        """The columns of ``joint (rows, sum d_part)`` as a state shaped like ``like``."""
        return type(like)(*torch.split(joint, [v.shape[1] for v in like], dim=1))

    def join(self, x) -> Tensor:
        """The parts' columns side by side: ``(num_nodes, sum d_part)``."""
        return x[0] if len(x) == 1 else torch.cat(list(x), dim=1)

    def noise(self, like, generator: torch.Generator | None, dtype: torch.dtype | None = None):
        """Standard normal noise shaped like the state ``like``, drawn jointly (module docstring)."""
        width = sum(v.shape[1] for v in like)
        joint = torch.randn(
            (like[0].shape[0], width), generator=generator, dtype=dtype or like[0].dtype
        )
        return self.split(joint, like)

    def project(self, x, batch: Tensor):
        """Every part through its own projection (zero centre of mass for a CoM-free part)."""
        return map_parts(lambda p, v: p.project(v, batch), self.parts, x)

    def score(self, model: Callable[[Tensor, Tensor, Tensor], Tensor]):
        """A score on states from a network on joined states: ``model(join(x), t, batch)`` split
        into the parts, ``t`` cast to the state's dtype."""

        def score(x, t: Tensor, batch: Tensor):
            return self.split(model(self.join(x), t.to(x[0].dtype), batch), x)

        return score

    def _steps(self, x, budget: Tensor, batch: Tensor, eps, mode: Mode, types: Tensor | None):
        steps = [
            local_step(p, v, budget, batch, e, mode, types)
            for p, v, e in zip(self.parts, x, eps, strict=True)
        ]
        return type(x)(*(s[0] for s in steps)), type(x)(*(s[1] for s in steps))

    def local_step(
        self, x_s, budget: Tensor, batch: Tensor, generator: torch.Generator | None, mode: Mode
    ):
        """Local-DSM's step over ``budget = int_s^t beta (num_graphs,)``: ``(x_t, grad log q(x_t |
        x_s))``, every part by its own linearised transition, noise in the state's dtype."""
        return self._steps(x_s, budget, batch, self.noise(x_s, generator), mode, self.types)

    def simulate(
        self,
        x0,
        batch: Tensor,
        t: Tensor,
        generator: torch.Generator | None,
        mode: Mode = "expm",
        max_budget: float = 0.25,
        start: Tensor | None = None,
    ):
        """A draw of the state at ``t (num_graphs,)`` from ``x0`` at ``start`` (default 0) by
        local-linearisation steps of rate budget <= ``max_budget`` (as
        :func:`pipeline.transitions.simulate_forward`); no network."""
        start = torch.zeros_like(t) if start is None else start

        def advance(x, budget: Tensor, sub_batch: Tensor, sub_types: Tensor | None):
            eps = self.noise(x, generator)
            return self._steps(x, budget, sub_batch, eps, mode, sub_types)[0]

        total = self.schedule.integral(start, t)
        return advance_in_steps(advance, x0, total, batch, max_budget, self.types)

    def transition(self, x0, t: Tensor, batch: Tensor) -> list:
        """Every part's closed-form ``q(x_t | x_0)`` (:meth:`ForwardProcess.transition`; raises
        :class:`~pipeline.processes.NoClosedFormTransition` where a part has none)."""
        return [p.transition(v, t, batch) for p, v in zip(self.parts, x0, strict=True)]

    def exact_step(self, x0, batch: Tensor, t: Tensor, generator: torch.Generator | None):
        """Exact DSM's draw: ``x_t`` from the closed form and ``grad log q(x_t | x_0)``; noise in
        float64, projected part by part."""
        eps = self.project(self.noise(x0, generator, torch.float64), batch)
        x_t, target = [], []
        closed = self.transition(map_parts(Tensor.double, x0), t, batch)
        for tr, v, e in zip(closed, x0, eps, strict=True):
            std = tr.std[batch, None]
            x_t.append((tr.mean + std * e).to(v.dtype))
            target.append((-e / std).to(v.dtype))
        return type(x0)(*x_t), type(x0)(*target)

    def rademacher(self, x, batch: Tensor, generator: torch.Generator | None):
        """Hutchinson's probe ``P v`` for ISM: signs +-1 shaped like ``x``, drawn jointly."""
        width = sum(v.shape[1] for v in x)
        joint = torch.randint(0, 2, (x[0].shape[0], width), generator=generator)
        return self.project(self.split(joint.to(x[0].dtype) * 2 - 1, x), batch)


def as_parts(process: ForwardProcess | NodeParts, x, types: Tensor | None = None):
    """``(NodeParts, state, unwrap)``: a tensor ``x`` with a :class:`ForwardProcess` becomes the
    one-part state :class:`Nodes` (``unwrap`` returns its tensor); a :class:`NodeParts` with its
    state passes through."""
    if isinstance(process, NodeParts):
        return process, x, lambda state: state
    return NodeParts(Nodes(process), types), Nodes(x), lambda state: state.x


__all__ = ["NodeParts", "Nodes", "as_parts", "map_parts"]
