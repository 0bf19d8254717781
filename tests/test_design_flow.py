"""The design flow end to end on a tiny model, its re-run reuse, and the shipped checkpoint."""

from __future__ import annotations

import json

import pytest

from flows.design import DEFAULT_CHECKPOINT, DesignConfig, console_summary, design
from models.config import EGNNConfig
from pipeline import report_numbers as N
from pipeline.molecule_recipe import MoleculeRecipeConfig
from pipeline.recipes import load_trained
from pipeline.samplers import SamplerConfig
from pipeline.train import TrainConfig

TINY = MoleculeRecipeConfig(model=EGNNConfig(hidden=16, layers=2)).model_dump(mode="json")


def test_shipped_checkpoint_loads_with_its_recipe_and_histogram():
    trained = load_trained(DEFAULT_CHECKPOINT)
    assert trained.info["dataset"] == "qm9"
    assert trained.recipe.config.kind == "molecule"
    assert max(trained.num_atoms) == 29 and sum(trained.num_atoms.values()) == 100_000
    assert DEFAULT_CHECKPOINT.stat().st_size < 5e6


def test_design_trains_generates_screens_reports_and_reuses_finished_work(
    tmp_path, prefect_harness
):
    run = tmp_path / "run"
    train = TrainConfig(
        recipe=TINY,
        limit=32,
        batch_size=8,
        steps=3,
        warmup=1,
        checkpoint_every=1,
        val_every=0,
        threads=1,
    )
    config = DesignConfig(
        out=str(run),
        train=train,
        n=6,
        sampler=SamplerConfig(nfe=4),
        reference_size=12,
        posebusters=False,
    )
    metrics = design(config)
    for name in [
        "config.json",
        "metrics.json",
        "report.md",
        "samples/samples.sdf",
        "screen/screen.csv",
        "train/metrics.csv",
        "train/checkpoints/last.pt",
    ]:
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["molecules"]["n"] == 6 == metrics["molecules"]["n"]
    assert set(saved["molecules"]) >= {"atom_stability", "molecule_stability", "validity"}
    report = (run / "report.md").read_text()
    assert "plots/loss.png" in report and "plots/atoms.png" in report
    assert (run / "plots" / "loss.png").stat().st_size > 0

    # A second run with the same config reuses the finished training and the sampled chunks.
    samples = (run / "samples" / "samples.xyz").read_text()
    state = (run / "train" / "checkpoints" / "state.pt").stat().st_mtime_ns
    again = design(config)
    assert again["molecules"] == metrics["molecules"]
    assert (run / "samples" / "samples.xyz").read_text() == samples
    assert (run / "train" / "checkpoints" / "state.pt").stat().st_mtime_ns == state


@pytest.mark.parametrize(
    "command", ["demo", "ingest", "train", "generate", "screen", "design", "serve"]
)
def test_cli_help_shows_defaults_and_an_example(command, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "(default:" in text
    example = text[text.index("example: ") :].splitlines()
    # One command per line, as written (argparse's default formatter would re-flow them).
    assert example[0].startswith(f"example: ldsm {command} ")
    assert all(line.startswith(("         ", "example: ")) for line in example)


def test_design_relaxes_molecules_with_xtb_and_reports_both_sets(tmp_path, prefect_harness):
    """``--relax xtb`` on the shipped model: relaxed molecules written with their xTB table,
    screened again, and the raw and relaxed metrics side by side in metrics.json and the report."""
    run = tmp_path / "run"
    config = DesignConfig(
        out=str(run),
        n=3,
        sampler=SamplerConfig(nfe=10),
        reference_size=12,
        posebusters=False,
        relax="xtb",
        relax_steps=15,
        rank_by="qed - 0.1*sa",
        filters=("qed >= 0",),
    )
    metrics = design(config)
    assert metrics["ranking"]["rank_by"] == "qed - 0.1*sa"
    passing = sum(r["passed"] for r in N.read_screen_rows(run / "screen" / "screen.csv"))
    assert metrics["ranking"]["filtered"] == {"qed >= 0": 0}  # every passing one has a QED
    relaxed = metrics["relaxed"]
    assert relaxed["xtb"]["n"] == 3 and relaxed["molecules"]["n"] == 3
    assert (run / "relaxed" / "samples.sdf").read_text().count("$$$$") == 3
    assert (run / "relaxed" / "relax.csv").read_text().startswith("name,relaxed,reason,xtb_energy")
    assert (run / "relaxed" / "screen" / "screen.csv").exists()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["relaxed"]["molecules"] == relaxed["molecules"]
    report = (run / "report.md").read_text()
    assert "## GFN2-xTB relaxation" in report and "| metric | as generated | relaxed |" in report
    assert "## Top candidates" in report and "`qed - 0.1*sa`" in report
    assert ("No molecule passed." in report) == (passing == 0)
    summary = console_summary(str(run), metrics)
    assert summary["relaxed"]["n"] == 3 and "atom_stability" in summary["relaxed"]
