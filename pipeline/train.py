"""The training loop: any recipe, any loss, one process or many (DistributedDataParallel).

``train(config, run_dir)`` fits ``recipe.build_model()`` to a data split with
``recipe.loss`` and writes into ``run_dir``::

    config.json              the TrainConfig
    metrics.csv              step, loss, grad_norm, lr, skipped, seconds (wall), cpu_seconds,
                             val_loss (every log_every; val_loss every val_every)
    tb/                      the same scalars for TensorBoard
    checkpoints/last.pt      EMA weights + recipe + atom-count histogram (recipes.save_trained)
    checkpoints/state.pt     everything --resume needs (weights, EMA, Adam, step, counters)

Determinism. Step ``k`` is a pure function of ``(seed, k)`` and the weights: its molecules are
slice ``k mod E`` of the permutation of epoch ``k div E`` (seeded by the epoch), its noise comes
from generators seeded by ``(seed, k, shard)``, and the learning rate is a function of ``k``. A run
resumed from a checkpoint at step ``k`` therefore ends with the same weights as an uninterrupted run.

Shards. The global batch is dealt into ``S = accumulate * world_size`` shards (shard ``j`` takes
molecules ``j, j + S, ...``); each shard's loss is summed and divided by the global batch size, and
the gradients of all shards are added (across processes by DDP's all-reduce). The randomness of a
step is fixed by its shards, so two processes with ``accumulate=1`` compute the same gradient as one
process with ``accumulate=2`` on the same global batch.

Safety. A step whose loss or gradient norm is not finite is skipped (counted in ``skipped``, never
saved). Checkpoints are written atomically every ``checkpoint_every`` steps, at the end, and when
SIGINT / SIGTERM arrives (the current step finishes first).
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from models.egnn import EGNN
from models.grow import grow_egnn
from pipeline.datasets import load_dataset
from pipeline.molecule_recipe import MoleculeRecipeConfig
from pipeline.recipes import (
    Recipe,
    RecipeConfig,
    load_trained,
    recipe_from_config,
    save_trained,
)
from pipeline.structure_set import StructureSet
from pipeline.train_io import MetricsLog, StopSignal, World, atomic_save, load_state

# The fields a resumed run may change; every other one must equal the run's own.
RESUMABLE = frozenset(
    {"steps", "decay_start", "max_minutes", "checkpoint_every", "log_every", "threads"}
)


class TrainConfig(BaseModel):
    """One training run. ``recipe`` is a recipe config, typed by its ``kind`` (molecule or crystal;
    a dict such as a checkpoint's recipe JSON is validated into it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: RecipeConfig = Field(default_factory=MoleculeRecipeConfig)
    dataset: str = "qm9"
    dataset_path: str | None = None
    split: str = "train"
    limit: PositiveInt | None = None  # first `limit` structures of the split only
    val_split: str | None = "val"  # validation loss on its first val_size structures
    val_size: PositiveInt = 128
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 64  # global: summed over processes and accumulation shards
    accumulate: PositiveInt = 1
    lr: PositiveFloat = 5e-4
    warmup: NonNegativeInt = 200  # linear learning-rate warm-up steps
    # Cool-down: from this step the learning rate falls linearly to 0 at `steps` (None: constant).
    decay_start: NonNegativeInt | None = None
    clip: PositiveFloat = 1.0  # max global gradient norm
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    seed: int = 0
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    val_every: NonNegativeInt = 500  # 0: no validation loss
    # Stop (and checkpoint) after this much CPU time of the training process: unlike wall time it
    # does not depend on what else runs on the machine, so runs with equal budgets compare fairly.
    max_minutes: PositiveFloat | None = None
    # torch threads per process (None: torch's default, one per core). 1 because on 2 idle cores
    # 2 threads were only 8 % faster per step and 2.75x slower beside one busy process
    # (BENCHMARKS threads).
    threads: PositiveInt | None = 1
    # Start from a trained checkpoint of the same recipe with a smaller or equal network, grown
    # function-preservingly into this recipe's network (models.grow); None: a fresh network.
    init_from: str | None = None

    @model_validator(mode="after")
    def _decay_before_end(self) -> TrainConfig:
        if self.decay_start is not None and self.decay_start >= self.steps:
            raise ValueError(
                f"decay_start={self.decay_start} must come before the last step (steps={self.steps})"
            )
        return self

    def validated_recipe(self) -> Recipe:
        return recipe_from_config(self.recipe)


@dataclass
class TrainResult:
    """How a run ended: ``status`` is ``finished``, ``interrupted`` (signal) or ``budget``."""

    status: Literal["finished", "interrupted", "budget"]
    step: int
    skipped: int
    seconds: float
    cpu_seconds: float
    checkpoint: Path
    loss: float


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (a fixed mixing, independent of Python's hash randomisation)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """The global batch of ``step``: ``(batch_size,)`` indices into a data set of ``n``."""
    if n < batch_size:
        raise ValueError(
            f"the training split has {n} structures, fewer than batch_size={batch_size}"
        )
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch)))
    return perm[k * batch_size : (k + 1) * batch_size]


