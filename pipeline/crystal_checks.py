"""Crystal validators and set metrics as CDVAE defines them (Xie et al. 2022,
``scripts/eval_utils.py`` and ``scripts/compute_metrics.py`` of txie-93/cdvae).

A crystal is given as plain arrays: ``lattice`` (3, 3) rows are lattice vectors in Angstrom,
``frac`` (num_atoms, 3) fractional coordinates, ``z`` (num_atoms,) atomic numbers
(``Data.lattice[0]``, ``Data.frac``, ``Data.z``). Validators return frozen verdicts with ``ok`` and
``reason`` and never raise on garbage (NaN, empty, zero-volume cell, unknown elements).

- Structural validity: every minimum-image distance between two distinct sites > 0.5 A and cell
  volume >= 0.1 A^3 (CDVAE ``structure_validity``; like CDVAE, a site's distance to its own periodic
  image is not tested, the volume bound covers collapsed cells).
- Compositional validity: CDVAE ``smact_validity`` (SMACT charge neutrality with the exact reduced
  stoichiometry plus the Pauling electronegativity test; a single element and an all-metal alloy are
  valid). SMACT >= 3 returns only the ratios from ``neutral_ratios``; the rule is unchanged.
- Uniqueness / novelty: pymatgen ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)``, compared
  only within a reduced-composition bucket (the matcher never matches across compositions anyway).
- Coverage (COV-R / COV-P, CDVAE ``compute_cov``): CrystalNN "ops" site fingerprints (matminer's
  ``CrystalNNFingerprint.from_preset("ops")``, 61 values, averaged over sites) rebuilt on pymatgen
  because matminer is not a dependency; the composition fingerprint is a Magpie-style one (the six
  Magpie statistics of eleven element properties pymatgen and RDKit provide) standardised on the
  reference set, because Magpie's tables and CDVAE's ``CompScaler`` need matminer. Structure
  distances are exactly CDVAE's; composition distances are on a similar but not identical scale.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from scipy.stats import wasserstein_distance

MIN_DISTANCE_A = 0.5
MIN_VOLUME_A3 = 0.1
# CDVAE compute_metrics.py COV_Cutoffs (struc on the CrystalNN fingerprint, comp on Magpie).
COV_CUTOFFS = {
    "perov_5": {"struc": 0.2, "comp": 4.0},
    "carbon_24": {"struc": 0.2, "comp": 4.0},
    "mp_20": {"struc": 0.4, "comp": 10.0},
}
MATCHER_KWARGS = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10}


@dataclass(frozen=True)
class CrystalVerdict:
    """Pass/fail verdict with its reason (``"ok"`` when it passes)."""

    ok: bool
    reason: str


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


def structural_validity(lattice, frac, z) -> CrystalVerdict:
    """CDVAE structural validity: volume >= 0.1 A^3 and all distinct-site distances > 0.5 A."""
    lattice, frac, z, problem = _arrays(lattice, frac, z)
    if problem is not None:
        return CrystalVerdict(False, problem)
    volume = abs(float(np.linalg.det(lattice)))
    if volume < MIN_VOLUME_A3:
        return CrystalVerdict(False, f"cell volume {volume:.3g} A^3 < {MIN_VOLUME_A3}")
    if z.size == 1:
        return CrystalVerdict(True, "ok")
    d = min_image_distances(lattice, frac)
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    if d[i, j] < MIN_DISTANCE_A:
        return CrystalVerdict(
            False, f"atoms {min(i, j)} and {max(i, j)} {d[i, j]:.2f} A apart (< {MIN_DISTANCE_A})"
        )
    return CrystalVerdict(True, "ok")


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


def compositional_validity(z) -> CrystalVerdict:
    """CDVAE ``smact_validity`` of the composition of ``z`` (num_atoms,)."""
    z = np.asarray(z, dtype=np.int64).reshape(-1) if np.size(z) else np.zeros(0, np.int64)
    if z.size == 0:
        return CrystalVerdict(False, "empty structure")
    if ((z < 1) | (z > 103)).any():
        return CrystalVerdict(False, f"invalid atomic number {int(z[(z < 1) | (z > 103)][0])}")
    return _smact_validity(*_composition(z))


@lru_cache(maxsize=65536)
def _smact_validity(elems: tuple[str, ...], counts: tuple[int, ...]) -> CrystalVerdict:
    import smact
    from smact.screening import pauling_test

    if len(elems) == 1:
        return CrystalVerdict(True, "ok (single element)")
    if all(e in smact.metals for e in elems):
        return CrystalVerdict(True, "ok (all-metal alloy)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SMACT warns for elements without Pauling data
        try:
            species = [smact.Element(e) for e in elems]
        except (NameError, KeyError, ValueError) as err:
            return CrystalVerdict(False, f"no SMACT data: {err}")
    electronegs = [s.pauling_eneg for s in species]
    neutral_found = False
    for ox_states in _neutral_assignments([s.oxidation_states or [] for s in species], counts):
        neutral_found = True
        try:
            eneg_ok = pauling_test(ox_states, electronegs)
        except TypeError:  # CDVAE: no electronegativity data counts as passing
            eneg_ok = True
        if eneg_ok:
            return CrystalVerdict(True, "ok")
    if neutral_found:
        return CrystalVerdict(False, "charge-neutral only against Pauling electronegativity order")
    return CrystalVerdict(False, "no charge-neutral oxidation-state assignment")


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


# matminer cn_target_motif_op.yaml with pymatgen cn_opt_params.yaml: the "ops" preset as
# (coordination number -> [(LocalStructOrderParams type, parameters)]), "wt" first at every CN.
_OPS_PRESET: dict[int, list[tuple[str, dict | None]]] = {
    1: [("sgl_bd", None)],
    2: [("bent", {"TA": 0.5, "IGW_TA": 15.15}),
        ("bent", {"TA": 0.5802777777777778, "IGW_TA": 13.95}),
        ("bent", {"TA": 0.666666666667, "IGW_TA": 13.25}),
        ("bent", {"TA": 0.833333333333333, "IGW_TA": 12.45}),
        ("bent", {"TA": 1, "IGW_TA": 8.667})],
    3: [("tri_plan_max", None),
        ("tet_max", {"TA": 0.6081734479693927, "IGW_TA": 18.33, "fac_AA": 1.5, "exp_cos_AA": 2}),
        ("T", None)],
    4: [("sq_plan_max", None), ("tet_max", None), ("see_saw_rect", None),
        ("tri_bipyr", {"min_SPP": 2.356194490192345, "IGW_EP": 15.75, "IGW_SPP": 12.75,
                       "fac_AA": 1.5, "exp_cos_AA": 2, "w_SPP": 1}),
        ("tri_pyr", None)],
    5: [("pent_plan_max", None), ("sq_pyr", None), ("tri_bipyr", None)],
    6: [("hex_plan_max", None), ("oct_max", None), ("pent_pyr", None)],
    7: [("hex_pyr", None), ("pent_bipyr", None)],
    8: [("bcc", None), ("hex_bipyr", None)],
    9: [("q2", None), ("q4", None), ("q6", None)],
    10: [("q2", None), ("q4", None), ("q6", None)],
    11: [("q2", None), ("q4", None), ("q6", None)],
    12: [("cuboct_max", None), ("q2", None), ("q4", None), ("q6", None)],
}  # fmt: skip
MAX_CN = 24
STRUCT_FP_DIM = MAX_CN + sum(len(v) for v in _OPS_PRESET.values())  # 61, as matminer's


@lru_cache(maxsize=1)
def _fp_tools():
    from pymatgen.analysis.local_env import CrystalNN, LocalStructOrderParams

    ops = {
        cn: [LocalStructOrderParams([t], parameters=[p]) for t, p in lst]
        for cn, lst in _OPS_PRESET.items()
    }
    return CrystalNN(), ops


def structure_fingerprint(structure) -> np.ndarray | None:
    """CrystalNN "ops" fingerprint (61,) averaged over sites, or None when CrystalNN fails."""
    if structure is None:
        return None
    cnn, ops = _fp_tools()
    sites = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(len(structure)):
                nndata = cnn.get_nn_data(structure, i)
                fp = []
                for cn in range(1, MAX_CN + 1):
                    wt = nndata.cn_weights.get(cn, 0)
                    fp.append(wt)
                    for op in ops.get(cn, []):
                        if wt == 0:
                            fp.append(0.0)
                            continue
                        neigh = [d["site"] for d in nndata.cn_nninfo[cn]]
                        val = op.get_order_parameters(
                            [structure[i], *neigh], 0, indices_neighs=list(range(1, len(neigh) + 1))
                        )[0]
                        fp.append(wt * (val or 0.0))
                sites.append(fp)
    except Exception:  # CDVAE counts a crystal whose fingerprint fails as having none
        return None
    return np.asarray(sites, dtype=np.float64).mean(axis=0)


@cache
def _element_properties(z: int) -> np.ndarray:
    """Eleven Magpie-style element properties of atomic number ``z`` (NaN where unknown)."""
    from pymatgen.core import Element
    from rdkit import Chem

    el = Element.from_Z(z)
    core = {2: "He", 10: "Ne", 18: "Ar", 36: "Kr", 54: "Xe", 86: "Rn"}
    core_z = max([c for c in core if c < z], default=0)
    core_shells = (
        {(n, l) for n, l, _ in Element.from_Z(core_z).full_electronic_structure}
        if core_z
        else set()
    )
    valence = Counter()
    for n, l, e in el.full_electronic_structure:
        if (n, l) not in core_shells:
            valence[l] += e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [
            z, el.mendeleev_no, float(el.atomic_mass), _num(el.melting_point), el.group, el.row,
            Chem.GetPeriodicTable().GetRcovalent(z), _num(el.X),
            valence["s"], valence["p"], valence["d"] + valence["f"],
        ]  # fmt: skip
    return np.asarray([np.nan if v is None else float(v) for v in values])


def _num(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def composition_fingerprint(z) -> np.ndarray:
    """Magpie statistics (min, max, range, mean, avg_dev, mode) of element properties: (66,)."""
    counts = Counter(np.asarray(z, dtype=np.int64).reshape(-1).tolist())
    elems = sorted(counts)
    frac = np.array([counts[e] for e in elems], dtype=np.float64)
    frac /= frac.sum()
    props = np.stack([_element_properties(e) for e in elems])  # (num_elements, 11)
    mean = frac @ props
    avg_dev = frac @ np.abs(props - mean)
    mode = props[np.argmax(frac)]  # the most abundant element (first, i.e. lowest Z, on ties)
    return np.concatenate(
        [props.min(0), props.max(0), props.max(0) - props.min(0), mean, avg_dev, mode]
    )


def fingerprints(structures: Sequence) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(structure, composition) fingerprints of the structures CrystalNN can fingerprint."""
    struct, comp = [], []
    for s in structures:
        fp = structure_fingerprint(s)
        if fp is not None:
            struct.append(fp)
            comp.append(composition_fingerprint(s.atomic_numbers))
    return struct, comp


