"""Crystal design runs: the console summary names the crystal metrics (issue 15)."""

from __future__ import annotations

from flows.design import CRYSTAL_SUMMARY, MOLECULE_SUMMARY, console_summary


def test_console_summary_prints_the_metrics_of_the_kind_generated():
    crystals = {k: 0.5 for k in CRYSTAL_SUMMARY} | {"n": 50}
    metrics = {"molecules": {"n": 0, "validity": None}, "crystals": crystals}
    summary = console_summary("runs/perov", metrics)
    assert summary == {"out": "runs/perov", "kind": "crystals", "n": 50, **crystals}
    molecules = {k: 0.25 for k in MOLECULE_SUMMARY} | {"n": 200}
    summary = console_summary("runs/qm9", {"molecules": molecules, "crystals": {"n": 0}})
    assert summary["kind"] == "molecules" and summary["n"] == 200
    assert all(summary[k] == 0.25 for k in MOLECULE_SUMMARY)


def test_chgnet_relaxes_a_distorted_perovskite_and_keeps_an_invalid_cell(tmp_path):
    """The real CHGNet (weights from its wheel): a SrTiO3 cell with one O displaced by 0.08 A
    relaxes to a lower energy per atom; a cell with two atoms 0.04 A apart is kept, unrelaxed,
    with its reason. The
    files read back, the summary's means are those of the table, and the report shows both
    metric sets side by side."""
    import csv

    import numpy as np
    import torch

    from flows.design import relax_task
    from pipeline.io import read_structures, write_structures
    from pipeline.report import relaxation_section
    from pipeline.structures import make_crystal

    torch.set_num_threads(1)
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.52]]
    good = make_crystal([38, 22, 8, 8, 8], frac, 3.905 * np.eye(3), name="srtio3")
    on_top = [*frac[:4], [0.01, 0, 0]]  # an O 0.04 A from Sr
    close = make_crystal([38, 22, 8, 8, 8], on_top, 3.905 * np.eye(3), name="close")
    samples = write_structures([good, close], tmp_path / "samples.cif")
    summary = relax_task.fn(str(samples), str(tmp_path / "relaxed"), "chgnet", 3)

    with open(tmp_path / "relaxed" / "relax.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["srtio3"]["relaxed"] == "True" and rows["close"]["relaxed"] == "False"
    assert rows["srtio3"]["reason"] == "not converged in 3 steps (last geometry kept)"
    assert (
        rows["close"]["reason"].startswith("not relaxed:")
        and "0.04 A apart" in rows["close"]["reason"]
    )
    before, after = (
        float(rows["srtio3"]["energy_per_atom"]),
        float(rows["srtio3"]["relaxed_energy_per_atom"]),
    )
    assert np.isfinite(before) and after < before
    assert summary["n"] == 2 and summary["relaxed"] == 1
    assert summary["mean_energy_per_atom"] == before
    assert summary["mean_relaxed_energy_per_atom"] == after
    back = read_structures(tmp_path / "relaxed" / "samples.cif", min_distance=0.0).records
    assert [d.name for d in back] == ["srtio3", "close"]
    assert not np.allclose(back[0].frac, good.frac, atol=1e-4)  # the atoms moved

    lines = relaxation_section(
        {"n": 2, "structural_validity": 0.5},
        {"crystals": {"structural_validity": 1.0}, "chgnet": summary},
    )
    assert "| structural_validity | 0.5 | 1 |" in lines
    assert lines[2].startswith("1 of 2 crystals relaxed")


def test_chgnet_says_whether_fire_converged():
    """FIRE on SrTiO3 with one O displaced by 0.08 A: converged ("ok") well within 200 steps, and
    "not converged" when stopped after 2; the displaced O moves back towards its site."""
    import numpy as np

    from pipeline.relax import relax_crystals
    from pipeline.structures import make_crystal

    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.52]]
    srtio3 = make_crystal([38, 22, 8, 8, 8], frac, 3.905 * np.eye(3), name="srtio3")
    done, stopped = relax_crystals([srtio3], steps=200)[0], relax_crystals([srtio3], steps=2)[0]
    assert done.reason == "ok" and done.steps < 200
    assert stopped.reason == "not converged in 2 steps (last geometry kept)" and stopped.steps == 2
    assert abs(float(done.structure.frac[4, 2]) - 0.5) < 0.02