def learning_rate(step: int, config: TrainConfig) -> float:
    """The learning rate of optimiser step ``step`` (0-based): a linear warm-up to ``config.lr``
    over ``config.warmup`` steps, then constant (EDM's choice), and with ``config.decay_start`` a
    linear cool-down to 0 at ``config.steps``: the warm-up-stable-decay schedule (Hu et al. 2024,
    MiniCPM; Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training beyond Fixed Training
    Durations"). A cool-down can branch off a constant-rate run at any step (``--resume`` with
    ``--decay-start``), so the long run continues while a branch is finished and shipped. Measured:
    no gain in sample quality over the constant rate with EMA 0.999, on QM9 and Perov-5 (BENCHMARKS
    quality-curve and quality-perov-5)."""
    lr = config.lr * min(1.0, (step + 1) / config.warmup) if config.warmup else config.lr
    if config.decay_start is not None and step >= config.decay_start:
        lr *= max(0.0, (config.steps - step) / (config.steps - config.decay_start))
    return lr


def accumulate_gradient(
    recipe,
    model: nn.Module,
    data: StructureSet,
    index: Tensor,
    step: int,
    config: TrainConfig,
    world: World,
) -> Tensor:
    """Add this process's share of the gradient of the global-batch loss to ``.grad``.

    ``index (batch_size,)`` is the global batch. Returns the summed per-graph losses of this
    process's shards (detached). With DDP the all-reduce averages over processes, so each shard's
    loss is scaled by ``world.size / batch_size``: the result is the gradient of the global mean.
    """
    shards = config.accumulate * world.size
    mine = range(world.rank, shards, world.size)
    total = torch.zeros((), dtype=torch.float64)
    for i, j in enumerate(mine):
        batch = Batch.from_data_list(data[index[j::shards]].to_data_list())
        generator = torch.Generator().manual_seed(_seed(config.seed, step, j))
        per_graph = recipe.loss(model, batch, generator)
        last = i == len(mine) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else None
        scaled = per_graph.sum() * world.size / len(index)
        if sync is None:
            scaled.backward()
        else:
            with sync:
                scaled.backward()
        total += per_graph.detach().sum().double()
    return total


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


def validation_loss(recipe, model: nn.Module, data: StructureSet, seed: int) -> float:
    """Mean per-graph loss on ``data`` with a fixed noise draw (comparable across steps)."""
    batch = Batch.from_data_list(data.to_data_list())
    with torch.enable_grad():  # ISM differentiates the network's output
        per_graph = recipe.loss(model, batch, torch.Generator().manual_seed(_seed(seed, -1)))
    return float(per_graph.mean())


@dataclass
class Run:
    """A training run set up by :func:`setup_run`: what every step reads, and its counters.

    ``model`` is the trained network (``net`` the same, wrapped in DDP when there are several
    processes), ``ema`` its exponential moving average (what is saved), ``data`` / ``val`` the
    training and validation structures, ``histogram`` the training split's atom counts.
    ``step``, ``skipped``, ``seconds`` (wall) and ``cpu_seconds`` advance with
    :func:`training_step`.
    """

    config: TrainConfig
    world: World
    recipe: Recipe
    data: StructureSet
    val: StructureSet | None
    histogram: dict[int, int]
    model: nn.Module
    net: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    state_path: Path
    last_path: Path
    step: int = 0
    skipped: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    origin: dict | None = None  # the grown checkpoint (init_from): its path, step and CPU seconds


@dataclass(frozen=True)
class StepResult:
    """One step's mean per-graph loss, gradient norm (before clipping) and learning rate."""

    loss: float
    grad_norm: float
    lr: float


def _check_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    """``resume`` needs the run's state and its own config; a fresh run an empty directory."""
    state_path, config_file = run_dir / "checkpoints" / "state.pt", run_dir / "config.json"
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"{state_path}: nothing to resume from")
        saved = TrainConfig.model_validate_json(config_file.read_text())
        if saved.model_dump(exclude=RESUMABLE) != config.model_dump(exclude=RESUMABLE):
            raise ValueError(f"{config_file}: --resume needs the run's own config (it differs)")
    elif state_path.exists():
        raise FileExistsError(
            f"{run_dir} holds a training run; pass resume=True or a new directory"
        )


