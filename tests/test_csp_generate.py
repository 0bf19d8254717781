"""Structure prediction from compositions: formula and CDVAE inputs, one CIF per input record in
input order, through the library and the ``ldsm generate`` command line (issue 15)."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.core import Composition
from pymatgen.io.cif import CifParser

from flows.cli import main
from models.config import CSPNetConfig
from pipeline.compositions import CompositionRecord, parse_formula, read_compositions
from pipeline.crystal_process import CRYSTAL_CORRECTOR
from pipeline.crystal_recipe import CrystalRecipe, CrystalRecipeConfig, fit_to_data
from pipeline.datasets import shared_data_dir
from pipeline.generate import GenerateConfig, generate, plan
from pipeline.io import read_structures
from pipeline.recipes import load_trained, save_trained
from pipeline.samplers import SamplerConfig
from pipeline.structure_set import to_data
from pipeline.structures import make_crystal

PEROV = shared_data_dir() / "crystals" / "perov_5" / "test.csv"


def _cells() -> list:
    """Real cells whose elements the tiny CSP model knows: rock salt and cubic SrTiO3."""
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    srtio3 = make_crystal(
        [38, 22, 8, 8, 8],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        3.905 * np.eye(3),
        name="srtio3",
    )
    nacl = make_crystal(nacl.numbers, nacl.get_scaled_positions(), nacl.cell.array, name="nacl")
    return [nacl, srtio3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained structure-prediction CSPNet fitted to the cells (a real network, no mock)."""
    torch.manual_seed(0)
    base = CrystalRecipeConfig(
        model=CSPNetConfig(hidden=16, layers=1, num_freqs=2, time_dim=8),
        process={"drift": "linear"},
        types="given",
    )
    recipe = CrystalRecipe(fit_to_data(base, [to_data(c) for c in _cells()]))
    path = tmp_path_factory.mktemp("csp") / "csp.pt"
    return save_trained(path, recipe, recipe.build_model(), {5: 1}, dataset="perov-5")


def test_formulas_parse_to_their_atoms_and_bad_ones_are_named(tmp_path):
    assert parse_formula("SrTiO3") == (38, 22, 8, 8, 8)
    assert parse_formula("NaCl") == (11, 17)
    for bad in ("Xx2", "Fe0.5O", ""):
        with pytest.raises(ValueError):
            parse_formula(bad)
    path = tmp_path / "formulas.txt"
    path.write_text("# wanted\nSrTiO3\n\nNaCl  # rock salt\nQq3\n")
    with pytest.raises(ValueError, match="formulas.txt:5"):
        read_compositions(path)
    path.write_text("# wanted\nSrTiO3\n\nNaCl  # rock salt\n")
    assert read_compositions(path) == [
        CompositionRecord(name="SrTiO3", z=(38, 22, 8, 8, 8)),
        CompositionRecord(name="NaCl", z=(11, 17)),
    ]


def test_a_cdvae_csv_gives_its_cells_compositions_in_row_order(tmp_path):
    if not PEROV.exists():
        pytest.skip(f"reference data {PEROV} absent (set LDSM_SHARED_DATA)")
    small = tmp_path / "three.csv"
    csv.field_size_limit(2**31 - 1)
    with open(PEROV, newline="") as src, open(small, "w", newline="") as dst:
        rows = list(itertools.islice(csv.DictReader(src), 3))
        writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    records = read_compositions(small)
    assert [r.name for r in records] == [row["material_id"] for row in rows]
    assert all(len(r.z) == 5 for r in records)


def test_plan_gives_each_chunk_its_atoms_in_row_order():
    records = [CompositionRecord(name="NaCl", z=(11, 17)), CompositionRecord(name="X", z=(8,))]
    config = GenerateConfig(n=2, compositions=records, batch_size=3)
    assert config.names() == ["000000_NaCl", "000001_NaCl", "000002_X", "000003_X"]
    chunks = plan(config, {})
    # Sorted by size: the two one-atom structures first, then the NaCl pair.
    assert chunks[0].rows.tolist() == [2, 3, 0] and chunks[0].types.tolist() == [8, 8, 11, 17]
    assert chunks[1].rows.tolist() == [1] and chunks[1].types.tolist() == [11, 17]
    with pytest.raises(ValueError, match="num_atoms"):
        GenerateConfig(compositions=records, num_atoms=3)


