"""Crystal validators and set metrics as CDVAE defines them (Xie et al. 2022,
``scripts/eval_utils.py`` and ``scripts/compute_metrics.py`` of txie-93/cdvae).

A crystal is given as plain arrays: ``lattice`` (3, 3) rows are lattice vectors in Angstrom,
``frac`` (num_atoms, 3) fractional coordinates, ``z`` (num_atoms,) atomic numbers
(``Data.lattice[0]``, ``Data.frac``, ``Data.z``). Validators return frozen verdicts with ``ok`` and
``reason`` (:class:`pipeline.verdict.Verdict`) and never raise on garbage (NaN, empty, zero-volume
cell, unknown elements).

- Structural validity: every minimum-image distance between two distinct sites > 0.5 A and cell
  volume >= 0.1 A^3 (CDVAE ``structure_validity``; like CDVAE, a site's distance to its own periodic
  image is not tested, the volume bound covers collapsed cells).
- Compositional validity: CDVAE ``smact_validity`` (SMACT charge neutrality with the exact reduced
  stoichiometry plus the Pauling electronegativity test; a single element and an all-metal alloy are
  valid). SMACT >= 3 returns only the ratios from ``neutral_ratios``; the rule is unchanged.
- Uniqueness / novelty: pymatgen ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)``, compared
  only within a reduced-composition bucket (the matcher never matches across compositions anyway).
- Coverage (COV-R / COV-P) and the fingerprints it compares: :mod:`pipeline.crystal_fingerprints`.
- CHGNet energy and relaxation: :mod:`pipeline.relax`.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from pipeline.verdict import Verdict

MIN_DISTANCE_A = 0.5
MIN_VOLUME_A3 = 0.1
# CDVAE compute_metrics.py COV_Cutoffs (struc on the CrystalNN fingerprint, comp on Magpie).
COV_CUTOFFS = {
    "perov_5": {"struc": 0.2, "comp": 4.0},
    "carbon_24": {"struc": 0.2, "comp": 4.0},
    "mp_20": {"struc": 0.4, "comp": 10.0},
}
MATCHER_KWARGS = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10}


def _arrays(lattice, frac, z) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """Coerce to float64 (3, 3), (N, 3) and int64 (N,); the last value is a reason if unusable."""
    try:
        lattice = np.asarray(lattice, dtype=np.float64).reshape(3, 3)
        frac = np.asarray(frac, dtype=np.float64)
        z = np.asarray(z, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        return np.zeros((3, 3)), np.zeros((0, 3)), np.zeros(0, np.int64), f"unreadable: {err}"
    if frac.ndim != 2 or frac.shape[1] != 3 or frac.shape[0] != z.shape[0]:
        return lattice, frac, z, f"shape mismatch: z {tuple(z.shape)} vs frac {tuple(frac.shape)}"
    if z.size == 0:
        return lattice, frac, z, "empty structure"
    if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
        return lattice, frac, z, "non-finite lattice or coordinates"
    if ((z < 1) | (z > 103)).any():
        return lattice, frac, z, f"invalid atomic number {int(z[(z < 1) | (z > 103)][0])}"
    return lattice, frac, z, None


def structural_validity(lattice, frac, z) -> Verdict:
    """CDVAE structural validity: volume >= 0.1 A^3 and all distinct-site distances > 0.5 A."""
    lattice, frac, z, problem = _arrays(lattice, frac, z)
    if problem is not None:
        return Verdict(False, problem)
    volume = abs(float(np.linalg.det(lattice)))
    if volume < MIN_VOLUME_A3:
        return Verdict(False, f"cell volume {volume:.3g} A^3 < {MIN_VOLUME_A3}")
    if z.size == 1:
        return Verdict(True, "ok")
    d = min_image_distances(lattice, frac)
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    if d[i, j] < MIN_DISTANCE_A:
        return Verdict(
            False, f"atoms {min(i, j)} and {max(i, j)} {d[i, j]:.2f} A apart (< {MIN_DISTANCE_A})"
        )
    return Verdict(True, "ok")


def min_image_distances(lattice: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Minimum-image distances (N, N) in Angstrom, as pymatgen's ``Structure.distance_matrix``.

    Uses pymatgen's own periodic routine (LLL-reduced images), so the answer is CDVAE's.
    """
    from pymatgen.core import Lattice

    return Lattice(lattice).get_all_distances(frac, frac)


def _composition(z: np.ndarray) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """CDVAE's composition: elements sorted by atomic number, counts divided by their gcd."""
    from pymatgen.core import Element

    counts = Counter(z.tolist())
    elems = sorted(counts)
    c = np.array([counts[e] for e in elems])
    c = c // np.gcd.reduce(c)
    return tuple(Element.from_Z(e).symbol for e in elems), tuple(int(x) for x in c)


def compositional_validity(z) -> Verdict:
    """CDVAE ``smact_validity`` of the composition of ``z`` (num_atoms,)."""
    z = np.asarray(z, dtype=np.int64).reshape(-1) if np.size(z) else np.zeros(0, np.int64)
    if z.size == 0:
        return Verdict(False, "empty structure")
    if ((z < 1) | (z > 103)).any():
        return Verdict(False, f"invalid atomic number {int(z[(z < 1) | (z > 103)][0])}")
    return _smact_validity(*_composition(z))