def coverage(
    struct_fps: Sequence[np.ndarray | None],
    comp_fps: Sequence[np.ndarray | None],
    ref_struct_fps: Sequence[np.ndarray],
    ref_comp_fps: Sequence[np.ndarray],
    struc_cutoff: float,
    comp_cutoff: float,
) -> tuple[float | None, float | None]:
    """CDVAE COV-R and COV-P: (recall, precision), None when either set is empty.

    Recall: fraction of reference crystals with a generated one within both cutoffs; precision:
    generated crystals within both cutoffs of some reference one, over all generated crystals
    (those without a fingerprint count as misses, as in CDVAE). Composition fingerprints are
    standardised with the reference set's mean and standard deviation (NaN -> 0, CDVAE's
    ``replace_nan_token``).
    """
    from scipy.spatial.distance import cdist

    n_gen = len(struct_fps)
    keep = [k for k in range(n_gen) if struct_fps[k] is not None and comp_fps[k] is not None]
    if n_gen == 0 or not ref_struct_fps or not keep:
        return None, (0.0 if n_gen and ref_struct_fps else None)
    ref_c = np.asarray(ref_comp_fps, dtype=np.float64)
    mu, sd = np.nanmean(ref_c, axis=0), np.nanstd(ref_c, axis=0)
    mu, sd = np.nan_to_num(mu), np.where(np.nan_to_num(sd) > 0, np.nan_to_num(sd), 1.0)

    def scale(x):
        return np.nan_to_num((np.asarray(x, dtype=np.float64) - mu) / sd)

    s_d = cdist(np.asarray([struct_fps[k] for k in keep]), np.asarray(ref_struct_fps))
    c_d = cdist(scale([comp_fps[k] for k in keep]), scale(ref_c))
    close = (s_d <= struc_cutoff) & (c_d <= comp_cutoff)
    recall = float(np.mean(close.any(axis=0)))
    precision = float(close.any(axis=1).sum() / n_gen)
    return recall, precision


