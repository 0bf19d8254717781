"""Crystal validators against analytic cases, broken crystals and the CDVAE reference sets."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from pipeline import crystal_checks as cc
from pipeline import crystal_fingerprints as cfp
from pipeline.verdict import Verdict

SHARED = Path(
    os.environ.get("LDSM_SHARED_DATA", Path(__file__).resolve().parents[1] / "../shared/datasets")
)


def rock_salt(a: float = 5.64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conventional NaCl cell: (lattice (3, 3), frac (8, 3), z (8,))."""
    s = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers)


def perovskite() -> Structure:
    return Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def read_cdvae(name: str, split: str, limit: int | None = None) -> list[Structure]:
    path = SHARED / "crystals" / name / f"{split}.csv"
    if not path.exists():
        pytest.skip(f"reference data {path} absent (set LDSM_SHARED_DATA)")
    with open(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = list(csv.DictReader(f))[:limit]
        return [Structure.from_str(r["cif"], fmt="cif") for r in rows]


def arrays(s: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers)


def test_rock_salt_is_valid():
    lattice, frac, z = rock_salt()
    assert cc.structural_validity(lattice, frac, z) == Verdict(True, "ok")
    assert cc.compositional_validity(z).ok
    assert cc.density(Structure(lattice, z, frac)) == pytest.approx(2.165, abs=0.01)


def test_minimum_image_distance_is_periodic():
    # Atoms at x = 0 and x = 0.9 of a 3 A cube are 0.3 A apart through the boundary, not 2.7 A.
    lattice = np.eye(3) * 3.0
    frac = np.array([[0.0, 0, 0], [0.9, 0, 0]])
    assert cc.min_image_distances(lattice, frac)[0, 1] == pytest.approx(0.3)
    v = cc.structural_validity(lattice, frac, [6, 6])
    assert not v.ok and v.reason == "atoms 0 and 1 0.30 A apart (< 0.5)"
    assert cc.structural_validity(lattice, np.array([[0.0, 0, 0], [0.8, 0, 0]]), [6, 6]).ok


def test_broken_crystals_are_flagged_with_the_right_reason():
    lattice, frac, z = rock_salt()
    merged = frac.copy()
    merged[1] = merged[0]
    assert "atoms 0 and 1 0.00 A apart" in cc.structural_validity(lattice, merged, z).reason
    flat = lattice.copy()
    flat[2] = flat[0] + flat[1]  # coplanar lattice vectors: zero volume
    assert cc.structural_validity(flat, frac, z).reason.startswith("cell volume 0 A^3 < 0.1")
    nan = frac.copy()
    nan[3, 0] = np.nan
    assert cc.structural_validity(lattice, nan, z).reason == "non-finite lattice or coordinates"
    assert cc.structural_validity(lattice, np.zeros((0, 3)), []).reason == "empty structure"
    assert "shape mismatch" in cc.structural_validity(lattice, frac, z[:3]).reason
    assert "invalid atomic number" in cc.structural_validity(lattice, frac, z * 0).reason
    assert cc.to_structure(flat, frac, z) is None and cc.to_structure(lattice, nan, z) is None
    assert cfp.structure_fingerprint(None) is None


def test_compositional_validity_follows_cdvae():
    v = cc.compositional_validity
    assert v([11, 17]).ok  # NaCl
    assert v([38, 22, 8, 8, 8]).ok  # SrTiO3
    unbalanced = v([11, 17, 17])  # NaCl2: Na+ cannot balance two chlorines in any state
    assert unbalanced == Verdict(False, "no charge-neutral oxidation-state assignment")
    assert v([6] * 8) == Verdict(True, "ok (single element)")
    assert v([29, 30, 30]) == Verdict(True, "ok (all-metal alloy)")
    # SiCl balances only with Si as the anion, against the Pauling electronegativity order.
    assert v([14, 17]) == Verdict(
        False, "charge-neutral only against Pauling electronegativity order"
    )
    assert not v([55, 9, 9]).ok  # CsF2: Cs has no +2 state
    assert not v([]).ok and "invalid atomic number" in v([0, 8]).reason


def test_uniqueness_and_novelty_with_structure_matcher():
    base = perovskite()
    shifted = base.copy()
    shifted.translate_sites(list(range(5)), [0.1, 0.2, 0.3])  # same crystal, new origin
    scaled = base.copy()
    scaled.scale_lattice(base.volume * 1.05)  # within ltol: same prototype
    other = Structure(Lattice.cubic(3.9), ["Ba", "Ti", "O", "O", "O"], base.frac_coords)
    structures = [base, shifted, other, scaled, None]
    assert cc.unique_mask(structures) == [True, False, True, False, False]
    assert cc.novel_mask(structures, [other]) == [True, True, False, True, False]
    assert cc.novel_mask([base], []) == [True]


def test_matching_verdicts_equal_plain_structure_matcher_fits_on_real_cells():
    """Reducing once and bucketing by reduced site count changes no verdict: brute force agrees."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    carbon = read_cdvae("carbon_24", "test", 14)
    supercell = carbon[0].copy()
    supercell.make_supercell([1, 1, 2])  # the same crystal, twice the sites
    shifted = carbon[1].copy()
    shifted.translate_sites(list(range(len(shifted))), [0.13, 0.0, 0.41])
    structures = [*carbon, supercell, shifted, None]
    matcher = StructureMatcher(**cc.MATCHER_KWARGS)

    def fits(a, b) -> bool:
        return a is not None and b is not None and bool(matcher.fit(a, b))

    unique: list[bool] = []
    for k, s in enumerate(structures):
        earlier = [structures[j] for j in range(k) if unique[j]]
        unique.append(s is not None and not any(fits(r, s) for r in earlier))
    assert cc.unique_mask(structures) == unique
    assert unique[-3:] == [False, False, False]  # the supercell, the shifted copy and None
    reference = carbon[:5]
    novel = [s is not None and not any(fits(r, s) for r in reference) for s in structures]
    assert cc.novel_mask(structures, reference) == novel
    assert novel[:5] == [False] * 5 and novel[-3:] == [False, False, False]


def test_neutral_assignments_equal_the_full_oxidation_state_product():
    """The pruned search yields exactly the neutral tuples of CDVAE's product loop, in its order."""
    import itertools

    import smact

    rng = np.random.default_rng(0)
    symbols = ["O", "N", "F", "S", "Ti", "Sr", "La", "Fe", "Mn", "Cu", "Cl", "P", "V", "Nb"]
    for _ in range(60):
        elems = rng.choice(symbols, size=rng.integers(2, 5), replace=False)
        raw = rng.integers(1, 5, size=len(elems))
        counts = tuple(int(c) for c in raw // np.gcd.reduce(raw))  # reduced, as _composition
        ox = [smact.Element(e).oxidation_states for e in elems]
        brute = [
            o
            for o in itertools.product(*ox)
            if smact.neutral_ratios(o, stoichs=[(c,) for c in counts], threshold=max(counts))
        ]
        assert list(cc._neutral_assignments(ox, counts)) == brute


def test_a_dozen_element_composition_gets_a_verdict():
    # 12 elements of a generated cell: the full product has ~10^9 tuples and none is neutral.
    z = np.array([9, 15, 23, 27, 34, 42, 50, 52, 61, 74, 77, 93, 9])
    verdict = cc.compositional_validity(z)
    assert verdict.reason in {
        "ok",
        "no charge-neutral oxidation-state assignment",
        "charge-neutral only against Pauling electronegativity order",
    }


def test_fingerprints_and_coverage():
    base = perovskite()
    fp = cfp.structure_fingerprint(base)
    assert fp.shape == (cfp.STRUCT_FP_DIM,) == (61,)
    # Simple cubic: every site is a perfect octahedron, so the octahedral order parameter is 1 and
    # the CN-6 "oct_max" entry (index 24) equals the CN-6 weight (index 22).
    ti = cfp.structure_fingerprint(Structure(base.lattice, ["Ti"], [[0, 0, 0]]))
    assert ti[22] > 0.5 and ti[24] == pytest.approx(ti[22], rel=1e-6)
    comp = cfp.composition_fingerprint([38, 22, 8, 8, 8])
    single = cfp.composition_fingerprint([6, 6])
    assert comp.shape == single.shape == (cfp.COMP_FP_DIM,) == (132,)
    # Magpie's first property is the atomic number: min, max, range, mean, avg_dev, mode.
    assert comp[:6] == pytest.approx([8, 38, 30, (38 + 22 + 3 * 8) / 5, 10.56, 8])
    assert single[:6] == pytest.approx([6, 6, 0, 6, 0, 6])

    # CDVAE's CompScaler: (x - mean) / std with its published first mean and std.
    means, stds = cfp.comp_scaler()
    assert means.shape == stds.shape == (132,)
    assert (means[0], stds[0]) == pytest.approx((21.194441759304013, 16.35781741152948))
    assert cfp.scale_composition([comp])[0, 3] == pytest.approx((16.8 - means[3]) / stds[3])
    assert np.isfinite(cfp.scale_composition([single])).all()  # NaN -> 0

    gen_s, gen_c = [fp, fp + 1.0, None], [comp, comp, comp]
    recall, precision = cfp.coverage(gen_s, gen_c, [fp], [comp], 0.2, 4.0)
    assert recall == 1.0 and precision == pytest.approx(1 / 3)  # None counts as a miss
    # The composition distance is the Euclidean distance of the scaled fingerprints.
    d = float(np.linalg.norm(cfp.scale_composition([comp]) - cfp.scale_composition([single])))
    assert cfp.coverage([fp], [single], [fp], [comp], 0.2, d * 1.001) == (1.0, 1.0)
    assert cfp.coverage([fp], [single], [fp], [comp], 0.2, d * 0.999) == (0.0, 0.0)
    # CDVAE's rule: the nearest structure and the nearest composition may be different crystals
    # (precision 1 here); neither reference crystal has both near a generated one (recall 0).
    far = fp + 1.0
    assert cfp.coverage([fp], [comp], [far, fp], [comp, single], 0.2, 1.0) == (0.0, 1.0)
    assert cfp.coverage([], [], [fp], [comp], 0.2, 4.0) == (None, None)
    assert cfp.coverage([None], [comp], [fp], [comp], 0.2, 4.0) == (None, 0.0)


def test_wasserstein_and_num_elements():
    assert cc.wdist([0.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert cc.wdist([], [1.0]) is None
    assert cc.num_elements([8, 8, 22, 38]) == 3


@pytest.mark.parametrize("name", ["perov_5", "carbon_24"])
def test_reference_test_splits_are_structurally_valid(name):
    structures = read_cdvae(name, "test")
    assert len(structures) > 2000
    verdicts = [cc.structural_validity(*arrays(s)) for s in structures]
    assert all(v.ok for v in verdicts), [v.reason for v in verdicts if not v.ok][:3]


def test_perov_5_compositional_validity_is_high():
    # CDVAE reports 98.6 % compositional validity for Perov-5 data itself.
    verdicts = [cc.compositional_validity(arrays(s)[2]) for s in read_cdvae("perov_5", "test", 600)]
    assert 0.95 < np.mean([v.ok for v in verdicts]) < 1.0


def test_mp_20_sample_never_crashes():
    for s in read_cdvae("mp_20_sample", "test", 40):
        for verdict in (
            cc.structural_validity(*arrays(s)),
            cc.compositional_validity(s.atomic_numbers),
        ):
            assert isinstance(verdict.ok, bool) and verdict.reason
