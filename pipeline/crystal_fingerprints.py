"""Crystal fingerprints and CDVAE coverage (COV-R / COV-P, ``compute_cov`` of txie-93/cdvae).

The fingerprints are CDVAE's own, computed by matminer: the structure fingerprint is
``CrystalNNFingerprint.from_preset("ops")`` (61 values per site, averaged over sites) and the
composition fingerprint ``ElementProperty.from_preset("magpie")`` (132 values: six statistics of 22
Magpie element properties). Composition fingerprints are standardised by CDVAE's fixed
``CompScaler`` (the means and standard deviations in ``data/cdvae_comp_scaler.json``, NaN -> 0),
so the distances, and with them CDVAE's cut-offs, are on CDVAE's scale. Structures are pymatgen
``Structure``s (:func:`pipeline.crystal_checks.to_structure`).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

STRUCT_FP_DIM = 61  # matminer's CrystalNN "ops" preset: CN weights 1-24 and their order parameters
COMP_FP_DIM = 132  # Magpie: 22 element properties x (min, max, range, mean, avg_dev, mode)
_SCALER = Path(__file__).resolve().parent / "data" / "cdvae_comp_scaler.json"


@lru_cache(maxsize=1)
def _featurizers():
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


@lru_cache(maxsize=1)
def comp_scaler() -> tuple[np.ndarray, np.ndarray]:
    """CDVAE's ``CompScaler``: (means, stds), each (132,), of the Magpie composition features."""
    data = json.loads(_SCALER.read_text())
    return np.asarray(data["means"]), np.asarray(data["stds"])


def structure_fingerprint(structure) -> np.ndarray | None:
    """CrystalNN "ops" fingerprint (61,) averaged over sites, or None when CrystalNN fails
    (CDVAE's ``Crystal.get_fingerprints``)."""
    if structure is None:
        return None
    site_fp, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [site_fp.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # CDVAE counts a crystal whose fingerprint fails as having none
        return None
    return np.asarray(sites, dtype=np.float64).mean(axis=0)


def composition_fingerprint(z) -> np.ndarray:
    """Magpie composition fingerprint (132,) of the atomic numbers ``z``, unscaled (NaN where
    Magpie has no value)."""
    from pymatgen.core import Composition, Element

    counts = Counter(np.asarray(z, dtype=np.int64).reshape(-1).tolist())
    comp = Composition({Element.from_Z(k): v for k, v in counts.items()})
    _, element_property = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(element_property.featurize(comp), dtype=np.float64)


def fingerprint_code() -> bytes:
    """The source of the fingerprint functions: a cache key of stored fingerprints (an edit of
    them, not of the coverage rule, recomputes)."""
    parts = (_featurizers, structure_fingerprint, composition_fingerprint)
    return "".join(inspect.getsource(f) for f in parts).encode()


def scale_composition(fps) -> np.ndarray:
    """Composition fingerprints (M, 132) standardised by CDVAE's ``CompScaler`` (NaN -> 0)."""
    means, stds = comp_scaler()
    return np.nan_to_num((np.asarray(fps, dtype=np.float64) - means) / stds)


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

    As CDVAE's ``compute_cov``, the nearest structure and the nearest composition are found
    separately (structure distance in the 61-dim CrystalNN space, composition distance in the
    132-dim Magpie space scaled by :func:`scale_composition`), not as one crystal. Recall: the
    fraction of reference crystals whose nearest generated structure is within ``struc_cutoff``
    and whose nearest generated composition is within ``comp_cutoff``; precision: the same for
    generated crystals against the reference, over all generated crystals (those without a
    fingerprint count as misses: ``num_gen_crystals`` before ``filter_fps``).
    """
    from scipy.spatial.distance import cdist

    n_gen = len(struct_fps)
    keep = [k for k in range(n_gen) if struct_fps[k] is not None and comp_fps[k] is not None]
    if n_gen == 0 or not ref_struct_fps or not keep:
        return None, (0.0 if n_gen and ref_struct_fps else None)
    s_d = cdist(np.asarray([struct_fps[k] for k in keep]), np.asarray(ref_struct_fps))
    c_d = cdist(scale_composition([comp_fps[k] for k in keep]), scale_composition(ref_comp_fps))
    recall = np.mean((s_d.min(axis=0) <= struc_cutoff) & (c_d.min(axis=0) <= comp_cutoff))
    precision = np.sum((s_d.min(axis=1) <= struc_cutoff) & (c_d.min(axis=1) <= comp_cutoff))
    return float(recall), float(precision / n_gen)
