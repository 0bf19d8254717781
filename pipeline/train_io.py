"""Training-run plumbing: the processes of a run, its metrics log, stop signals, state files.

Used by :mod:`pipeline.train`; nothing here knows about recipes or losses.
"""

from __future__ import annotations

import csv
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

COLUMNS = ["step", "loss", "grad_norm", "lr", "skipped", "seconds", "cpu_seconds", "val_loss"]


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


def atomic_save(obj, path: Path) -> None:
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


class StopSignal:
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


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path}: cannot read the training state ({err})") from err


__all__ = ["COLUMNS", "MetricsLog", "StopSignal", "World", "atomic_save", "load_state"]