def test_cli_writes_one_cif_per_structure_named_by_its_record(
    checkpoint, tmp_path, prefect_harness
):
    formulas = tmp_path / "formulas.txt"
    formulas.write_text("SrTiO3\nNaCl\n")
    out = tmp_path / "csp"
    argv = ["generate", "--checkpoint", str(checkpoint), "--compositions", str(formulas)]
    assert main([*argv, "--n", "2", "--nfe", "4", "--batch-size", "3", "--out", str(out)]) == 0
    names = ["000000_SrTiO3", "000001_SrTiO3", "000002_NaCl", "000003_NaCl"]
    assert sorted(p.stem for p in (out / "cifs").glob("*.cif")) == names
    for name in names:
        # The formula the CIF states (an untrained network may give a cell too flat for
        # pymatgen to build a structure from, which the screen rejects with that reason).
        block = CifParser(out / "cifs" / f"{name}.cif").as_dict()[name]
        stated = Composition(block["_chemical_formula_sum"])
        want = parse_formula(name.split("_", 1)[1])
        assert sorted(e.Z for e, k in stated.items() for _ in range(int(k))) == sorted(want)
    summary = json.loads((out / "generation.json").read_text())
    assert summary["n"] == 4 and summary["compositions"] == 2 and not summary["cifs_unwritten"]
    # The summary names the sampler that ran: the crystal model's corrector, not "None".
    assert summary["sampler"]["corrector"] == CRYSTAL_CORRECTOR and summary["nfe"] == 4
    # The flow's chunks give what the library gives in one process.
    records = read_compositions(formulas)
    config = GenerateConfig(n=2, compositions=records, sampler=SamplerConfig(nfe=4), batch_size=3)
    direct = generate(load_trained(checkpoint), config)
    back = read_structures(out / "samples.extxyz", min_distance=0.0).records
    for a, b in zip(back, direct.structures, strict=True):
        assert a.z.tolist() == b.z.tolist()
        np.testing.assert_allclose(a.frac, b.frac.numpy(), atol=1e-5, rtol=0)
    one = tmp_path / "one"
    assert main([*argv[:3], "--composition", "NaCl", "--nfe", "2", "--out", str(one)]) == 0
    assert [p.name for p in (one / "cifs").glob("*.cif")] == ["000000_NaCl.cif"]


def test_shipped_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    from flows import generate as flow
    from flows.console import UsageError

    monkeypatch.setattr(flow, "WEIGHTS", tmp_path)
    with pytest.raises(UsageError, match="--csp"):
        flow.shipped_checkpoint("perov-5", csp=True)


@pytest.mark.parametrize("dataset", ["perov-5", "carbon-24"])
def test_the_shipped_de_novo_crystal_models_sample_their_data_sets_elements_only(dataset):
    """``models/weights/<dataset>_cspnet.pt`` (README: command and numbers) is the de novo model
    that ``ldsm design --dataset <dataset>`` takes: cells of the data set's sizes and elements
    (Perov-5: five atoms; Carbon-24: 6 to 24 carbon atoms), finite."""
    from flows.generate import shipped_checkpoint

    trained = load_trained(shipped_checkpoint(dataset))
    config = trained.recipe.config
    assert config.types == "diffuse" and config.lattice.kind == "cubic"
    assert trained.info["dataset"] == dataset
    sizes = sorted(trained.num_atoms)
    if dataset == "perov-5":
        assert sizes == [5]
    else:
        assert list(config.elements) == [6] and sizes[0] >= 6 and sizes[-1] <= 24
    counts = torch.tensor([sizes[0], sizes[-1]] * 2)
    out, used = trained.recipe.sample(
        trained.model, counts, SamplerConfig(nfe=10), torch.Generator()
    )
    assert used == 10 and len(out) == 4
    for crystal, n in zip(out, counts.tolist(), strict=True):
        assert len(crystal.z) == n and set(crystal.z.tolist()) <= set(config.elements)
        assert torch.isfinite(crystal.lattice).all() and torch.isfinite(crystal.frac).all()


def test_the_shipped_perov5_csp_model_loads_as_structure_prediction():
    """``models/weights/perov-5_csp.pt`` (README: command and numbers) predicts SrTiO3 cells."""
    from flows.generate import shipped_checkpoint

    trained = load_trained(shipped_checkpoint("perov-5", csp=True))
    config = trained.recipe.config
    assert config.types == "given" and config.lattice.kind == "cubic"
    assert len(config.elements) == 56 and trained.info["dataset"] == "perov-5"
    z = torch.tensor(parse_formula("SrTiO3"))
    out, _ = trained.recipe.sample(
        trained.model, torch.tensor([5]), SamplerConfig(nfe=10), torch.Generator(), types=z
    )
    assert out[0].z.tolist() == z.tolist() and torch.isfinite(out[0].lattice).all()
