"""The training loop: exact resume, the NaN guard, kills, and DDP against one process."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from models.config import EGNNConfig
from pipeline.molecule_recipe import MoleculeRecipeConfig
from pipeline.recipes import load_trained
from pipeline.train import (
    TrainConfig,
    batch_indices,
    learning_rate,
    setup_run,
    start_from_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = MoleculeRecipeConfig(model=EGNNConfig(hidden=16, layers=2)).model_dump(mode="json")


def tiny_config(**overrides) -> TrainConfig:
    base = dict(
        recipe=TINY,
        limit=48,
        batch_size=8,
        steps=6,
        warmup=2,
        checkpoint_every=2,
        log_every=1,
        val_every=3,
        val_size=8,
        threads=1,
    )
    return TrainConfig(**{**base, **overrides})


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "state.pt", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, bs = 50, 8
    epoch = torch.cat([batch_indices(k, n, bs, seed=3) for k in range(n // bs)])
    assert len(set(epoch.tolist())) == len(epoch) == (n // bs) * bs
    assert torch.equal(batch_indices(9, n, bs, 3), batch_indices(9, n, bs, 3))
    assert not torch.equal(batch_indices(9, n, bs, 3), batch_indices(9, n, bs, 4))
    with pytest.raises(ValueError, match="fewer than batch_size"):
        batch_indices(0, 4, 8, 0)


def test_learning_rate_warms_up_linearly_then_stays():
    cfg = TrainConfig(lr=1e-3, warmup=4)
    assert [learning_rate(k, cfg) for k in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )


def test_learning_rate_cools_down_linearly_to_zero_at_the_last_step():
    cfg = TrainConfig(lr=1e-3, warmup=2, steps=10, decay_start=6)
    assert [learning_rate(k, cfg) for k in range(10)] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4]
    )
    with pytest.raises(ValueError, match="before the last step"):
        TrainConfig(steps=10, decay_start=10)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    full = train(tiny_config(), tmp_path / "full", progress=False)
    assert full.status == "finished" and full.step == 6
    train(tiny_config(steps=3), tmp_path / "cut", progress=False)
    with pytest.raises(FileExistsError):
        train(tiny_config(), tmp_path / "cut", progress=False)
    with pytest.raises(ValueError, match="differs"):
        train(tiny_config(lr=1e-2), tmp_path / "cut", resume=True, progress=False)
    resumed = train(tiny_config(), tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == 6
    assert_same_state(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    # The metrics log is cut back to the checkpoint and continued, not duplicated.
    steps = [line.split(",")[0] for line in (tmp_path / "cut" / "metrics.csv").read_text().split()]
    assert steps == ["step", "1", "2", "3", "4", "5", "6"]
    rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert rows[3].split(",")[-1] != ""  # a validation loss at step 3
    assert all(float(row.split(",")[6]) > 0 for row in rows[1:])  # CPU seconds
    trained = load_trained(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert trained.info["step"] == 6
    assert sum(trained.num_atoms.values()) == 48


def test_a_run_grown_from_a_checkpoint_starts_at_its_function_and_records_it(tmp_path):
    small = train(tiny_config(steps=4), tmp_path / "small", progress=False)
    wider = MoleculeRecipeConfig(model=EGNNConfig(hidden=24, layers=3)).model_dump(mode="json")
    grown = tiny_config(recipe=wider, init_from=str(small.checkpoint))
    run = setup_run(grown, tmp_path / "grown")
    before = load_trained(small.checkpoint)
    batch = Batch.from_data_list(run.data[:4].to_data_list())
    x, t = torch.cat([batch.pos, torch.randn(batch.num_nodes, 5)], 1), torch.rand(4)
    torch.testing.assert_close(run.model(x, t, batch.batch), before.model(x, t, batch.batch))
    torch.testing.assert_close(run.ema(x, t, batch.batch), before.model(x, t, batch.batch))
    train(grown, tmp_path / "grown", progress=False)
    origin = load_trained(tmp_path / "grown" / "checkpoints" / "last.pt").info["init_from"]
    assert origin == {
        "checkpoint": str(small.checkpoint),
        "step": 4,
        "cpu_seconds": round(small.cpu_seconds, 1),
    }
    # The run resumes (its provenance kept) like any other.
    train(
        tiny_config(recipe=wider, init_from=str(small.checkpoint), steps=8),
        tmp_path / "grown",
        resume=True,
        progress=False,
    )
    assert load_trained(tmp_path / "grown" / "checkpoints" / "last.pt").info["init_from"] == origin
    other = MoleculeRecipeConfig(model=EGNNConfig(hidden=24, layers=3), type_scale=0.5).model_dump(
        mode="json"
    )
    with pytest.raises(ValueError, match="differs from this run's in type_scale"):
        setup_run(tiny_config(recipe=other, init_from=str(small.checkpoint)), tmp_path / "other")
    # A fine-tune may train the same network on other times (the loss is not the network), and
    # its provenance counts the steps of every ancestor (8 of the grown run, 4 before it).
    tuned = MoleculeRecipeConfig(
        model=EGNNConfig(hidden=24, layers=3), loss={"time_power": 2.0}
    ).model_dump(mode="json")
    grown_last = tmp_path / "grown" / "checkpoints" / "last.pt"
    run = setup_run(tiny_config(recipe=tuned, init_from=str(grown_last)), tmp_path / "tuned")
    after = load_trained(grown_last)
    torch.testing.assert_close(run.model(x, t, batch.batch), after.model(x, t, batch.batch))
    origin = start_from_checkpoint(copy.deepcopy(after.model), after.recipe, str(grown_last))
    assert origin["step"] == 12
    # A warm start may train the same network on under another process and preconditioning.
    linear = MoleculeRecipeConfig(
        model=EGNNConfig(hidden=24, layers=3),
        process={"drift": "linear"},
        preconditioning="edm-stationary",
        loss={"kind": "exact-dsm"},
    ).model_dump(mode="json")
    run = setup_run(tiny_config(recipe=linear, init_from=str(grown_last)), tmp_path / "warm")
    assert run.recipe.config.process.drift == "linear" != after.recipe.config.process.drift
    torch.testing.assert_close(run.model(x, t, batch.batch), after.model(x, t, batch.batch))


def test_non_finite_steps_are_skipped_and_never_saved(tmp_path):
    """A training file with one absurd molecule (coordinates ~1e30): the steps whose batch holds it
    have a non-finite loss; they are skipped and counted, and the saved weights stay finite."""
    from pipeline.datasets import load_dataset
    from pipeline.io import write_structures

    molecules = load_dataset("qm9").split_set("train")[:20].to_data_list()
    molecules[5].pos = molecules[5].pos * 1e30
    path = write_structures(molecules, tmp_path / "train.xyz")
    cfg = tiny_config(dataset=str(path), limit=None, steps=4, batch_size=8, val_every=0)
    result = train(cfg, tmp_path / "run", progress=False)
    state = weights(tmp_path / "run")
    split = load_dataset(str(path)).split_set("train")
    (bad,) = [i for i, m in enumerate(split) if float(m.pos.abs().max()) > 1e20]
    expected = sum(bad in batch_indices(k, len(split), 8, 0).tolist() for k in range(4))
    assert expected >= 1 and result.skipped == expected
    assert all(torch.isfinite(v).all() for v in state["model"].values())


KILL_SCRIPT = """
import sys
from pipeline.train import TrainConfig, train
config = TrainConfig.model_validate_json(open(sys.argv[1]).read())
train(config, sys.argv[2], resume=len(sys.argv) > 3, progress=False)
"""


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) > step:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} in {metrics}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, sig):
    """SIGKILL loses only the steps since the last checkpoint; SIGTERM checkpoints first. Either way
    ``--resume`` ends with the weights of a run that was never interrupted."""
    cfg = tiny_config(steps=10, checkpoint_every=3)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "killed"
    cmd = [sys.executable, "-c", KILL_SCRIPT, str(cfg_file), str(run)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run / "metrics.csv", 5, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    saved = weights(run)["step"]
    if sig == signal.SIGTERM:
        assert proc.returncode == 0 and 5 <= saved < 10  # checkpointed at the signal
    else:
        assert proc.returncode == -signal.SIGKILL and saved in (3, 6, 9)
    subprocess.run([*cmd, "resume"], env=env, check=True, timeout=120)
    train(cfg, tmp_path / "full", progress=False)
    assert_same_state(weights(tmp_path / "full"), weights(run))


DDP_SCRIPT = """
import sys, torch
import torch.distributed as dist
from pipeline.recipes import recipe_from_config
from pipeline.train import TrainConfig, World, accumulate_gradient, batch_indices
from pipeline.datasets import load_dataset
from torch.nn.parallel import DistributedDataParallel