@lru_cache(maxsize=65536)
def _smact_validity(elems: tuple[str, ...], counts: tuple[int, ...]) -> Verdict:
    import smact
    from smact.screening import pauling_test

    if len(elems) == 1:
        return Verdict(True, "ok (single element)")
    if all(e in smact.metals for e in elems):
        return Verdict(True, "ok (all-metal alloy)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SMACT warns for elements without Pauling data
        try:
            species = [smact.Element(e) for e in elems]
        except (NameError, KeyError, ValueError) as err:
            return Verdict(False, f"no SMACT data: {err}")
    electronegs = [s.pauling_eneg for s in species]
    neutral_found = False
    for ox_states in _neutral_assignments([s.oxidation_states or [] for s in species], counts):
        neutral_found = True
        try:
            eneg_ok = pauling_test(ox_states, electronegs)
        except TypeError:  # CDVAE: no electronegativity data counts as passing
            eneg_ok = True
        if eneg_ok:
            return Verdict(True, "ok")
    if neutral_found:
        return Verdict(False, "charge-neutral only against Pauling electronegativity order")
    return Verdict(False, "no charge-neutral oxidation-state assignment")


def _neutral_assignments(ox_states: list[list[int]], counts: tuple[int, ...]):
    """The oxidation-state tuples with ``sum(ox * count) == 0``, in ``itertools.product`` order.

    ``counts`` are coprime (:func:`_composition`), so SMACT's ``neutral_ratios`` with these fixed
    stoichiometries is exactly this sum test. CDVAE loops over the whole product, which never ends
    for a generated cell with a dozen elements. Pruning with the sums the
    remaining elements can still reach yields the same tuples in the same order, and no others.
    """
    reach = [{0}]  # reach[k]: sums of the last k elements
    for ox, c in zip(reversed(ox_states), reversed(counts), strict=True):
        reach.append({o * c + r for o in ox for r in reach[-1]})
    reach.reverse()  # reach[i]: sums of elements i..n-1

    def extend(i: int, total: int, chosen: tuple[int, ...]):
        if i == len(ox_states):
            yield chosen
            return
        for o in ox_states[i]:
            if -(total + o * counts[i]) in reach[i + 1]:
                yield from extend(i + 1, total + o * counts[i], (*chosen, o))

    if 0 in reach[0]:
        yield from extend(0, 0, ())


def to_structure(lattice, frac, z):
    """pymatgen ``Structure`` or None when the arrays are unusable or the cell is degenerate."""
    from pymatgen.core import Lattice, Structure

    lattice, frac, z, problem = _arrays(lattice, frac, z)
    if problem is not None or abs(np.linalg.det(lattice)) < 1e-8:
        return None
    try:
        return Structure(Lattice(lattice), z.tolist(), frac, coords_are_cartesian=False)
    except Exception:  # pymatgen raises assorted errors on odd cells; "None" is the verdict here
        return None


def _reduce(matcher, structures: Sequence) -> list:
    """Each structure as the matcher reduces it (primitive, Niggli), None where that fails.

    ``matcher.fit`` reduces both structures on every call; reducing each once and fitting with
    ``skip_structure_reduction=True`` gives the same verdicts at a fraction of the cost.
    """
    out = []
    for s in structures:
        try:
            out.append(None if s is None else matcher._get_reduced_structure(s, True, True))
        except Exception:  # a degenerate cell: it matches nothing, as a failing fit
            out.append(None)
    return out


def _bucket(reduced: Sequence) -> dict[tuple[str, int], list[int]]:
    """Indices by (reduced formula, sites of the reduced cell): without ``attempt_supercell`` the
    matcher only pairs reduced cells with equal site counts, so other pairs need no fit."""
    buckets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for k, s in enumerate(reduced):
        if s is not None:
            buckets[(s.composition.reduced_formula, len(s))].append(k)
    return buckets


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**MATCHER_KWARGS)


def unique_mask(structures: Sequence) -> list[bool]:
    """True for each structure not matching an earlier one (None entries are False).

    Greedy representatives per bucket with CDVAE/DiffCSP's matcher settings; a structure whose
    cell cannot be reduced matches nothing, so it is unique.
    """
    matcher = _matcher()
    reduced = _reduce(matcher, structures)
    out = [s is not None and r is None for s, r in zip(structures, reduced, strict=True)]
    for idx in _bucket(reduced).values():
        reps: list[int] = []
        for k in idx:
            if not any(_fit(matcher, reduced[r], reduced[k]) for r in reps):
                reps.append(k)
                out[k] = True
    return out


def novel_mask(structures: Sequence, reference: Sequence) -> list[bool]:
    """True for each structure matching no reference structure (None entries are False)."""
    matcher = _matcher()
    reduced, ref_reduced = _reduce(matcher, structures), _reduce(matcher, reference)
    ref = _bucket(ref_reduced)
    out = [s is not None and r is None for s, r in zip(structures, reduced, strict=True)]
    for key, idx in _bucket(reduced).items():
        for k in idx:
            out[k] = not any(_fit(matcher, ref_reduced[r], reduced[k]) for r in ref.get(key, []))
    return out


def _fit(matcher, a, b) -> bool:
    try:
        return bool(matcher.fit(a, b, skip_structure_reduction=True))
    except Exception:  # the matcher can fail on degenerate cells; such a pair is no match
        return False


def density(structure) -> float:
    """Mass density in g/cm^3 (pymatgen)."""
    return float(structure.density)


def num_elements(z) -> int:
    """Number of distinct elements."""
    return len(set(np.asarray(z).reshape(-1).tolist()))


def wdist(a: Sequence[float], b: Sequence[float]) -> float | None:
    """1-D Wasserstein distance between two samples (None when either is empty)."""
    from scipy.stats import wasserstein_distance  # 0.7 s to import: only crystal sets need it

    a = [x for x in a if np.isfinite(x)]
    b = [x for x in b if np.isfinite(x)]
    return float(wasserstein_distance(a, b)) if a and b else None
