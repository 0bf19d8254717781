"""Scheduling against a real Prefect server: ``ldsm serve`` registers a cron deployment, a
triggered run completes; ``prefect.yaml`` describes the design deployment.

The server is ``prefect server start`` on a free loopback port with its own PREFECT_HOME (a
subprocess of the test, torn down with it), not the session's test harness: serving is a
long-running client of a real API, and the point is to see it work against one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ase.build import molecule
from ase.io import write
from prefect_server import prefect_server as start_server
from prefect_server import stop, tail

from flows import serve as S
from flows.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``http://127.0.0.1:PORT/api`` of a fresh ``prefect server start``."""
    with start_server(tmp_path_factory.mktemp("prefect_server")) as url:
        yield url


def _deployment(url: str, name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return None

    with temporary_settings({PREFECT_API_URL: url}):
        return asyncio.run(read())


def test_serve_options_and_parameters(tmp_path):
    args = build_parser().parse_args(
        ["serve", "--cron", "*/5 * * * *", "--entrypoint", "flows.screen:screen_flow"]
    )
    assert args.name == "nightly" and args.timezone == "UTC" and args.cron == "*/5 * * * *"
    assert S.parameters_from_args(args) == {}
    # The design options of `ldsm design` become the deployment's parameters.
    args = build_parser().parse_args(["serve", "--n", "5", "--nfe", "8", "--out", "runs/x"])
    config = S.parameters_from_args(args)["config"]
    assert config["n"] == 5 and config["sampler"]["nfe"] == 8 and config["out"] == "runs/x"
    # --config wins: a previous run's config.json is served as it is.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"out": "runs/y", "n": 7}))
    args = build_parser().parse_args(["serve", "--config", str(path), "--n", "5"])
    assert S.parameters_from_args(args) == {"config": {"out": "runs/y", "n": 7}}


def test_flow_annotations_resolve_for_pickling():
    """The reason serve resolves annotations: a by-value pickle keeps only used globals."""
    import cloudpickle

    from flows.screen import ScreenConfig

    flow = S.load_flow("flows.screen:screen_flow")
    S.resolve_annotations(flow)
    assert flow.fn.__annotations__["config"] is ScreenConfig
    clone = cloudpickle.loads(cloudpickle.dumps(flow))
    params = clone.validate_parameters({"config": {"input": "a", "out": "b"}})
    assert params["config"] == ScreenConfig(input="a", out="b")


def test_prefect_yaml_deploys_the_design_flow():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = [d for d in spec["deployments"] if d["name"] == "nightly-design"]
    assert deployment["entrypoint"] == "flows/design.py:design"
    assert deployment["work_pool"]["name"] == "ldsm-process"
    (schedule,) = deployment["schedules"]
    from prefect.schedules import Cron

    assert Cron(schedule["cron"], timezone=schedule["timezone"]).cron == schedule["cron"]
    (pull,) = spec["pull"]
    assert "prefect.deployments.steps.set_working_directory" in pull


def test_ldsm_serve_runs_a_deployment(prefect_server, tmp_path):
    """``ldsm serve`` in a subprocess; ``run_deployment`` triggers a run that completes."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("CH4", "C2H6", "CH3OH"):
        write(folder / f"{name}.xyz", molecule(name))
    out = tmp_path / "out"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"input": str(folder), "out": str(out), "posebusters": False}))
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "client_home"),
        "LDSM_HOME": str(tmp_path / "ldsm_home"),
    }
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * *"]
            + ["--name", "test-serve", "--entrypoint", "flows.screen:screen_flow"]
            + ["--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while (deployment := _deployment(prefect_server, "screen/test-serve")) is None:
            assert proc.poll() is None, f"ldsm serve exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no deployment after 120 s:\n{tail(log)}"
            time.sleep(1)
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "0 3 * * *" and schedule.active
        assert deployment.parameters["config"]["input"] == str(folder)
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            flow_run = run_deployment("screen/test-serve", timeout=300)
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{tail(log)}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["molecules"]["n"] == 3 and metrics["molecules"]["validity"] == 1.0
    finally:
        stop(proc, signal.SIGINT)
    # Ctrl-C pauses the deployment: no scheduled runs pile up while nothing serves them.
    assert _deployment(prefect_server, "screen/test-serve").paused, tail(log)


def _prefect(*args: str, env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_prefect_yaml_deployment_runs_the_design_flow_on_a_process_worker(prefect_server, tmp_path):
    """``prefect deploy`` of prefect.yaml, a process worker started elsewhere, one design run."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.design import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"no shipped checkpoint at {DEFAULT_CHECKPOINT}")
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "client_home"),
        "PWD": str(ROOT),  # what a shell in the repository root would set
    }
    created = _prefect(
        "work-pool", "create", "ldsm-process", "--type", "process", env=env, cwd=ROOT
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect("--no-prompt", "deploy", "--name", "nightly-design", env=env, cwd=ROOT)
    # Prefect 3.8.8 ended here with a 422 from its "online workers?" query; 3.9.1 does not.
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0 and "422" not in output, output
    deployment = _deployment(prefect_server, "design/nightly-design")
    assert deployment is not None, output
    assert deployment.entrypoint == "flows/design.py:design"
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    assert deployment.schedules[0].schedule.cron == "0 3 * * *"

    run = tmp_path / "run"
    tiny = {"out": str(run), "n": 4, "sampler": {"nfe": 4}, "reference_size": 12}
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        flow_run = run_deployment(
            "design/nightly-design",
            parameters={"config": {**tiny, "posebusters": False}},
            timeout=0,
        )
    # The worker starts outside the repository: the pull step moves the run into it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    worker = _prefect(
        "worker",
        "start",
        "--pool",
        "ldsm-process",
        "--run-once",
        env=env,
        cwd=elsewhere,
        timeout=500,
    )
    from prefect.client.orchestration import get_client

    async def state():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run.id)).state

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        final = asyncio.run(state())
    assert final.is_completed(), f"{final}\n{(worker.stdout + worker.stderr)[-4000:]}"
    assert json.loads((run / "metrics.json").read_text())["molecules"]["n"] == 4
    assert (run / "report.md").exists()