config = TrainConfig.model_validate_json(open(sys.argv[1]).read())
world = World.from_env()
recipe = recipe_from_config(config.recipe)
data = load_dataset(config.dataset).split_set("train")[: config.limit]
torch.manual_seed(config.seed)
model = recipe.build_model()
net = DistributedDataParallel(model) if world.size > 1 else model
index = batch_indices(0, len(data), config.batch_size, config.seed)
accumulate_gradient(recipe, net, data, index, 0, config, world)
if world.main:
    torch.save({k: p.grad for k, p in model.named_parameters()}, sys.argv[2])
"""


def test_two_ddp_processes_give_the_gradient_of_one_process_on_the_same_global_batch(tmp_path):
    """torchrun with two gloo processes (accumulate=1) against one process with accumulate=2:
    the same shards, so the same gradient up to float summation order."""
    script = tmp_path / "grad.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two.json"
    two.write_text(tiny_config(batch_size=8).model_dump_json())
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            str(script),
            str(two),
            str(tmp_path / "g2.pt"),
        ],
        env=env,
        check=True,
        timeout=240,
        capture_output=True,
    )
    one = tmp_path / "one.json"
    one.write_text(tiny_config(batch_size=8, accumulate=2).model_dump_json())
    subprocess.run(
        [sys.executable, str(script), str(one), str(tmp_path / "g1.pt")],
        env=env,
        check=True,
        timeout=240,
    )
    g2 = torch.load(tmp_path / "g2.pt", weights_only=True)
    g1 = torch.load(tmp_path / "g1.pt", weights_only=True)
    assert g1.keys() == g2.keys()
    norm = torch.sqrt(sum((g**2).sum() for g in g1.values()))
    assert float(norm) > 0
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-4, atol=1e-6 * float(norm))
    # A different split of the global batch is a different gradient: the test can fail.
    three = tmp_path / "three.json"
    three.write_text(tiny_config(batch_size=8, accumulate=1).model_dump_json())
    subprocess.run(
        [sys.executable, str(script), str(three), str(tmp_path / "g3.pt")],
        env=env,
        check=True,
        timeout=240,
    )
    g3 = torch.load(tmp_path / "g3.pt", weights_only=True)
    assert any(not torch.allclose(g3[k], g1[k], rtol=1e-3, atol=1e-6) for k in g1)


def test_crystals_train_on_a_named_split_from_the_command_line_options(tmp_path):
    """The shared Perov-5 copy has val and test only: ``--split val`` trains, a missing split says so."""
    import argparse

    from flows.cli_train import add_training_options
    from flows.train import config_from_args
    from pipeline.datasets import load_dataset, shared_data_dir

    perov = shared_data_dir() / "crystals" / "perov_5" / "val.csv"
    if not perov.exists():
        pytest.skip(f"reference data {perov} absent (set LDSM_SHARED_DATA)")
    parser = argparse.ArgumentParser()
    add_training_options(parser)
    options = "--dataset perov-5 --limit 16 --batch-size 8 --steps 2 --hidden 16 --layers 1"
    missing = config_from_args(parser.parse_args(options.split()))
    with pytest.raises(ValueError, match=r"no split 'train' here \(it has \['test', 'val'\]\)"):
        train(missing, tmp_path / "missing")
    args = parser.parse_args([*options.split(), "--split", "val", "--val-split", "test"])
    config = config_from_args(args)
    assert (config.split, config.val_split, config.recipe.kind) == ("val", "test", "crystal")
    result = train(config.model_copy(update={"threads": 1}), tmp_path / "run")
    assert result.step == 2
    trained = load_trained(result.checkpoint)
    assert type(trained.recipe).__name__ == "CrystalRecipe"
    assert trained.num_atoms == {5: 16}  # every Perov-5 cell has five atoms
    # Fitted to the 16 training cells: their elements only, the cubic prior at their density.
    elements = {int(z) for d in load_dataset("perov-5").split_set("val")[:16] for z in d.z}
    assert set(trained.recipe.config.elements) == elements
    assert trained.recipe.config.lattice.kind == "cubic"
    # A warm start of the same CSPNet under the periodic physical drift: its weights as they are.
    recipe = trained.recipe.config.model_dump(mode="json")
    recipe["process"]["drift"] = "physical"
    recipe["loss"].update(kind="local-dsm", mode="split")

    def warm_start(recipe: dict) -> TrainConfig:
        fields = config.model_dump(mode="json") | {"threads": 1, "recipe": recipe}
        return TrainConfig.model_validate(fields | {"init_from": str(result.checkpoint)})

    run = setup_run(warm_start(recipe), tmp_path / "warm")
    assert run.recipe.config.process.drift == "physical"
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[name], value)
    wider = copy.deepcopy(recipe)
    wider["model"]["hidden"] = 32
    with pytest.raises(ValueError, match="its network differs, and only EGNNs can be grown"):
        setup_run(warm_start(wider), tmp_path / "wider")
