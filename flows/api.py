"""The Python API: ``ldsm design``, ``generate``, ``screen`` and ``train`` as functions.

Each function takes the typed config that the command builds from its options
(:class:`DesignConfig`, :class:`GenerateConfig` with a checkpoint, :class:`ScreenConfig`,
:class:`TrainConfig`), or keyword arguments for one, and returns a :class:`Run`: the run folder
and the metrics the command prints or writes. As the command does, a call owns its run folder
while it runs (:mod:`flows.lock`: a second call on the same folder is refused at once) and reports
to the Prefect API that ``ldsm`` would choose (:func:`flows.api_server.choose_api`):
``PREFECT_API_URL``, else a server running at ``http://127.0.0.1:4200``, else a temporary server
started for the call and stopped after it.

    from flows.api import DesignConfig, design
    run = design(DesignConfig(out="runs/api", n=20))
    print(run.out, run.metrics["molecules"]["atom_stability"])

Errors are those of the command, raised: :class:`flows.console.UsageError` for bad options or
files, :class:`flows.lock.FolderInUse` for a folder another run holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flows import api_server, console, lock
from flows.design import DesignConfig, check_design
from flows.design import design as design_flow
from flows.generate import check_checkpoint, check_compositions, check_sampler, generate_flow
from flows.screen import ScreenConfig, input_error, screen_flow
from flows.train import train_flow
from pipeline.generate import GenerateConfig
from pipeline.train import TrainConfig

__all__ = [
    "DesignConfig",
    "GenerateConfig",
    "Run",
    "ScreenConfig",
    "TrainConfig",
    "design",
    "generate",
    "screen",
    "train",
]


@dataclass(frozen=True)
class Run:
    """What a call made: its run folder and its metrics (the command's JSON summary)."""

    out: Path
    metrics: dict


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API for the calls inside (its URL), chosen as ``ldsm`` chooses it; a
    temporary server started here is stopped on exit. Raises :class:`ServerError` when a
    temporary server does not start."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    console.quiet_environment()
    url, server, note = api_server.choose_api()
    if note:
        logging.getLogger("ldsm").info(note)
    try:
        url = url or server.wait()
        with temporary_settings({PREFECT_API_URL: url}), api_server.heartbeats_as_configured():
            yield url
    finally:
        if server is not None:
            # Logs and events still queued go out while the server lives: once it is gone,
            # Prefect retries them for over a minute with a page of errors each time.
            api_server.drain_prefect(timeout=10)
            server.stop()


@contextlib.contextmanager
def _owned(out: str | Path) -> Iterator[None]:
    """The run folder's lock first (a refusal comes at once), then the Prefect API."""
    with lock.owned(out), prefect_api():
        yield


def design(config: DesignConfig | None = None, **options) -> Run:
    """``ldsm design``: ingest -> train (``config.train``) or load ``config.checkpoint`` ->
    generate -> screen -> report, into ``config.out``. ``options`` build the config when none
    is given (``design(n=20, out="runs/x")``). Returns the folder and ``metrics.json``."""
    config = config or DesignConfig(**options)
    check_design(config, None)
    out = Path(time.strftime(config.out))
    with _owned(out):
        metrics = design_flow(config)
    return Run(out, metrics)


def generate(
    checkpoint: str | Path,
    out: str | Path,
    config: GenerateConfig | None = None,
    threads: int = 1,
    **options,
) -> Run:
    """``ldsm generate --checkpoint CHECKPOINT --out OUT``: samples ``config.n`` structures of
    the trained model into ``out`` (``samples.sdf`` / ``.cif``) with ``threads`` torch threads.
    Raises :class:`UsageError` for a file that is not a trained checkpoint, compositions for a
    model that does not predict structures (or none for one that does), or a sampler the
    model cannot use."""
    config = config or GenerateConfig(**options)
    trained = check_checkpoint(str(checkpoint))
    check_compositions(config.compositions is not None, trained, str(checkpoint))
    check_sampler(config.sampler.kind, trained, config.sampler.corrector)
    with _owned(out):
        metrics = generate_flow(str(checkpoint), config, str(out), threads)
    return Run(Path(out), metrics)


def screen(config: ScreenConfig | None = None, **options) -> Run:
    """``ldsm screen INPUT``: validity checks of the structures in ``config.input`` into
    ``config.out`` (``screen.csv``, ``metrics.json``, ``passing/``, ``report.md``). Raises
    :class:`UsageError` for an input that is missing or of an unknown kind."""
    config = config or ScreenConfig(**options)
    problem = input_error(config.input)
    if problem:
        raise console.UsageError(problem[1].removeprefix("ldsm screen: "))
    with _owned(config.out):
        metrics = screen_flow(config)
    return Run(Path(config.out), metrics)


def train(
    out: str | Path, config: TrainConfig | None = None, resume: bool = False, **options
) -> Run:
    """``ldsm train --out OUT``: fits the recipe of ``config`` into ``out`` (``resume``: go on
    from ``out/checkpoints/state.pt``). Returns the folder and the training summary."""
    config = config or TrainConfig(**options)
    with _owned(out):
        summary = train_flow(config, str(out), resume=resume)
    return Run(Path(out), summary)
