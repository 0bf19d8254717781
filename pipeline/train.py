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
import csv
import math
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from pipeline.datasets import load_dataset
from pipeline.recipes import MoleculeRecipeConfig, recipe_from_config, save_trained
from pipeline.structures import StructureSet

COLUMNS = ["step", "loss", "grad_norm", "lr", "skipped", "seconds", "cpu_seconds", "val_loss"]


class TrainConfig(BaseModel):
    """One training run. ``recipe`` is a recipe config (``kind`` molecule or crystal)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: dict = Field(default_factory=lambda: MoleculeRecipeConfig().model_dump(mode="json"))
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
    clip: PositiveFloat = 1.0  # max global gradient norm
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    seed: int = 0
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    val_every: NonNegativeInt = 500  # 0: no validation loss
    # Stop (and checkpoint) after this much CPU time of the training process: unlike wall time it
    # does not depend on what else runs on the machine, so runs with equal budgets compare fairly.
    max_minutes: PositiveFloat | None = None
    threads: PositiveInt | None = None  # torch threads per process

    def validated_recipe(self):
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


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's environment variables)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(int(os.environ.get("RANK", "0")), size)

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    """Linear warm-up to ``config.lr`` over ``config.warmup`` steps, then constant (EDM's choice)."""
    return config.lr * min(1.0, (step + 1) / config.warmup) if config.warmup else config.lr


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


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class MetricsLog:
    """metrics.csv plus TensorBoard; on resume both are cut back to the checkpoint's step."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.csv"
        rows = []
        if self.path.exists() and start_step > 0:
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.tb = SummaryWriter(run_dir / "tb", purge_step=start_step + 1 if start_step else None)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)
        for key, value in row.items():
            if key != "step" and value != "":
                self.tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.tb.close()


class _StopSignal:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. a Prefect worker thread): no handlers
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path}: cannot read the training state ({err})") from err


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train per ``config`` into ``run_dir``; ``resume`` continues from ``checkpoints/state.pt``."""
    world = World.from_env()
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    state_path, last_path = ckpt_dir / "state.pt", ckpt_dir / "last.pt"
    config_file = run_dir / "config.json"
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"{state_path}: nothing to resume from")
        saved = TrainConfig.model_validate_json(config_file.read_text())
        fixed = {"steps", "max_minutes", "checkpoint_every", "log_every", "threads"}
        if saved.model_dump(exclude=fixed) != config.model_dump(exclude=fixed):
            raise ValueError(f"{config_file}: --resume needs the run's own config (it differs)")
    elif state_path.exists():
        raise FileExistsError(
            f"{run_dir} holds a training run; pass resume=True or a new directory"
        )

    recipe = config.validated_recipe()
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

    torch.manual_seed(config.seed)
    model = recipe.build_model()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, skipped, seconds, cpu = 0, 0, 0.0, 0.0
    if resume:
        state = _load_state(state_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, skipped = int(state["step"]), int(state["skipped"])
        seconds, cpu = float(state["seconds"]), float(state["cpu_seconds"])
    if world.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(config.model_dump_json(indent=2) + "\n")
    net = DistributedDataParallel(model) if world.size > 1 else model
    log = MetricsLog(run_dir, step) if world.main else None

    saved_at = step

    def checkpoint() -> None:
        nonlocal saved_at
        if not world.main or saved_at == step:
            return
        saved_at = step
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "skipped": skipped,
            "seconds": seconds,
            "cpu_seconds": cpu,
        }
        _atomic_save(state, state_path)
        save_trained(
            last_path,
            recipe,
            ema,
            histogram,
            step=step,
            dataset=config.dataset,
            seconds=round(seconds, 1),
            cpu_seconds=round(cpu, 1),
        )

    status, loss_value = "finished", math.nan
    # A CPU-time budget shows as the bar (in CPU seconds): the step count may never be reached.
    budget = 60.0 * config.max_minutes if config.max_minutes else None
    bar = tqdm(
        total=budget or config.steps,
        initial=round(min(cpu, budget), 1) if budget else step,
        unit="cpu-s" if budget else "it",
        disable=not (progress and world.main),
        desc=f"train ({config.max_minutes:g} CPU-min budget)" if budget else "train",
    )
    with _StopSignal() as stop:
        while step < config.steps:
            started, started_cpu = time.perf_counter(), time.process_time()
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            index = batch_indices(step, len(data), config.batch_size, config.seed)
            loss_sum = accumulate_gradient(recipe, net, data, index, step, config, world)
            if world.size > 1:
                dist.all_reduce(loss_sum)
            loss_value = float(loss_sum) / len(index)
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip))
            if math.isfinite(loss_value) and math.isfinite(grad_norm):
                optimizer.step()
                update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            else:
                skipped += 1
            step += 1
            seconds += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            bar.update(round(min(cpu, budget) - bar.n, 1) if budget else 1)
            bar.set_postfix(
                loss=f"{loss_value:.4f}", skipped=skipped, step=f"{step}/{config.steps}"
            )
            if log is not None and (step % config.log_every == 0 or step == config.steps):
                val_loss = ""
                if val is not None and (step % config.val_every == 0 or step == config.steps):
                    val_loss = validation_loss(recipe, ema, val, config.seed)
                log.write(
                    dict(
                        step=step,
                        loss=loss_value,
                        grad_norm=grad_norm,
                        lr=lr,
                        skipped=skipped,
                        seconds=round(seconds, 3),
                        cpu_seconds=round(cpu, 3),
                        val_loss=val_loss,
                    )
                )
            # Every process must stop at the same step, so the decisions are all-reduced.
            flags = torch.tensor(
                [
                    stop.received is not None,
                    bool(config.max_minutes) and cpu >= 60 * (config.max_minutes or 0),
                ],
                dtype=torch.int64,
            )
            if world.size > 1:
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            if flags.any():
                status = "interrupted" if flags[0] else "budget"
                break
            if step % config.checkpoint_every == 0:
                checkpoint()
    checkpoint()
    bar.close()
    if log is not None:
        log.close()
    return TrainResult(status, step, skipped, seconds, cpu, last_path, loss_value)


__all__ = [
    "TrainConfig",
    "TrainResult",
    "World",
    "accumulate_gradient",
    "batch_indices",
    "learning_rate",
    "train",
]
