"""The design report: plots exist and are PNGs, the numbers it prints are the ones computed.

Real data: the first 300 QM9 molecules (qm9pack) and the first 30 Perov-5 test crystals.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
from ase.build import molecule

from pipeline import converters as C
from pipeline import datasets as D
from pipeline import qm9
from pipeline import report as R
from pipeline import report_numbers as N
from pipeline import structures as S
from pipeline.io import read_structures

PNG = b"\x89PNG\r\n\x1a\n"
PEROV_TEST = D.shared_data_dir() / "crystals" / "perov_5" / "test.csv"


@pytest.fixture(scope="module")
def qm9_head(tmp_path_factory):
    path = tmp_path_factory.mktemp("qm9") / "head.csv"
    with open(qm9.qm9pack_files()[0]) as f:
        path.write_text("".join(next(f) for _ in range(301)))
    return qm9.read_qm9pack([path])


@pytest.fixture(scope="module")
def perov(tmp_path_factory):
    if not PEROV_TEST.exists():
        pytest.skip(f"shared reference data not found at {PEROV_TEST} (set LDSM_SHARED_DATA)")
    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("perov") / "test.csv"
    with open(PEROV_TEST, newline="") as src, open(path, "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        for _ in range(31):
            writer.writerow(next(reader))
    result = read_structures(path)
    assert not result.rejects and len(result.records) == 30
    return result.records


def _table(report: str, header: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table whose header line starts with ``header``."""
    lines = report.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _images(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def test_ema_against_closed_forms():
    assert N.ema(np.full(7, 3.0)).tolist() == [3.0] * 7
    # A unit step after v_0 = 0: m_k = 1 - (1 - alpha)^k.
    alpha, k = 0.2, np.arange(10)
    values = np.r_[0.0, np.ones(9)]
    np.testing.assert_allclose(N.ema(values, alpha), 1 - (1 - alpha) ** k, rtol=1e-12)


def test_bond_lengths_of_methane_and_ethanol():
    atoms = molecule("CH4")
    methane = C.from_ase(atoms, name="CH4")
    lengths = N.bond_lengths([methane])
    expected = np.linalg.norm(atoms.positions[1:] - atoms.positions[0], axis=1)
    assert list(lengths) == ["C-H"]  # symbols in Hill order
    np.testing.assert_allclose(np.sort(lengths["C-H"]), np.sort(expected), atol=1e-6)
    ethanol = N.bond_lengths([C.from_ase(molecule("CH3CH2OH"), name="EtOH")])
    assert {k: v.size for k, v in ethanol.items()} == {"C-H": 5, "H-O": 1, "C-C": 1, "C-O": 1}


def test_densities_scale_with_the_cell(perov):
    rho = N.densities(perov)
    assert rho.shape == (30,) and (rho > 0).all()
    # Stretching every lattice vector by 1.1 keeps the mass and multiplies the volume by 1.331.
    stretched = [S.make_crystal(d.z, d.frac, d.lattice[0] * 1.1, name=d.name) for d in perov]
    np.testing.assert_allclose(N.densities(stretched), rho / 1.1**3, rtol=1e-5)
    collapsed = S.make_crystal(perov[0].z, perov[0].frac, np.zeros((3, 3)), name="flat")
    assert N.densities([collapsed]).size == 0


def _metrics_csv(path, steps: int = 50):
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "grad_norm", "lr", "skipped", "seconds", "val_loss"])
        for step in range(1, steps + 1):
            loss = "nan" if step == 20 else 5.0 / step + rng.uniform(0, 0.1)
            val = 1.0 / step if step % 25 == 0 else ""
            writer.writerow([step, loss, 1.0, 1e-3, int(step >= 20), 0.1 * step, val])


