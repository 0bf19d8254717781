"""The crystal recipe: config checks, training on real Perov-5 records, sampling, the trained-checkpoint
round trip, the fitted lattice prior and structure prediction (the torus maths: test_torus.py; the
losses and the sampler at the exact score: test_crystal_process.py)."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch
from crystal_cells import real_cells as _cells
from torch_geometric.data import Batch

from models.config import CSPNetConfig
from pipeline.crystal_recipe import (
    CrystalProcessConfig,
    CrystalRecipe,
    CrystalRecipeConfig,
    LatticePrior,
    PartWeights,
    fit_lattice_prior,
    fit_to_data,
)
from pipeline.datasets import shared_data_dir
from pipeline.generate import degenerate_reason
from pipeline.io import read_cdvae_csv
from pipeline.losses import LossConfig
from pipeline.recipes import load_trained, recipe_from_config, save_trained
from pipeline.samplers import SamplerConfig
from pipeline.structure_set import StructureSet

SMALL = CSPNetConfig(hidden=32, layers=2, num_freqs=4, time_dim=16)
PEROV = shared_data_dir() / "crystals" / "perov_5" / "val.csv"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def perov(tmp_path_factory) -> list:
    """The first 64 records of the real Perov-5 validation split, as a data set gives them."""
    if not PEROV.exists():
        pytest.skip(f"reference data {PEROV} absent (set LDSM_SHARED_DATA)")
    small = tmp_path_factory.mktemp("perov") / "val.csv"
    csv.field_size_limit(2**31 - 1)
    with open(PEROV, newline="") as src, open(small, "w", newline="") as dst:
        writer = csv.writer(dst)
        for row in itertools.islice(csv.reader(src), 65):  # header + 64 records
            writer.writerow(row)
    result = read_cdvae_csv(small)
    assert len(result.records) == 64 and not result.rejects
    return StructureSet.from_data_list(result.records).to_data_list()


# ---------------------------------------------------------------------------------------------
# Real data, sampling, checkpoints
# ---------------------------------------------------------------------------------------------


def test_config_checks():
    with pytest.raises(ValueError, match="exact-dsm"):
        CrystalRecipe(CrystalRecipeConfig(loss=LossConfig(kind="exact-dsm")))
    with pytest.raises(ValueError, match="num_types"):
        CrystalRecipe(CrystalRecipeConfig(elements=(6,)))
    recipe = recipe_from_config({"kind": "crystal", "process": {"drift": "linear"}})
    assert isinstance(recipe, CrystalRecipe) and recipe.pair is None
    assert recipe_from_config(recipe.config.model_dump(mode="json")).config == recipe.config


@pytest.mark.parametrize(
    "kind,drift",
    [("local-dsm", "physical"), ("ism", "physical"), ("exact-dsm", "linear")],
)
def test_cspnet_trains_on_perov5(perov, kind, drift):
    """20 Adam steps lower the loss on a fixed evaluation draw of real Perov-5 records by 10%
    (local-DSM's irreducible target variance keeps its relative fall the smallest)."""
    torch.manual_seed(0)
    recipe = CrystalRecipe(
        CrystalRecipeConfig(model=SMALL, loss=LossConfig(kind=kind), process={"drift": drift})
    )
    model = recipe.build_model()
    evaluation = Batch.from_data_list(perov[:32])
    train = Batch.from_data_list(perov[32:])

    def evaluate() -> float:
        with torch.enable_grad():  # ISM differentiates the network's output
            generator = torch.Generator().manual_seed(9)
            return float(recipe.loss(model, evaluation, generator).detach().mean())

    before = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(20):
        opt.zero_grad()
        recipe.loss(model, train, torch.Generator().manual_seed(step)).mean().backward()
        opt.step()
    after = evaluate()
    assert math.isfinite(before) and after < before - 0.1 * abs(before)


@pytest.mark.parametrize("drift", ["physical", "linear"])
@pytest.mark.parametrize("kind,nfe,want", [("sde", 6, 6), ("ode", 6, 6)])
def test_sample_returns_crystals_of_the_requested_sizes(drift, kind, nfe, want):
    """An untrained network on a recipe fitted to three real cells: the requested sizes, finite
    cells, only the fitted elements."""
    torch.manual_seed(0)
    base = CrystalRecipeConfig(model=SMALL, process=CrystalProcessConfig(drift=drift))
    recipe = CrystalRecipe(fit_to_data(base, _cells()))
    sizes = torch.tensor([5, 1, 12])
    out, used = recipe.sample(
        recipe.build_model(), sizes, SamplerConfig(kind=kind, nfe=nfe), torch.Generator()
    )
    assert used == want
    assert [len(c.z) for c in out] == sizes.tolist()
    for c in out:
        assert c.frac.min() >= 0 and c.frac.max() < 1
        assert c.lattice.shape == (1, 3, 3) and torch.isfinite(c.lattice).all()
        assert set(c.z.tolist()) <= set(recipe.config.elements)


def test_save_and_load_trained_round_trip(tmp_path):
    torch.manual_seed(0)
    base = CrystalRecipeConfig(model=SMALL, process={"drift": "linear"})
    recipe = CrystalRecipe(fit_to_data(base, _cells()))
    model = recipe.build_model()
    path = save_trained(tmp_path / "crystal.pt", recipe, model, {5: 10, 6: 2}, dataset="perov-5")
    trained = load_trained(path)
    assert trained.recipe.config == recipe.config and trained.num_atoms == {5: 10, 6: 2}
    assert trained.info["dataset"] == "perov-5"
    for a, b in zip(model.state_dict().values(), trained.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sampler = SamplerConfig(nfe=4)
    sizes = torch.tensor([5, 5])
    first, _ = recipe.sample(model.eval(), sizes, sampler, torch.Generator().manual_seed(3))
    second, _ = trained.recipe.sample(
        trained.model, sizes, sampler, torch.Generator().manual_seed(3)
    )
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.frac, b.frac) and torch.equal(a.lattice, b.lattice)
        assert torch.equal(a.z, b.z)


# ---------------------------------------------------------------------------------------------
# Fitted lattice prior, element mask, structure prediction (issue 15)
# ---------------------------------------------------------------------------------------------


def test_fitted_cubic_prior_against_closed_forms():
    """One atom in cubes of volume 1 and 2 A^3: density (1 + 1/2) / 2 = 3/4, side
    a = (4/3)^(1/3) for both, diagonal offsets 1/a - 1 and 2^(1/3)/a - 1, the rest 0."""
    eye = torch.eye(3, dtype=torch.float64)
    lattices = torch.stack([eye, 2 ** (1 / 3) * eye])
    prior = fit_lattice_prior(lattices, torch.tensor([1, 1]))
    a = (4 / 3) ** (1 / 3)
    d1, d2 = 1 / a - 1, 2 ** (1 / 3) / a - 1
    assert prior.kind == "cubic" and math.isclose(prior.density, 0.75, rel_tol=1e-12)
    assert math.isclose(prior.spread, math.sqrt(3 * (d1**2 + d2**2) / 18), rel_tol=1e-12)
    assert math.isclose(prior.low[0], d1 / prior.spread, rel_tol=1e-12)
    assert math.isclose(prior.high[8], d2 / prior.spread, rel_tol=1e-12)
    assert prior.low[1] == prior.high[1] == 0.0
    n = torch.tensor([1, 1])
    torch.testing.assert_close(prior.cell(prior.state(lattices, n), n), lattices)
    with pytest.raises(ValueError, match="density"):
        LatticePrior(kind="cubic")


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_untrained_model_gives_no_nan_no_flat_cell_and_only_training_elements(perov, kind):
    """The issue's repro: a recipe fitted to real Perov-5 records, its network trained 10 steps,
    1,000 samples at 50 NFE. Before the ancestral / DDIM steps and the fitted prior, such a model
    (30 steps, 100 NFE) gave NaN states in 1 to 3 % of 200 samples and cells under 1e-3 A^3 in
    10 % (SDE), and cells from 0.4 to 2,300 A^3 (ODE)."""
    torch.manual_seed(0)
    base = CrystalRecipeConfig(model=SMALL, process={"drift": "linear"})
    config = fit_to_data(base.model_copy(update={"loss": LossConfig(kind="exact-dsm")}), perov)
    recipe = CrystalRecipe(config)
    model = recipe.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = Batch.from_data_list(perov)
    for step in range(10):
        opt.zero_grad()
        recipe.loss(model, train, torch.Generator().manual_seed(step)).mean().backward()
        opt.step()
    sizes = torch.full((1000,), 5)
    sampler = SamplerConfig(kind=kind, nfe=50)
    out, _ = recipe.sample(model, sizes, sampler, torch.Generator().manual_seed(0))
    elements = {int(z) for d in perov for z in d.z}
    assert set(config.elements) == elements and config.model.num_types == len(elements)
    for c in out:
        assert degenerate_reason(c) is None
        assert abs(float(torch.linalg.det(c.lattice[0].double()))) > 0.1  # CDVAE's volume check
        assert set(c.z.tolist()) <= elements


def test_structure_prediction_keeps_the_given_types_and_has_no_type_loss(perov):
    """CSP: samples carry exactly the requested atoms; the type weight does not enter the loss;
    sampling needs the atoms (and de novo refuses them)."""
    torch.manual_seed(0)
    base = fit_to_data(CrystalRecipeConfig(model=SMALL, types="given"), perov)
    recipe = CrystalRecipe(base)
    heavy = CrystalRecipe(base.model_copy(update={"part_weights": PartWeights(types=1e6)}))
    model = recipe.build_model()
    batch = Batch.from_data_list(perov[:8])
    light_loss = recipe.loss(model, batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        heavy.loss(model, batch, torch.Generator().manual_seed(1)), light_loss
    )
    sizes = torch.tensor([5, 5])
    z = torch.cat([perov[0].z, perov[1].z])
    out, _ = recipe.sample(model, sizes, SamplerConfig(nfe=8), torch.Generator(), types=z)
    assert [c.z.tolist() for c in out] == [perov[0].z.tolist(), perov[1].z.tolist()]
    with pytest.raises(ValueError, match="required"):
        recipe.sample(model, sizes, SamplerConfig(nfe=8), torch.Generator())
    de_novo = CrystalRecipe(base.model_copy(update={"types": "diffuse"}))
    with pytest.raises(ValueError, match="not taken"):
        de_novo.sample(model, sizes, SamplerConfig(nfe=8), torch.Generator(), types=z)
    with pytest.raises(ValueError, match=r"\[118\]"):
        recipe.onehot(torch.tensor([118]))
