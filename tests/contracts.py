"""Reusable contract checks for graph score networks and their layers.

In the spirit of e3nn's ``assert_equivariant`` and nequip's ``model_tests_basic.py``: a module under
test is wrapped as ``fn(inputs: Inputs) -> dict[str, Tensor]`` and a ``spec`` says how each output
must transform (:class:`Kind`). The checks:

- molecules: O(3) equivariance (a different random rotation or reflection for every graph of the
  batch, drawn and applied in float64), translation invariance / equivariance;
- crystals: invariance under a common periodic shift of each crystal's fractional coordinates and
  under moving single atoms by lattice vectors; rotation (and reflection) of the Cartesian frame
  (lattice rows ``L -> L R^T``);
- every graph: permutation equivariance; the same output for a graph alone and inside a batch; no
  gradient from one graph's outputs to another graph's inputs.

Tolerances are relative to the size of the expected output and depend on the dtype (:data:`TOL`).
``tests/test_contracts.py`` shows that each check fails on a deliberately broken module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum

import torch
from torch import Tensor

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


class Kind(Enum):
    """How an output transforms; ``per_graph`` outputs have ``num_graphs`` rows, others one per node."""

    POSITION = "position"  # (N, 3): rotates and translates with the input positions
    VECTOR = "vector"  # (N, 3): rotates; unchanged by translations
    INVARIANT = "invariant"  # (N, ...): unchanged by every symmetry
    LATTICE = "lattice"  # (B, 3, 3): rows rotate with the lattice, L -> L R^T
    GRAPH_INVARIANT = "graph_invariant"  # (B, ...): unchanged

    @property
    def per_graph(self) -> bool:
        return self in (Kind.LATTICE, Kind.GRAPH_INVARIANT)


@dataclass(frozen=True)
class Inputs:
    """A batch of graphs: molecules set ``pos``, crystals ``frac`` and ``lattice``."""

    h: Tensor  # (N, F) node features
    t: Tensor  # (B,) times
    batch: Tensor  # (N,) int64
    pos: Tensor | None = None  # (N, 3) Cartesian positions
    frac: Tensor | None = None  # (N, 3) fractional coordinates
    lattice: Tensor | None = None  # (B, 3, 3) lattice vectors as rows

    @property
    def num_graphs(self) -> int:
        return self.t.shape[0]

    def select(self, g: int) -> Inputs:
        """Graph ``g`` alone, as a batch of one."""
        node = self.batch == g
        return Inputs(
            h=self.h[node],
            t=self.t[g : g + 1],
            batch=torch.zeros(int(node.sum()), dtype=torch.long),
            pos=None if self.pos is None else self.pos[node],
            frac=None if self.frac is None else self.frac[node],
            lattice=None if self.lattice is None else self.lattice[g : g + 1],
        )

    def to(self, dtype: torch.dtype) -> Inputs:
        """Floating fields cast to ``dtype``."""
        cast = {
            f.name: getattr(self, f.name).to(dtype)
            for f in fields(self)
            if getattr(self, f.name) is not None and getattr(self, f.name).is_floating_point()
        }
        return replace(self, **cast)


Fn = Callable[[Inputs], dict[str, Tensor]]
Spec = dict[str, Kind]


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """``(n, 3, 3)`` float64 random orthogonal matrices (Haar); odd-numbered ones are reflections."""
    a = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar measure
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]  # det +1
    flip = torch.ones(n, 1, 1, dtype=torch.float64)
    flip[1::2] = -1.0  # -R is a rotation composed with the inversion, det -1
    return q * flip


def assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    tol = TOL[expected.dtype]
    scale = 1.0 + expected.abs().max().item() if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def _rotate_rows(x: Tensor, rot: Tensor) -> Tensor:
    """``x (N, 3) @ rot^T`` per row, with ``rot (N, 3, 3)``, computed in float64."""
    return torch.einsum("nij,nj->ni", rot, x.double())


def _expected(
    out: dict[str, Tensor], spec: Spec, batch: Tensor, rot: Tensor | None, shift: Tensor | None
) -> dict[str, Tensor]:
    """Outputs transformed by per-graph ``rot (B, 3, 3)`` and Cartesian ``shift (B, 3)``."""
    expected = {}
    for name, kind in spec.items():
        y = out[name]
        if kind in (Kind.POSITION, Kind.VECTOR) and rot is not None:
            y = _rotate_rows(y, rot[batch]).to(y.dtype)
        if kind is Kind.POSITION and shift is not None:
            y = y + shift[batch].to(y.dtype)
        if kind is Kind.LATTICE and rot is not None:
            y = torch.einsum("bkj,bij->bki", y.double(), rot).to(y.dtype)
        expected[name] = y
    return expected


def _compare(actual: dict[str, Tensor], expected: dict[str, Tensor], spec: Spec, what: str) -> None:
    for name in spec:
        assert_close(actual[name], expected[name], f"{what} [{name}]")


def assert_rotation_equivariant(fn: Fn, spec: Spec, inputs: Inputs, seed: int = 0) -> None:
    """Every graph rotated (or reflected) on its own, about the origin: molecules rotate ``pos``,
    crystals rotate their lattice rows (fractional coordinates do not change)."""
    g = torch.Generator().manual_seed(seed)
    rot = random_orthogonal(inputs.num_graphs, g)
    if inputs.pos is not None:
        moved = replace(
            inputs, pos=_rotate_rows(inputs.pos, rot[inputs.batch]).to(inputs.pos.dtype)
        )
    else:
        lattice = torch.einsum("bkj,bij->bki", inputs.lattice.double(), rot)
        moved = replace(inputs, lattice=lattice.to(inputs.lattice.dtype))
    expected = _expected(fn(inputs), spec, inputs.batch, rot, None)
    _compare(fn(moved), expected, spec, "rotation/reflection")


def assert_translation_invariant(fn: Fn, spec: Spec, inputs: Inputs, seed: int = 0) -> None:
    """Each molecule shifted by its own random vector (a few Angstrom): POSITION outputs move with
    it, everything else is unchanged."""
    g = torch.Generator().manual_seed(seed)
    shift = 3.0 * torch.randn(inputs.num_graphs, 3, generator=g, dtype=torch.float64)
    moved = replace(inputs, pos=(inputs.pos.double() + shift[inputs.batch]).to(inputs.pos.dtype))
    expected = _expected(fn(inputs), spec, inputs.batch, None, shift)
    _compare(fn(moved), expected, spec, "translation")


def assert_periodic_shift_invariant(fn: Fn, spec: Spec, inputs: Inputs, seed: int = 0) -> None:
    """Crystals: a common fractional shift per crystal, wrapped into [0, 1), leaves every output
    unchanged; so does moving single atoms by whole lattice vectors (integer shifts, not wrapped)."""
    g = torch.Generator().manual_seed(seed)
    frac = inputs.frac.double()
    shift = torch.rand(inputs.num_graphs, 3, generator=g, dtype=torch.float64)
    wrapped = torch.remainder(frac + shift[inputs.batch], 1.0)
    images = torch.randint(-2, 3, frac.shape, generator=g).double()
    reference = fn(inputs)
    for what, moved in (
        ("periodic shift", wrapped),
        ("lattice translation of atoms", frac + images),
    ):
        _compare(fn(replace(inputs, frac=moved.to(inputs.frac.dtype))), reference, spec, what)


def _permutation_within_graphs(batch: Tensor, g: torch.Generator) -> Tensor:
    """A random node permutation that keeps every node in its graph (and ``batch`` unchanged)."""
    keys = batch.double() + torch.rand(batch.shape, generator=g, dtype=torch.float64)
    return torch.argsort(keys)


def assert_permutation_equivariant(fn: Fn, spec: Spec, inputs: Inputs, seed: int = 0) -> None:
    """Nodes shuffled inside their graphs: node outputs shuffle alike, graph outputs do not change."""
    assert bool((inputs.batch[1:] >= inputs.batch[:-1]).all()), "inputs.batch must be sorted"
    perm = _permutation_within_graphs(inputs.batch, torch.Generator().manual_seed(seed))
    node_fields = {
        name: getattr(inputs, name)[perm]
        for name in ("h", "pos", "frac")
        if getattr(inputs, name) is not None
    }
    out = fn(inputs)
    expected = {name: y if spec[name].per_graph else y[perm] for name, y in out.items()}
    _compare(fn(replace(inputs, **node_fields)), expected, spec, "permutation")


def assert_batch_independent(fn: Fn, spec: Spec, inputs: Inputs) -> None:
    """Each graph gives the same outputs alone as inside the batch."""
    out = fn(inputs)
    for g in range(inputs.num_graphs):
        alone = fn(inputs.select(g))
        inside = {
            name: y[g : g + 1] if spec[name].per_graph else y[inputs.batch == g]
            for name, y in out.items()
        }
        _compare(alone, inside, spec, f"graph {g} alone vs batched")


def assert_no_cross_graph_gradient(fn: Fn, spec: Spec, inputs: Inputs, seed: int = 0) -> None:
    """Gradients of graph 0's outputs (random weights) vanish exactly on other graphs' inputs."""
    g = torch.Generator().manual_seed(seed)
    leaves = {
        name: getattr(inputs, name).detach().clone().requires_grad_(True)
        for name in ("h", "pos", "frac", "lattice")
        if getattr(inputs, name) is not None
    }
    out = fn(replace(inputs, **leaves))
    loss = 0.0
    for name, y in out.items():
        mine = y[:1] if spec[name].per_graph else y[inputs.batch == 0]
        loss = loss + (mine * torch.randn(mine.shape, generator=g, dtype=mine.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    some_signal = False
    for name, grad in zip(leaves, grads, strict=True):
        if grad is None:
            continue
        other = slice(1, None) if name == "lattice" else inputs.batch != 0
        mine = slice(0, 1) if name == "lattice" else inputs.batch == 0
        leak = grad[other].abs().max().item() if grad[other].numel() else 0.0
        assert leak == 0.0, f"gradient leaks from graph 0 into other graphs' {name}: {leak:.3g}"
        some_signal |= bool(grad[mine].abs().max() > 0)
    assert some_signal, "graph 0's outputs do not depend on its own inputs: the check is vacuous"


def assert_graph_contracts(fn: Fn, spec: Spec, inputs: Inputs) -> None:
    """All symmetry and batching contracts that apply to ``inputs`` (molecules or crystals)."""
    assert_rotation_equivariant(fn, spec, inputs)
    if inputs.pos is not None:
        assert_translation_invariant(fn, spec, inputs)
    if inputs.frac is not None:
        assert_periodic_shift_invariant(fn, spec, inputs)
    assert_permutation_equivariant(fn, spec, inputs)
    assert_batch_independent(fn, spec, inputs)
    assert_no_cross_graph_gradient(fn, spec, inputs)


MOLECULE_ELEMENTS = ("H", "C", "N", "O", "F")  # QM9's atom types, one-hot in this order


def molecule_inputs(names: tuple[str, ...], dtype: torch.dtype = torch.float64) -> Inputs:
    """Real molecules from ASE's G2 set as a batch: positions in Angstrom, one-hot H/C/N/O/F types,
    one time per molecule."""
    from ase.collections import g2

    pos, h, batch = [], [], []
    for i, name in enumerate(names):
        atoms = g2[name]
        pos.append(torch.tensor(atoms.positions, dtype=torch.float64))
        types = torch.tensor([MOLECULE_ELEMENTS.index(s) for s in atoms.get_chemical_symbols()])
        h.append(torch.nn.functional.one_hot(types, len(MOLECULE_ELEMENTS)).double())
        batch.append(torch.full((len(atoms),), i, dtype=torch.long))
    t = torch.linspace(0.1, 0.9, len(names), dtype=torch.float64)
    return Inputs(h=torch.cat(h), t=t, batch=torch.cat(batch), pos=torch.cat(pos)).to(dtype)


def crystal_inputs(
    crystals: list, num_types: int = 100, dtype: torch.dtype = torch.float64
) -> Inputs:
    """ASE ``Atoms`` crystals as a batch: wrapped fractional coordinates, lattice rows in Angstrom,
    one-hot atomic numbers (``Z - 1``), one time per crystal."""
    frac, lattice, h, batch = [], [], [], []
    for i, atoms in enumerate(crystals):
        frac.append(torch.tensor(atoms.get_scaled_positions(wrap=True), dtype=torch.float64))
        lattice.append(torch.tensor(atoms.cell.array, dtype=torch.float64))
        z = torch.tensor(atoms.numbers) - 1
        h.append(torch.nn.functional.one_hot(z, num_types).double())
        batch.append(torch.full((len(atoms),), i, dtype=torch.long))
    t = torch.linspace(0.2, 0.8, len(crystals), dtype=torch.float64)
    inputs = Inputs(
        h=torch.cat(h),
        t=t,
        batch=torch.cat(batch),
        frac=torch.cat(frac),
        lattice=torch.stack(lattice),
    )
    return inputs.to(dtype)
