"""Task runners of the fan-out flows (screen, generate): threads on one machine, or Dask.

``--workers 0`` (the default) runs mapped tasks on a thread pool inside the flow's process;
``--workers N`` starts a local Dask cluster of N single-threaded worker processes for the run
(RDKit, pymatgen and torch hold the GIL for much of their work, so processes, not threads, are
what scale); ``--dask-address tcp://host:8786`` sends the tasks to an existing Dask scheduler
(``dask scheduler`` on one machine, ``dask worker tcp://host:8786`` on each of the others: every
worker needs this repository importable and the same environment).

A flow's task runner is fixed when it is decorated, so a runner chosen at run time is applied with
:func:`with_runner` (``flow.with_options(task_runner=...)``), which returns a copy of the flow.
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

DEFAULT_THREADS = 2


def task_runner(
    workers: int = 0, address: str | None = None, threads: int = DEFAULT_THREADS
) -> TaskRunner:
    """The task runner for ``workers`` local Dask processes, a Dask scheduler at ``address``, or
    (``workers == 0`` and no address) a pool of ``threads`` threads."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if address is not None:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    if workers == 0:
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            # A free port on the loopback interface ("0.0.0.0" would expose the dashboard, which
            # has no authentication, to the network): concurrent runs would clash on 8787.
            "dashboard_address": "127.0.0.1:0",
            "host": "127.0.0.1",
        }
    )


def with_runner(flow, workers: int = 0, address: str | None = None):
    """A copy of ``flow`` that runs its tasks on :func:`task_runner` ``(workers, address)``."""
    return flow.with_options(task_runner=task_runner(workers, address))