def _training_data(config: TrainConfig, recipe: Recipe):
    """``(data, val, histogram)``: the training split (first ``limit``), the validation
    structures the recipe can encode (None without any) and the training atom-count histogram."""
    dataset = load_dataset(config.dataset, config.dataset_path)
    if config.split not in dataset.splits:
        raise ValueError(
            f"{config.dataset}: no split {config.split!r} here (it has {sorted(dataset.splits)});"
            " choose one with --split"
        )
    data = dataset.split_set(config.split)
    if config.limit:
        data = data[: config.limit]
    histogram = dict(Counter(data.num_atoms().tolist()))
    val = None
    if config.val_every and config.val_split in dataset.splits:
        val = dataset.split_set(config.val_split)[: config.val_size]
        # A recipe fitted to the training split knows its elements only: validate on the
        # structures it can encode.
        known = set(recipe.config.elements)
        keep = [i for i, d in enumerate(val) if set(d.z.tolist()) <= known]
        val = val[keep] if keep else None
    return data, val, histogram


def start_from_checkpoint(model: nn.Module, recipe: Recipe, path: str) -> dict:
    """Load the trained checkpoint ``path`` into ``model`` (in place): its weights where the
    networks' configs are equal (any network, e.g. a CSPNet), else its EGNN grown into ``model``'s
    (:func:`models.grow.grow_egnn`); returns its provenance ``{"checkpoint", "step",
    "cpu_seconds"}`` (steps and CPU seconds of all the training behind it, the checkpoint's own
    ``init_from`` included).

    The checkpoint's recipe must equal ``recipe`` except for the network's ``hidden`` and
    ``layers``, the ``loss`` (which times and weights train the network, not what it computes),
    the forward ``process``, the ``preconditioning`` and a crystal's ``lattice`` prior (a warm start:
    the same network trained on to the score of another process or parameterisation, e.g. a
    linear-process model continued under the physical drift with ``edm-stationary``, or on
    MatterGen's symmetric cells).
    ``ValueError`` names the field that differs (``CheckpointError`` an unreadable checkpoint)."""
    trained = load_trained(path)
    mine, theirs = recipe.config.model_dump(), trained.recipe.config.model_dump()
    differ = sorted(
        k
        for k in mine
        if k not in ("model", "loss", "process", "preconditioning", "lattice")
        and mine[k] != theirs.get(k)
    )
    if differ:
        raise ValueError(f"{path}: its recipe differs from this run's in {', '.join(differ)}")
    if mine["model"] == theirs["model"]:  # the same network: its weights as they are
        model.load_state_dict(trained.model.state_dict())
    elif not isinstance(model, EGNN) or not isinstance(trained.model, EGNN):
        raise ValueError(f"{path}: its network differs, and only EGNNs can be grown (models.grow)")
    else:
        try:
            grow_egnn(trained.model, model)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    info = trained.info
    # Steps and CPU seconds of all the training behind the checkpoint, its ancestors included.
    origin = info.get("init_from") or {}
    step = (info.get("step") or 0) + (origin.get("step") or 0)
    cpu = info.get("cpu_seconds", 0.0) + origin.get("cpu_seconds", 0.0)
    return {"checkpoint": str(path), "step": step, "cpu_seconds": round(cpu, 1)}


def setup_run(config: TrainConfig, run_dir: str | Path, resume: bool = False) -> Run:
    """Check ``run_dir``, load the data, build (or restore from ``checkpoints/state.pt``) the
    network, its EMA and Adam; write ``config.json``. Raises ``FileNotFoundError`` (resume with
    nothing to resume), ``FileExistsError`` (a run is there and ``resume`` is False),
    ``ValueError`` (a different config on resume, or no such split), ``RuntimeError`` (an
    unreadable state)."""
    world = World.from_env()
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    _check_run_dir(config, run_dir, resume)
    recipe = config.validated_recipe()
    data, val, histogram = _training_data(config, recipe)

    torch.manual_seed(config.seed)
    model = recipe.build_model()
    origin = None
    if config.init_from and not resume:
        origin = start_from_checkpoint(model, recipe, config.init_from)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    paths = (ckpt_dir / "state.pt", ckpt_dir / "last.pt")
    run = Run(config, world, recipe, data, val, histogram, model, model, ema, optimizer, *paths)
    run.origin = origin
    if resume:
        state = load_state(run.state_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        run.step, run.skipped = int(state["step"]), int(state["skipped"])
        run.seconds, run.cpu_seconds = float(state["seconds"]), float(state["cpu_seconds"])
        run.origin = state.get("origin")
    if world.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    run.net = DistributedDataParallel(model) if world.size > 1 else model
    return run


def training_step(run: Run) -> StepResult:
    """Step ``run.step``: set its learning rate, accumulate the gradient of its global batch, clip,
    and take the Adam and EMA steps, or count the step as skipped when the loss or the gradient
    norm is not finite. Advances ``run.step`` and the wall and CPU clocks."""
    config, started, started_cpu = run.config, time.perf_counter(), time.process_time()
    lr = learning_rate(run.step, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    index = batch_indices(run.step, len(run.data), config.batch_size, config.seed)
    loss_sum = accumulate_gradient(
        run.recipe, run.net, run.data, index, run.step, config, run.world
    )
    if run.world.size > 1:
        dist.all_reduce(loss_sum)
    loss_value = float(loss_sum) / len(index)
    grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), config.clip))
    if math.isfinite(loss_value) and math.isfinite(grad_norm):
        run.optimizer.step()
        update_ema(run.ema, run.model, min(config.ema_decay, (1 + run.step) / (10 + run.step)))
    else:
        run.skipped += 1
    run.step += 1
    run.seconds += time.perf_counter() - started
    run.cpu_seconds += time.process_time() - started_cpu
    return StepResult(loss_value, grad_norm, lr)


