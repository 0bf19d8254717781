"""Crystal fingerprints and CDVAE coverage (COV-R / COV-P, ``compute_cov`` of txie-93/cdvae).

CrystalNN "ops" site fingerprints (matminer's ``CrystalNNFingerprint.from_preset("ops")``, 61
values, averaged over sites) rebuilt on pymatgen because matminer is not a dependency; the
composition fingerprint is a Magpie-style one (the six Magpie statistics of eleven element
properties pymatgen and RDKit provide) standardised on the reference set, because Magpie's tables
and CDVAE's ``CompScaler`` need matminer. Structure distances are exactly CDVAE's; composition
distances are on a similar but not identical scale. Structures are pymatgen ``Structure``s
(:func:`pipeline.crystal_checks.to_structure`).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import cache, lru_cache

import numpy as np

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
