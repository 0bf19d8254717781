"""Fan-out on Dask: the screen flow on a local two-worker cluster equals the sequential run.

Real QM9 molecules (the first 60 of qm9pack, plus one with NaN coordinates) are screened with the
thread pool, then through ``ldsm screen --dask-address`` on a two-process LocalCluster that the
test owns (so it can check that both workers ran chunks), and (slow) with ``--workers 2``, where
Prefect's DaskTaskRunner starts and stops the cluster itself.

All runs use the session's ``prefect_harness`` (one temporary Prefect server in a subprocess):
the Dask worker processes report their task runs to it over HTTP, so no process opens the SQLite
file except that server. Its telemetry service may still log a ``database is locked`` traceback
at start-up (a race inside the server, before any flow runs); it does not affect the runs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.cli import main
from flows.runners import task_runner
from pipeline import qm9
from pipeline import structures as S
from pipeline.io import write_structures


def test_task_runner_choice():
    threads = task_runner(0)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 2
    local = task_runner(2)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 2
    assert local.cluster_kwargs["threads_per_worker"] == 1 and local.cluster_kwargs["processes"]
    remote = task_runner(0, "tcp://10.0.0.5:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    with pytest.raises(ValueError, match="workers must be >= 0"):
        task_runner(-1)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    """60 QM9 molecules and one with NaN coordinates, as one SDF and one XYZ file."""
    folder = tmp_path_factory.mktemp("screen_in")
    head = folder / "head.csv"
    with open(qm9.qm9pack_files()[0]) as f:
        head.write_text("".join(next(f) for _ in range(61)))
    molecules = qm9.read_qm9pack([head])
    head.unlink()
    write_structures(molecules, folder / "qm9.sdf")
    nan = S.make_molecule(molecules[7].z, torch.full_like(molecules[7].pos, math.nan), name="nan")
    (folder / "nan.xyz").write_text(
        f"{len(nan.z)}\nnan\n" + "".join(f"{'CH'[int(z) == 1]} nan nan nan\n" for z in nan.z)
    )
    return folder


def _screen(candidates, out, *extra) -> tuple[str, dict]:
    argv = ["screen", str(candidates), "--out", str(out), "--chunk-size", "16", *extra]
    assert main(argv) == 0
    return (out / "screen.csv").read_text(), json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sequential(candidates, tmp_path_factory, prefect_harness):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDSM_HOME", str(home))
        return _screen(candidates, tmp_path_factory.mktemp("seq") / "out")


def test_screen_on_a_two_worker_cluster_equals_sequential(
    candidates, sequential, tmp_path, monkeypatch, prefect_harness
):
    from distributed import Client, LocalCluster

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    table, metrics = sequential
    # The NaN molecule is a read reject: listed with its reason, in no molecule rate.
    assert metrics["molecules"]["n"] == 60 and metrics["n_read_rejects"] == 1
    assert "non-finite coordinates" in table
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        dask_table, dask_metrics = _screen(
            candidates, tmp_path / "out", "--dask-address", cluster.scheduler_address
        )
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert dask_table == table and dask_metrics == metrics
    # 60 molecules in chunks of 16: 4 chunk tasks (plus the read), spread over both workers.
    assert len(executed) == 2 and all(n >= 1 for n in executed.values()), executed
    assert sum(executed.values()) >= 4


@pytest.mark.slow
def test_screen_with_workers_option_equals_sequential(
    candidates, sequential, tmp_path, monkeypatch, prefect_harness
):
    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    assert _screen(candidates, tmp_path / "out", "--workers", "2") == sequential