def save_run(run: Run) -> None:
    """Write ``state.pt`` (all that --resume needs) and ``last.pt`` (the EMA network with its
    recipe and histogram, :func:`pipeline.recipes.save_trained`), each atomically."""
    state = {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "step": run.step,
        "skipped": run.skipped,
        "seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "origin": run.origin,
    }
    atomic_save(state, run.state_path)
    save_trained(
        run.last_path,
        run.recipe,
        run.ema,
        run.histogram,
        step=run.step,
        dataset=run.config.dataset,
        seconds=round(run.seconds, 1),
        cpu_seconds=round(run.cpu_seconds, 1),
        **({"init_from": run.origin} if run.origin else {}),
    )


def _stop_flags(run: Run, stop: StopSignal) -> Tensor:
    """``[signal received, CPU budget spent]``, all-reduced: every process stops at one step."""
    config = run.config
    flags = torch.tensor(
        [
            stop.received is not None,
            bool(config.max_minutes) and run.cpu_seconds >= 60 * (config.max_minutes or 0),
        ],
        dtype=torch.int64,
    )
    if run.world.size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train per ``config`` into ``run_dir``; ``resume`` continues from ``checkpoints/state.pt``.

    :func:`setup_run`, then :func:`training_step` until ``config.steps`` (or a signal, or the CPU
    budget), logging every ``log_every`` and checkpointing (:func:`save_run`) every
    ``checkpoint_every`` steps and at the end. Errors: those of :func:`setup_run`.
    """
    run = setup_run(config, run_dir, resume)
    main = run.world.main
    log = MetricsLog(Path(run_dir), run.step) if main else None
    saved_at = run.step

    def checkpoint() -> None:
        nonlocal saved_at
        if main and saved_at != run.step:
            saved_at = run.step
            save_run(run)

    status, loss_value = "finished", math.nan
    # A CPU-time budget shows as the bar (in CPU seconds): the step count may never be reached.
    budget = 60.0 * config.max_minutes if config.max_minutes else None
    bar = tqdm(
        total=int(budget) if budget else config.steps,
        initial=int(min(run.cpu_seconds, budget)) if budget else run.step,
        unit="cpu-s" if budget else "it",
        disable=not (progress and main),
        desc=f"train ({config.max_minutes:g} CPU-min budget)" if budget else "train",
    )
    with StopSignal() as stop:
        while run.step < config.steps:
            result = training_step(run)
            loss_value, step = result.loss, run.step
            # Whole CPU seconds: a float count shows as 1961.6000000000006 / 86400.0.
            bar.update(int(min(run.cpu_seconds, budget)) - bar.n if budget else 1)
            bar.set_postfix(
                loss=f"{loss_value:.4f}", skipped=run.skipped, step=f"{step}/{config.steps}"
            )
            if log is not None and (step % config.log_every == 0 or step == config.steps):
                val_loss = ""
                if run.val is not None and (step % config.val_every == 0 or step == config.steps):
                    val_loss = validation_loss(run.recipe, run.ema, run.val, config.seed)
                log.write(
                    dict(
                        step=step,
                        loss=loss_value,
                        grad_norm=result.grad_norm,
                        lr=result.lr,
                        skipped=run.skipped,
                        seconds=round(run.seconds, 3),
                        cpu_seconds=round(run.cpu_seconds, 3),
                        val_loss=val_loss,
                    )
                )
            flags = _stop_flags(run, stop)
            if flags.any():
                status = "interrupted" if flags[0] else "budget"
                break
            if step % config.checkpoint_every == 0:
                checkpoint()
    checkpoint()
    bar.close()
    if log is not None:
        log.close()
    return TrainResult(
        status, run.step, run.skipped, run.seconds, run.cpu_seconds, run.last_path, loss_value
    )


__all__ = [
    "RESUMABLE",
    "Run",
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "World",
    "accumulate_gradient",
    "batch_indices",
    "learning_rate",
    "save_run",
    "setup_run",
    "train",
    "training_step",
]
