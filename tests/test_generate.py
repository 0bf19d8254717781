"""Generation: sizes from the histogram, seeded chunks, files the screen reads, degenerate samples."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from flows.cli import main
from models.config import EGNNConfig
from pipeline.generate import (
    GenerateConfig,
    chunk_generator,
    collect,
    degenerate_reason,
    generate,
    plan,
    sample_chunk,
    write_samples,
)
from pipeline.io import read_structures
from pipeline.molecule_recipe import MoleculeRecipe, MoleculeRecipeConfig, ProcessConfig
from pipeline.recipes import load_trained, save_trained
from pipeline.samplers import SamplerConfig
from pipeline.structures import make_crystal, make_molecule

HISTOGRAM = {5: 3, 9: 1}


def tiny_checkpoint(path, poison: bool = False, drift: str = "linear"):
    """An untrained 2 x 16 EGNN saved with the histogram; ``poison`` sets every weight to NaN.

    The linear drift's prior is an exact Gaussian draw; the physical one runs Langevin steps
    first, which costs seconds per call here (one test covers it)."""
    torch.manual_seed(0)
    recipe = MoleculeRecipe(
        MoleculeRecipeConfig(
            model=EGNNConfig(hidden=16, layers=2), process=ProcessConfig(drift=drift)
        )
    )
    model = recipe.build_model()
    if poison:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    return save_trained(path, recipe, model, HISTOGRAM, dataset="qm9")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return load_trained(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt"))


def same(a, b) -> bool:
    return all(
        torch.equal(x.z, y.z) and torch.equal(x.pos, y.pos) and x.name == y.name
        for x, y in zip(a, b, strict=True)
    )


def test_sizes_follow_the_histogram_and_chunks_are_sorted_and_fixed_up_front():
    config = GenerateConfig(n=4000, batch_size=1000, seed=3)
    chunks = plan(config, HISTOGRAM)
    assert [len(c.rows) for c in chunks] == [1000] * 4
    rows = torch.cat([c.rows for c in chunks])
    assert torch.equal(rows.sort().values, torch.arange(4000))  # every structure once
    counts = torch.cat([c.counts for c in chunks])
    assert torch.equal(counts, counts.sort().values)  # sorted: chunks hold similar sizes
    freq = Counter(counts.tolist())
    assert set(freq) == {5, 9}
    assert abs(freq[9] / 4000 - 0.25) < 0.03  # binomial sd 0.007
    again = plan(config, HISTOGRAM)
    assert all(torch.equal(a.rows, b.rows) for a, b in zip(chunks, again, strict=True))
    fixed = plan(GenerateConfig(n=5, batch_size=2, num_atoms=7), HISTOGRAM)
    assert [c.counts.tolist() for c in fixed] == [[7, 7], [7, 7], [7]]
    assert [c.rows.tolist() for c in fixed] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="histogram"):
        plan(GenerateConfig(n=2), {5: 0})


def test_a_num_atoms_range_draws_the_histogram_sizes_within_it():
    histogram = {3: 5, 5: 3, 7: 2, 9: 1}
    config = GenerateConfig(n=3000, num_atoms=(4, 8), seed=1)
    freq = Counter(torch.cat([c.counts for c in plan(config, histogram)]).tolist())
    assert set(freq) == {5, 7}
    assert abs(freq[7] / 3000 - 0.4) < 0.03  # 2 of 3 + 2; binomial sd 0.009
    single = plan(GenerateConfig(n=5, num_atoms=(9, 9)), histogram)
    assert torch.cat([c.counts for c in single]).tolist() == [9] * 5
    # A range holding every size is the plain histogram draw, seed for seed.
    whole = plan(GenerateConfig(n=50, num_atoms=(1, 100), seed=2), histogram)
    plain = plan(GenerateConfig(n=50, seed=2), histogram)
    assert all(torch.equal(a.counts, b.counts) for a, b in zip(whole, plain, strict=True))
    with pytest.raises(ValueError, match="no training structure has 10-12 atoms.*3-9"):
        plan(GenerateConfig(n=2, num_atoms=(10, 12)), histogram)
    with pytest.raises(ValidationError, match="low end is above"):
        GenerateConfig(num_atoms=(8, 4))
    # Typed in the config: a range survives the JSON a run directory keeps.
    assert GenerateConfig.model_validate_json(config.model_dump_json()) == config
    assert GenerateConfig.model_validate_json('{"num_atoms": 7}').num_atoms == 7


def test_chunk_generators_are_distinct_streams():
    draws = {(s, k): torch.rand(4, generator=chunk_generator(s, k)) for s in (0, 1) for k in (0, 1)}
    assert torch.equal(draws[0, 1], torch.rand(4, generator=chunk_generator(0, 1)))
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])


def test_generation_is_seeded_and_sizes_come_from_the_histogram(trained):
    config = GenerateConfig(n=7, batch_size=3, sampler=SamplerConfig(nfe=3), seed=1)
    one = generate(trained, config)
    again = generate(trained, config, progress=True)
    other = generate(trained, config.model_copy(update={"seed": 2}))
    assert one.nfe == 3 and len(one.structures) == 7 and one.degenerate == {}
    assert same(one.structures, again.structures)
    assert not same(one.structures, other.structures)
    assert {len(m.z) for m in one.structures} <= set(HISTOGRAM)
    # Structure i has the i-th drawn size, whatever chunk it was sampled in.
    drawn = {
        int(r): int(c)
        for ch in plan(config, HISTOGRAM)
        for r, c in zip(ch.rows, ch.counts, strict=True)
    }
    assert [len(m.z) for m in one.structures] == [drawn[i] for i in range(7)]
    assert [m.name for m in one.structures] == [f"sample_{i:06d}" for i in range(7)]
    assert all(bool(torch.isfinite(m.pos).all()) for m in one.structures)
    assert one.seconds_per_structure == pytest.approx(one.seconds / 7)


def test_chunk_schedule_does_not_change_the_result(trained):
    config = GenerateConfig(n=7, batch_size=3, sampler=SamplerConfig(kind="ode", nfe=3), seed=4)
    reference = generate(trained, config)
    chunks = plan(config, trained.num_atoms)
    # Last chunk first, as a busy worker pool might finish them.
    results = [sample_chunk(trained, c, config.sampler) for c in reversed(chunks)]
    assert same(collect(results, config.n).structures, reference.structures)
    with pytest.raises(ValueError, match="missing"):
        collect(results[1:], config.n)
    with pytest.raises(ValueError, match="twice"):
        collect([*results, results[0]], config.n)


def test_written_molecules_read_back_and_degenerate_ones_are_reported(tmp_path):
    good = make_molecule([6, 1, 1, 1, 1], torch.randn(5, 3), name="sample_000000")
    nan = make_molecule([6, 1], [[float("nan"), 0, 0], [1, 0, 0]], name="sample_000001")
    point = make_molecule([6, 6], torch.zeros(2, 3), name="sample_000002")
    assert degenerate_reason(good) is None
    summary = write_samples([good, nan, point], tmp_path, "molecule", {"nfe": 1})
    expected = {
        "sample_000001": "non-finite coordinates",
        "sample_000002": "all atoms at one point",
    }
    assert summary["degenerate"] == expected and summary["unwritten"] == {}
    assert summary["files"] == [str(tmp_path / "samples.sdf"), str(tmp_path / "samples.xyz")]
    on_disk = json.loads((tmp_path / "generation.json").read_text())
    assert on_disk["n"] == 3 and on_disk["nfe"] == 1 and on_disk["degenerate"] == expected
    for name in ("samples.sdf", "samples.xyz"):
        back = read_structures(tmp_path / name, min_distance=0.0)
        # The NaN molecule comes back as a reject with a reason, the other two as records.
        assert [len(m.z) for m in back.records] == [5, 2]
        assert len(back.rejects) == 1 and back.rejects[0].reason


def test_a_flat_crystal_is_left_out_of_extxyz_only_and_reported(tmp_path):
    cell = 4.0 * torch.eye(3)
    good = make_crystal([8, 22, 38], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]], cell, name="c0")
    flat = make_crystal([8, 22], [[0.1, 0, 0], [0.5, 0.5, 0.5]], torch.zeros(3, 3), name="c1")
    assert degenerate_reason(flat).startswith("flat cell")
    summary = write_samples([good, flat], tmp_path)
    assert summary["kind"] == "crystal"
    assert list(summary["unwritten"]) == ["samples.extxyz"]
    assert list(summary["unwritten"]["samples.extxyz"]) == ["c1"]
    cif = read_structures(tmp_path / "samples.cif", min_distance=0.0)
    assert [c.name for c in cif.records] == ["c0"] and len(cif.rejects) == 1
    assert [c.name for c in read_structures(tmp_path / "samples.extxyz").records] == ["c0"]


def test_a_nan_network_gives_degenerate_samples_that_are_written_and_reported(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "nan.pt", poison=True, drift="physical")
    trained = load_trained(checkpoint)
    config = GenerateConfig(n=3, batch_size=2, sampler=SamplerConfig(nfe=2))
    result = generate(trained, config)
    assert len(result.structures) == 3
    assert set(result.degenerate.values()) == {"non-finite coordinates"}
    summary = write_samples(result.structures, tmp_path / "out", "molecule")
    assert len(summary["degenerate"]) == 3
    back = read_structures(tmp_path / "out" / "samples.sdf", min_distance=0.0)
    assert back.records == [] and len(back.rejects) == 3


def test_cli_generate_writes_sdf_with_the_histogram_sizes(tmp_path, prefect_harness):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "gen"
    argv = ["generate", "--checkpoint", str(checkpoint), "--n", "5", "--out", str(out)]
    argv += ["--nfe", "2", "--batch-size", "2", "--seed", "3"]
    assert main(argv) == 0
    records = read_structures(out / "samples.sdf", min_distance=0.0).records
    assert len(records) == 5 and {len(m.z) for m in records} <= set(HISTOGRAM)
    summary = json.loads((out / "generation.json").read_text())
    assert summary["n"] == 5 and summary["nfe"] == 2 and summary["chunks"] == 3
    assert summary["checkpoint"] == str(checkpoint) and summary["sampler"]["kind"] == "auto"
    # The flow's chunks (Prefect tasks) give exactly what the library gives in one process.
    config = GenerateConfig(n=5, batch_size=2, sampler=SamplerConfig(nfe=2), seed=3)
    direct = generate(load_trained(checkpoint), config)
    assert [len(m.z) for m in records] == [len(m.z) for m in direct.structures]
    xyz = read_structures(out / "samples.xyz", min_distance=0.0).records
    pairs = zip(xyz, direct.structures, strict=True)
    assert all(np.allclose(a.pos, b.pos.numpy(), atol=1e-5) for a, b in pairs)
    first = (out / "samples.xyz").read_text()
    assert main(argv) == 0  # the re-run loads the persisted chunks: the same samples
    assert (out / "samples.xyz").read_text() == first
    # Two local Dask worker processes produce exactly the sequential samples.
    dask_out = tmp_path / "dask"
    assert main([*argv[:6], str(dask_out), *argv[7:], "--workers", "2"]) == 0
    assert (dask_out / "samples.xyz").read_text() == first


def test_cli_generate_draws_sizes_within_a_num_atoms_range(tmp_path, prefect_harness):
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "gen"
    argv = ["generate", "--checkpoint", str(checkpoint), "--n", "4", "--out", str(out)]
    assert main([*argv, "--nfe", "2", "--num-atoms", "6-9"]) == 0
    records = read_structures(out / "samples.sdf", min_distance=0.0).records
    assert [len(m.z) for m in records] == [9] * 4  # HISTOGRAM: 5 and 9 atoms
    assert json.loads((out / "generation.json").read_text())["num_atoms"] == [6, 9]
