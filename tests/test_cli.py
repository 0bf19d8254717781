"""The ``ldsm`` command line as users meet it: fast help, one-line refusals, contradictions
refused, a run that owns its folder, defaults that are the configs' own.

Bad options are run as real subprocesses (exit code, stderr line count); the cases that need a
model or a run folder call :func:`flows.cli.main` under the Prefect test harness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from ase.build import molecule
from ase.io import write

from flows import api_server, cli, cli_data, cli_options, cli_sample, cli_train
from models.config import CSPNetConfig, EGNNConfig

ROOT = Path(__file__).resolve().parents[1]


def ldsm(*argv: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _screen_env(prefect_home: Path) -> dict:
    """A command's environment: a temporary server on the session's PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PYTHONPATH": str(ROOT), "LDSM_HOME": str(prefect_home / "ldsm"),
            "PREFECT_HOME": str(prefect_home), "LDSM_PREFECT_SERVER": "temporary"}  # fmt: skip


@pytest.mark.parametrize(
    "argv, option, problem",
    [
        (["generate", "--checkpoint", "c.pt", "--out", "o", "--n", "0"], "--n", "must be >= 1"),
        (["generate", "--checkpoint", "c.pt", "--out", "o", "--n", "-5"], "--n", "must be >= 1"),
        (["design", "--nfe", "0"], "--nfe", "must be >= 1"),
        (
            ["generate", "--checkpoint", "c", "--out", "o", "--batch-size", "0"],
            "--batch-size",
            ">= 1",
        ),
        (["train", "--out", "r", "--steps", "0"], "--steps", "must be >= 1"),
        (["train", "--out", "r", "--lr", "-1"], "--lr", "must be > 0.0"),
        (["screen", "x", "--out", "o", "--workers", "-1"], "--workers", "must be >= 0"),
        (["generate", "--out", "o"], "--checkpoint", "required"),
        (["design", "--hid", "48"], "--hid", "unrecognized"),  # no abbreviations
        (["generate", "--out", "o", "--num-atoms", "18-12"], "--num-atoms", "1 <= LOW <= HIGH"),
        (["design", "--num-atoms", "12-x"], "--num-atoms", "a range LOW-HIGH such as 12-18"),
        (["design", "--num-atoms", "0"], "--num-atoms", "must be >= 1"),
        (
            ["screen", "x", "--out", "o", "--rank-by", "__import__('os')"],
            "--rank-by",
            "not allowed",
        ),
        (["screen", "x", "--out", "o", "--rank-by", "-foo"], "--rank-by", "unknown column 'foo'"),
        (["screen", "x", "--out", "o", "--filter", "qed"], "--filter", "not one comparison"),
        (["screen", "x", "--out", "o", "--rank-by", "xtb_gap"], "--xtb", "error: xtb_gap is"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(argv, option, problem):
    done = ldsm(*argv)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and problem in lines[0], done.stderr
    assert lines[0].startswith(f"ldsm {argv[0]}: error:")


def test_help_and_version_import_nothing_heavy():
    code = (
        "import sys, contextlib, io\n"
        "from flows import cli\n"
        "for argv in (['--help'], ['screen', '--help'], ['--version']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.main(argv)\n"
        "print(sorted(m for m in ('torch', 'prefect', 'rdkit', 'pymatgen') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
    assert ldsm("--version").stdout.startswith("ldsm ")


def test_every_option_shows_its_default_and_serve_has_a_description(capsys):
    parser = cli.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "%(default)" not in action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "Register the deployment design/NAME" in text and "(default: 0 3 * * *)" in text
    with pytest.raises(SystemExit):
        cli.main(["screen", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--out OUT output folder (required)" in text


def test_prefect_heartbeats_are_off_unless_their_frequency_is_set():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY as FREQUENCY
    from prefect.settings import get_current_settings, temporary_settings

    with api_server.heartbeats_as_configured():
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings({FREQUENCY: 60}), api_server.heartbeats_as_configured():
        assert get_current_settings().flows.heartbeat_frequency == 60


def test_rdkit_stays_silent_when_a_library_turns_its_logs_back_on():
    """PoseBusters' sanity check calls RDLogger.EnableLog("rdApp.*") after each molecule."""
    code = (
        "from rdkit import Chem, RDLogger\n"
        "from flows.console import silence_rdkit\n"
        "Chem.MolFromSmiles('C(C)(C)(C)(C)C')\n"  # pentavalent: RDKit logs it
        "silence_rdkit()\n"
        "RDLogger.EnableLog('rdApp.*')\n"
        "assert Chem.MolFromSmiles('C(C)(C)(C)(C)C') is None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Explicit valence") == 1, done.stderr  # before silence_rdkit only


def test_training_options_build_the_loss_config():
    """--preconditioning edm gives the output weight to exact DSM only (local-DSM keeps the VP
    weight: its target's noise does not vanish at t -> 1); --sim-mode / --sim-budget reach it."""
    from flows.train import recipe_from_args

    parser = cli.build_parser()

    def loss(*options):
        return recipe_from_args(parser.parse_args(["train", "--out", "x", *options]))["loss"]

    assert loss("--preconditioning", "edm", "--loss", "exact-dsm")["weight"] == "output"
    assert loss("--preconditioning", "edm", "--loss", "local-dsm")["weight"] == "vp"
    split = loss("--mode", "split", "--sim-mode", "split", "--sim-budget", "1")
    assert (split["mode"], split["sim_mode"], split["sim_budget"]) == ("split", "split", 1.0)


def test_crystal_training_options_build_the_cspnet_config():
    """A crystal recipe from the command line: CSPNet of --hidden x --layers with the radial edge
    features on by default (32, the measured choice) and off with --distance-features 0; the
    config's own default stays 0, so checkpoints written before the field existed load as they
    were trained; --csp gives the types, --type-weight weighs them."""
    from flows.train import recipe_from_args

    parser = cli.build_parser()

    def recipe(*options):
        args = ["train", "--out", "x", "--dataset", "perov-5", "--split", "val", *options]
        return recipe_from_args(parser.parse_args(args))

    default = recipe("--hidden", "32", "--layers", "2")
    assert default["model"]["distance_features"] == 32 and CSPNetConfig().distance_features == 0
    assert (default["model"]["hidden"], default["model"]["layers"]) == (32, 2)
    assert default["types"] == "diffuse" and default["part_weights"]["types"] == 20.0
    plain = recipe("--distance-features", "0", "--csp", "--type-weight", "5")
    assert plain["model"]["distance_features"] == 0 and plain["types"] == "given"
    assert plain["part_weights"]["types"] == 5.0
    assert default["lattice"]["symmetric"] is True
    assert recipe("--lattice", "as-read")["lattice"]["symmetric"] is False


def test_parser_defaults_are_the_configs_defaults():
    from flows.design import DesignConfig, config_from_args
    from flows.screen import ScreenConfig
    from flows.train import config_from_args as train_config
    from pipeline import crystal_checks, datasets, samplers, transitions
    from pipeline.generate import GenerateConfig
    from pipeline.losses import LossConfig
    from pipeline.molecule_recipe import MoleculeRecipeConfig, ProcessConfig
    from pipeline.samplers import SamplerConfig
    from pipeline.train import TrainConfig

    parser = cli.build_parser()
    args = parser.parse_args(["design"])
    assert config_from_args(args) == DesignConfig()
    train = train_config(parser.parse_args(["train", "--out", "x"]))
    recipe = MoleculeRecipeConfig(model=EGNNConfig(hidden=64, layers=4), loss=LossConfig())
    assert train == TrainConfig(recipe=recipe.model_dump(mode="json"))
    assert ProcessConfig().drift == cli_train.TRAIN["drift"]
    generate = parser.parse_args(["generate", "--checkpoint", "c", "--out", "o"])
    assert (
        GenerateConfig(
            n=generate.n or cli_sample.GENERATE["n"],
            sampler=SamplerConfig(
                kind=generate.sampler,
                nfe=generate.nfe,
                grid_power=generate.grid_power,
                corrector=generate.corrector,
                noise_scale=generate.noise_scale,
            ),
            batch_size=generate.batch_size,
            seed=generate.seed,
        )
        == GenerateConfig()
    )
    screen = parser.parse_args(["screen", "x", "--out", "o"])
    screen_config = ScreenConfig(input="x", out="o")
    assert screen.chunk_size == screen_config.chunk_size
    assert (screen.rank_by, screen.filter or []) == (screen_config.rank_by, screen_config.filters)
    ranked = parser.parse_args(
        cli_options.join_expression_values(["screen", "x", "--out", "o", "--rank-by", "-xtb_gap"])
    )
    assert ranked.rank_by == "-xtb_gap"  # a value starting with a minus is the option's value
    assert screen.posebusters_conformers == screen_config.posebusters_conformers
    assert args.posebusters_conformers == DesignConfig().posebusters_conformers
    assert set(cli_data.COV_CUTOFF_NAMES) == set(crystal_checks.COV_CUTOFFS)
    assert cli_train.MODES == transitions.MODES
    assert set(cli_sample.SAMPLERS) == set(
        typing.get_args(SamplerConfig.model_fields["kind"].annotation)
    )
    assert cli_data._card_names() == sorted(datasets.load_cards())
    assert cli_sample.GENERATE["noise_scale"] == samplers.DESIGN_NOISE_SCALE


# ---- files given as options -------------------------------------------------------------


def test_a_missing_or_foreign_checkpoint_is_one_line(tmp_path, prefect_home):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    for path, problem in ((tmp_path / "nope.pt", "no such file"), (text, "not a torch file")):
        out = str(tmp_path / "o")
        done = ldsm(
            "generate", "--checkpoint", str(path), "--out", out, env=_screen_env(prefect_home)
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert str(path) in line and problem in line and ".json" not in line


def _molecule_checkpoint(path: Path, hidden: int = 16) -> Path:
    from pipeline.molecule_recipe import MoleculeRecipe, MoleculeRecipeConfig
    from pipeline.recipes import save_trained

    recipe = MoleculeRecipe(MoleculeRecipeConfig(model=EGNNConfig(hidden=hidden, layers=1)))
    return save_trained(path, recipe, recipe.build_model(), {3: 1}, dataset="qm9")


def _crystal_checkpoint(path: Path) -> Path:
    from pipeline.crystal_recipe import CrystalRecipe, CrystalRecipeConfig
    from pipeline.recipes import save_trained

    config = CrystalRecipeConfig(model=CSPNetConfig(hidden=16, layers=1))
    recipe = CrystalRecipe(config)
    return save_trained(path, recipe, recipe.build_model(), {5: 2}, dataset="perov-5")


def test_ancestral_sampler_on_a_nonlinear_drift_model_is_one_line(tmp_path, prefect_home):
    model = _molecule_checkpoint(tmp_path / "physical.pt")  # the default recipe: physical drift
    done = ldsm(
        "generate", "--checkpoint", str(model), "--sampler", "ancestral", "--out",
        str(tmp_path / "o"), env=_screen_env(prefect_home),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--sampler ancestral" in line and "physical" in line


def test_a_corrector_for_a_molecule_model_is_refused_in_one_line(tmp_path):
    from flows.generate import check_sampler
    from pipeline.recipes import load_trained

    trained = load_trained(_molecule_checkpoint(tmp_path / "m.pt"))
    check_sampler("sde", trained, 0.0)  # 0: off, accepted
    with pytest.raises(cli_usage_error(), match="only crystal models have a Langevin corrector"):
        check_sampler("sde", trained, 0.4)


def test_compositions_go_with_structure_prediction_models_only(tmp_path, prefect_home):
    from flows.generate import check_compositions
    from pipeline.recipes import load_trained

    weights = ROOT / "models" / "weights"
    csp = load_trained(weights / "perov-5_csp.pt")
    check_compositions(True, csp, "perov-5_csp.pt")
    with pytest.raises(cli_usage_error(), match="give the compositions to predict"):
        check_compositions(False, csp, "perov-5_csp.pt")
    with pytest.raises(cli_usage_error(), match="is a de novo crystal model"):
        check_compositions(True, load_trained(weights / "perov-5_cspnet.pt"), "perov-5_cspnet.pt")
    argv = ["generate", "--checkpoint", str(weights / "qm9_egnn.pt"), "--composition", "C6H6"]
    done = ldsm(*argv, "--n", "2", "--out", str(tmp_path / "g"), env=_screen_env(prefect_home))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("ldsm generate: error: --composition(s): ") and "molecule model" in line


def test_generate_takes_the_shipped_model_of_any_data_set():
    from flows.generate import checkpoint_of

    parser = cli.build_parser()
    weights = ROOT / "models" / "weights"
    args = parser.parse_args(["generate", "--dataset", "qm9", "--out", "o"])
    assert Path(checkpoint_of(args, False)) == weights / "qm9_egnn.pt"
    args = parser.parse_args(["generate", "--dataset", "perov-5", "--out", "o"])
    assert Path(checkpoint_of(args, True)) == weights / "perov-5_csp.pt"


def test_checkpoint_problems_name_the_file(tmp_path, capsys, prefect_harness):
    good = _molecule_checkpoint(tmp_path / "m.pt")
    empty = tmp_path / "empty.pt"
    empty.touch()
    lonely = tmp_path / "lonely.pt"
    lonely.write_bytes(good.read_bytes())  # weights without their .json
    cases = [(empty, "empty file"), (lonely, "lonely.json is missing"), (tmp_path, "a folder")]
    for path, problem in cases:
        assert cli.main(["generate", "--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and problem in err[0], err


def test_a_num_atoms_range_without_training_sizes_is_one_line(tmp_path, capsys, prefect_harness):
    model = _molecule_checkpoint(tmp_path / "m.pt")  # trained sizes: {3: 1}
    for command in ("generate", "design"):
        out = tmp_path / command
        argv = [command, "--checkpoint", str(model), "--num-atoms", "12-18", "--out", str(out)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--num-atoms 12-18: no training structure has 12-18" in err[0]
        assert "training sizes are 3-3" in err[0] and not (out / "config.json").exists()


def test_design_refuses_a_model_of_another_data_set(tmp_path, capsys, prefect_harness):
    crystal = _crystal_checkpoint(tmp_path / "perov.pt")
    argv = ["design", "--checkpoint", str(crystal), "--dataset", "qm9", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--dataset qm9 contradicts" in err and "crystal model trained on perov-5" in err
    assert not (tmp_path / "config.json").exists()  # refused before anything was written


def test_design_refuses_a_relaxation_for_the_other_kind(tmp_path, capsys, prefect_harness):
    crystal = _crystal_checkpoint(tmp_path / "perov.pt")
    cases = [
        (["--relax", "chgnet"], "--relax chgnet relaxes crystals", "is a molecule model"),
        (["--relax", "xtb", "--checkpoint", str(crystal)], "relaxes molecules", "crystal model"),
        (["--relax", "xtb", "--train", "--dataset", "perov-5"], "relaxes molecules", "perov-5"),
    ]
    for options, first, second in cases:
        assert cli.main(["design", *options, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and first in err[0] and second in err[0], err
    assert not (tmp_path / "o").exists()


def test_design_for_a_crystal_set_needs_a_crystal_model(tmp_path, capsys, prefect_harness):
    from flows import design

    shipped = sorted(design.WEIGHTS.glob("perov-5_cspnet.pt"))
    if shipped:  # a shipped model is picked up: the check then passes
        args = cli.build_parser().parse_args(["design", "--dataset", "perov-5"])
        args.explicit = {"dataset"}
        assert design.config_from_args(args).checkpoint == str(shipped[0])
        return
    assert cli.main(["design", "--dataset", "perov-5", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "no de novo model ships for it yet" in err and "--checkpoint" in err
    # Training options without --train would be ignored: refused instead.
    assert cli.main(["design", "--hidden", "48", "--out", str(tmp_path / "d")]) == 2
    assert "--hidden: training options, only used with --train" in capsys.readouterr().err


def test_design_picks_up_a_shipped_model_by_data_set_name(tmp_path, monkeypatch):
    """De novo: the one ``<dataset>_<network>.pt`` that is not the structure-prediction model."""
    from flows import generate

    monkeypatch.setattr(generate, "WEIGHTS", tmp_path)
    csp = _crystal_checkpoint(tmp_path / "perov-5_csp.pt")
    with pytest.raises(cli_usage_error(), match="no de novo model ships for it yet"):
        generate.shipped_checkpoint("perov-5")
    model = _crystal_checkpoint(tmp_path / "perov-5_cspnet.pt")
    assert generate.shipped_checkpoint("perov-5") == model
    assert generate.shipped_checkpoint("perov-5", csp=True) == csp
    _crystal_checkpoint(tmp_path / "perov-5_other.pt")
    with pytest.raises(cli_usage_error(), match="several models ship"):
        generate.shipped_checkpoint("perov-5")


def cli_usage_error():
    from flows.console import UsageError

    return UsageError


# ---- training runs: --resume and --steps ------------------------------------------------


@pytest.fixture
def width_32_run(tmp_path, monkeypatch):
    """A one-step training run of width 32 on three small molecules."""
    from pipeline.train import train

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "mols"
    folder.mkdir()
    for k, name in enumerate(["CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCN", "C2H2", "CO2"] * 2):
        write(folder / f"{k}_{name}.xyz", molecule(name))
    args = cli.build_parser().parse_args(
        ["train", "--out", "x", "--dataset", str(folder), "--hidden", "32", "--layers", "1"]
        + ["--steps", "1", "--batch-size", "2", "--val-every", "0"]
    )
    from flows.train import config_from_args

    run = tmp_path / "run"
    config = config_from_args(args).model_copy(update={"threads": 1, "checkpoint_every": 7})
    train(config, run, progress=False)
    return run, folder


def test_resume_refuses_options_that_contradict_the_run(width_32_run, capsys, prefect_harness):
    run, folder = width_32_run
    argv = ["train", "--out", str(run), "--resume"]
    assert cli.main([*argv, "--hidden", "48"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--hidden 48: the run has recipe.model.hidden = 32" in line
    # The run's own values, and the options --resume may change, pass the check.
    from flows import train

    args = cli.build_parser().parse_args([*argv, "--hidden", "32", "--steps", "3"])
    args.explicit = {"out", "resume", "hidden", "steps"}
    config = train._config(args)
    assert config.steps == 3 and config.recipe.model.hidden == 32
    # A resumable option left out keeps the run's value, not the parser's default.
    saved = json.loads((run / "config.json").read_text())["checkpoint_every"]
    assert args.checkpoint_every != saved and config.checkpoint_every == saved
    # A cool-down may branch off on resume, but not start after the last step.
    args = cli.build_parser().parse_args([*argv, "--steps", "9", "--decay-start", "4"])
    args.explicit = {"out", "resume", "steps", "decay_start"}
    assert train._config(args).decay_start == 4
    assert cli.main([*argv, "--steps", "9", "--decay-start", "9"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--resume:" in line and "decay_start=9 must come before the last step" in line
    # Without --resume, a folder that holds a run is refused, not overwritten.
    assert cli.main(["train", "--out", str(run), "--dataset", str(folder)]) == 2
    assert "holds a training run: add --resume" in capsys.readouterr().err


def test_empty_or_corrupt_training_state_is_one_line(width_32_run, capsys, prefect_harness):
    run, _ = width_32_run
    state = run / "checkpoints" / "state.pt"
    for content, problem in ((b"", "empty file"), (b"PK\x03\x04garbage", "not a readable")):
        state.write_bytes(content)
        assert cli.main(["train", "--out", str(run), "--resume"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert str(state) in line and problem in line


def test_a_cpu_time_budget_is_what_the_progress_bar_shows(width_32_run, capfd):
    from pipeline.train import TrainConfig, train

    run, _ = width_32_run
    config = TrainConfig.model_validate_json((run / "config.json").read_text())
    budget = config.model_copy(update={"steps": 100000, "max_minutes": 0.002, "threads": 1})
    capfd.readouterr()
    result = train(budget, run.parent / "budget", progress=True)
    err = capfd.readouterr().err
    assert result.status == "budget" and result.step < 100000
    assert "train (0.002 CPU-min budget)" in err and "cpu-s" in err and "/100000" in err