def density(structure) -> float:
    """Mass density in g/cm^3 (pymatgen)."""
    return float(structure.density)


def num_elements(z) -> int:
    """Number of distinct elements."""
    return len(set(np.asarray(z).reshape(-1).tolist()))


def wdist(a: Sequence[float], b: Sequence[float]) -> float | None:
    """1-D Wasserstein distance between two samples (None when either is empty)."""
    a = [x for x in a if np.isfinite(x)]
    b = [x for x in b if np.isfinite(x)]
    return float(wasserstein_distance(a, b)) if a and b else None


@dataclass(frozen=True)
class ChgnetVerdict:
    """CHGNet energy per atom (eV) before and after relaxation; None on failure."""

    ok: bool
    reason: str
    energy_per_atom: float | None
    relaxed_energy_per_atom: float | None


def chgnet_energy(structure, relax: bool = False, steps: int = 100) -> ChgnetVerdict:
    """CHGNet energy per atom, optionally after a FIRE relaxation (optional, off by default)."""
    if structure is None:
        return ChgnetVerdict(False, "no structure", None, None)
    try:
        from chgnet.model import CHGNet, StructOptimizer

        model = _chgnet_model(CHGNet)
        energy = float(model.predict_structure(structure)["e"])
        relaxed = None
        if relax:
            result = StructOptimizer(model=model).relax(structure, steps=steps, verbose=False)
            relaxed = float(result["trajectory"].energies[-1]) / len(structure)
    except Exception as err:  # CHGNet failures (graph too large, no neighbours) become a verdict
        return ChgnetVerdict(False, f"chgnet failed: {str(err).splitlines()[0]}", None, None)
    return ChgnetVerdict(True, "ok", energy, relaxed)


@lru_cache(maxsize=1)
def _chgnet_model(cls):
    return cls.load(verbose=False)