def test_molecule_report(qm9_head, tmp_path):
    reference = list(qm9_head[100:300])
    nan = S.make_molecule(qm9_head[5].z, torch.full_like(qm9_head[5].pos, math.nan), name="nan")
    merged_pos = qm9_head[6].pos.clone()
    merged_pos[1] = merged_pos[0]
    merged = S.make_molecule(qm9_head[6].z, merged_pos, name="merged")
    generated = [*qm9_head[:40], nan, merged]
    _metrics_csv(tmp_path / "metrics.csv")
    metrics = {"molecules": {"n": 42, "validity": 0.95, "novelty": None}}
    path = R.design_report(tmp_path, generated, reference, metrics, tmp_path / "metrics.csv")
    report = path.read_text()

    images = _images(report)
    assert images == [
        "plots/loss.png",
        "plots/bond_lengths.png",
        "plots/atoms.png",
        "plots/molecules.png",
    ]
    for image in images:
        data = (tmp_path / image).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
    assert "| molecules.validity | 0.95 |" in report and "| molecules.novelty | n/a |" in report
    assert "49 logged steps up to step 50" in report  # step 20 was skipped (NaN loss)
    assert "skipped steps 1" in report

    counts = _table(report, "| atoms |")
    gen, ref = Counter(len(d.z) for d in generated), Counter(len(d.z) for d in reference)
    assert {int(n): (int(g), int(r)) for n, g, r in counts} == {
        n: (gen[n], ref[n]) for n in set(gen) | set(ref)
    }

    bonds = _table(report, "| pair |")
    gen_b, ref_b = N.bond_lengths(generated), N.bond_lengths(reference)
    by_pair = {row[0]: row for row in bonds}
    assert int(by_pair["all"][1]) == sum(v.size for v in gen_b.values())
    assert int(by_pair["all"][3]) == sum(v.size for v in ref_b.values())
    assert float(by_pair["C-H"][4]) == pytest.approx(ref_b["C-H"].mean(), rel=1e-3)
    assert 1.08 < ref_b["C-H"].mean() < 1.11  # QM9's C-H bonds
    assert "non-finite coordinates: 1" in report
    # The merged pair is bonded at 0 A: the shortest generated bond, none in the reference.
    assert min(v.min() for v in gen_b.values()) == pytest.approx(0.0, abs=1e-6)
    assert min(v.min() for v in ref_b.values()) > 0.9
    n_drawn = int(re.search(r"The first (\d+) generated molecules", report).group(1))
    assert n_drawn == 24  # the cap: QM9's first 40 molecules all sanitise


def test_crystal_report_and_grid_fallback(perov, tmp_path):
    generated = [S.make_crystal(d.z, d.frac, d.lattice[0] * 1.05, name=d.name) for d in perov[:20]]
    path = R.design_report(tmp_path, generated, perov, {}, metrics_csv=None)
    report = path.read_text()
    assert _images(report) == ["plots/atoms.png", "plots/density.png"]
    assert "## Training" not in report and "## Bond lengths" not in report
    rows = {r[0]: r for r in _table(report, "| set |")}
    valid = N.valid_crystals(generated)  # one of them fails SMACT's charge neutrality
    rho_gen, rho_ref = N.densities(valid), N.densities(perov)
    assert rows["generated"][1] == f"{len(valid)} of 20" and rows["reference"][1] == "30 of 30"
    assert float(rows["generated"][2]) == pytest.approx(rho_gen.mean(), rel=1e-3)
    assert float(rows["reference"][3]) == pytest.approx(rho_ref.std(), rel=1e-3)
    wdist = float(re.search(r"Wasserstein distance: ([0-9.e-]+)\.", report).group(1))
    assert wdist == pytest.approx(N.density_summary(rho_gen, rho_ref)["wdist"], rel=1e-3)
    assert _table(report, "| atoms |") == [["5", "20", "30"]]

    # Molecules RDKit cannot sanitise: a note instead of a picture.
    ch5 = S.make_molecule(torch.tensor([6, 1, 1, 1, 1, 1]), torch.randn(6, 3) * 0.1, name="x")
    report = R.design_report(tmp_path / "bad", [ch5], [], {}).read_text()
    assert "None of the generated molecules could be sanitised" in report
    assert not (tmp_path / "bad" / "plots" / "molecules.png").exists()


def test_crystal_report_numbers_agree_with_the_screen_metrics(perov, tmp_path):
    """Seven known crystals (three valid, one flat cell, one with every atom on one site, one
    anion-only FO4, one NaN) against 20 reference crystals: every number of the report, checked
    against hand counts, pymatgen's densities and the screen's own metrics (issue 15)."""
    from pymatgen.core import Lattice, Structure
    from scipy.stats import wasserstein_distance

    from pipeline import crystal_checks as cc
    from pipeline import metrics as pm

    def crystal(d, lattice=None, frac=None, z=None, name=""):
        lattice = d.lattice[0] if lattice is None else lattice
        frac = d.frac if frac is None else frac
        return S.make_crystal(d.z if z is None else z, frac, lattice, name=name)

    flat = perov[3].lattice[0].copy()
    flat[2] = flat[0]
    generated = [
        crystal(perov[0], name="a"),
        crystal(perov[1], name="b"),
        crystal(perov[2], lattice=perov[2].lattice[0] * 1.05, name="c"),
        crystal(perov[3], lattice=flat, name="flat"),
        crystal(perov[4], frac=np.zeros((5, 3)), name="one-site"),
        crystal(perov[5], z=torch.tensor([9, 8, 8, 8, 8]), name="FO4"),
        crystal(perov[6], frac=np.full((5, 3), np.nan), name="nan"),
    ]
    reference = perov[10:30]
    ref_structures = [cc.to_structure(d.lattice[0], d.frac, d.z) for d in reference]
    rows = pm.check_crystals(
        [d.name for d in generated],
        [d.lattice[0].astype(np.float64) for d in generated],
        [d.frac.astype(np.float64) for d in generated],
        [d.z for d in generated],
    )
    metrics = {"crystals": pm.crystal_set_metrics(rows, ref_structures, matching=False)}
    # The flow reads back what a file could hold: here the NaN sample is lost.
    report = R.design_report(tmp_path, generated[:6], reference, metrics, n_generated=7)
    text = report.read_text()

    assert "7 generated structures (0 molecules, 6 crystals, 1 not readable" in text
    assert "20 reference structures" in text
    table = {r[0]: r[1] for r in _table(text, "| metric |")}
    assert table["crystals.n"] == "7"
    assert float(table["crystals.structural_validity"]) == pytest.approx(4 / 7, rel=1e-3)
    assert float(table["crystals.compositional_validity"]) == pytest.approx(6 / 7, rel=1e-3)

    def rho(d) -> float:
        lattice = Lattice(d.lattice[0].astype(np.float64))
        return Structure(lattice, d.z.tolist(), d.frac.astype(np.float64)).density

    gen_rho = np.array([rho(d) for d in generated[:3]])
    ref_rho = np.array([rho(d) for d in reference])
    rows = {r[0]: r for r in _table(text, "| set |")}
    assert rows["generated"][1] == "3 of 7" and rows["reference"][1] == "20 of 20"
    assert float(rows["generated"][2]) == pytest.approx(gen_rho.mean(), rel=1e-3)
    assert float(rows["generated"][3]) == pytest.approx(gen_rho.std(), rel=1e-3)
    assert float(rows["reference"][2]) == pytest.approx(ref_rho.mean(), rel=1e-3)
    assert float(rows["reference"][3]) == pytest.approx(ref_rho.std(), rel=1e-3)
    wdist = float(re.search(r"Wasserstein distance: ([0-9.e-]+)\.", text).group(1))
    assert wdist == pytest.approx(wasserstein_distance(gen_rho, ref_rho), rel=1e-3)
    assert wdist == pytest.approx(metrics["crystals"]["wdist_density"], rel=1e-3)
    assert float(table["crystals.wdist_density"]) == pytest.approx(wdist, rel=1e-3)
    assert _table(text, "| atoms |") == [["5", "6", "20"]]
    low, high = N.density_axis(gen_rho, ref_rho)
    assert (low, high) == (min(ref_rho.min(), np.percentile(gen_rho, 1)), ref_rho.max())


def test_design_report_shows_the_screens_top_candidates(qm9_head, tmp_path):
    """The screen's rows of the first 8 QM9 molecules (QED 0.33-0.40) ranked by QED, filtered by
    QED >= 0.36 (water, acetylene and methane out), written to screen.csv and read back: the
    design report's top candidates are the first passing rows in that order, with the values of
    the table and a drawing of each."""
    from pipeline import metrics as pm
    from pipeline.ranking import apply_filters, parse_expression, parse_filter, rank
    from pipeline.writers import write_screen_table

    rows = pm.check_molecule_records(qm9_head[:8], posebusters=False)
    pm.molecule_set_metrics(rows, None)
    removed = apply_filters(rows, [parse_filter("qed >= 0.36")])
    assert removed == {"qed >= 0.36": 3}
    ranked = rank(rows, parse_expression("qed"))
    write_screen_table(tmp_path / "screen.csv", ranked)
    screen_rows = N.read_screen_rows(tmp_path / "screen.csv")
    assert [r["qed"] for r in screen_rows] == [r["qed"] for r in ranked]

    ranking = {"rank_by": "qed", "filtered": removed}
    metrics = {"molecules": {"n": 8}, "ranking": ranking}
    report = R.design_report(tmp_path, qm9_head[:8], [], metrics, screen_rows=screen_rows)
    text = report.read_text()
    assert "Ranked by the score `qed`" in text
    assert f"- `qed >= 0.36` removed {removed['qed >= 0.36']}" in text
    shown = _table(text, "| rank | name | smiles | score |")
    passing = [r for r in ranked if r["passed"]][:6]
    assert passing and [row[1] for row in shown] == [r["name"] for r in passing]
    assert [float(row[3]) for row in shown] == pytest.approx([r["qed"] for r in passing], 1e-3)
    assert all(r["qed"] >= 0.36 for r in passing) and len(passing) == 5
    assert (tmp_path / "plots" / "top_molecules.png").read_bytes().startswith(PNG)
