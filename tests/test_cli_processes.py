"""Commands as processes: a run owns its folder, the Prefect server of a command (started,
retried, never left behind), the background server of ``ldsm server`` (it outlives its command
and serves the next), stopping a command by signal, loopback-only Dask, a quiet console.

Each test runs ``ldsm`` in a real subprocess against a temporary Prefect server on the test
session's PREFECT_HOME (tests/conftest.py).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ase.build import molecule
from ase.io import write
from test_cli import ROOT, _screen_env, ldsm

from flows import lock as L

# ---- a run owns its folder --------------------------------------------------------------


def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(tmp_path, prefect_home):
    out = tmp_path / "out"
    water = tmp_path / "w.xyz"
    write(water, molecule("H2O"))
    code = f"from flows import lock; lock.acquire({str(out)!r}); print('held', flush=True); input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(L.FolderInUse, match=f"in use by pid {holder.pid} "):
            L.acquire(out)
        done = ldsm("screen", str(water), "--out", str(out), env=_screen_env(prefect_home))
        assert done.returncode == 2
        assert f"in use by pid {holder.pid}" in done.stderr.strip().splitlines()[-1]
        assert not (out / "screen.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    with L.owned(out):  # the holder died: its lock went with it
        with L.owned(out):  # re-entrant in one process
            assert f"pid {os.getpid()} " in (out / L.LOCK_NAME).read_text()
    assert (out / L.LOCK_NAME).read_text() == ""


# ---- the Prefect server of a command, and stopping a command ---------------------------


def _start_screen(tmp_path: Path, home: Path, out: Path, *extra: str) -> subprocess.Popen:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for k, name in enumerate(["CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCN", "C6H6", "CO2"] * 3):
        write(folder / f"{k}.xyz", molecule(name))
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "screen", str(folder), "--out", str(out), *extra],
        cwd=ROOT,
        env=_screen_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _server_of(proc: subprocess.Popen):
    """The temporary server child of ``proc`` (waits for it to be started)."""
    import psutil

    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        for child in parent.children():
            if "uvicorn" in " ".join(child.cmdline()):
                return child
    raise AssertionError(f"no server child; exit {proc.returncode}: {proc.stderr.read()}")


def test_kill_9_of_a_command_leaves_no_server_behind(tmp_path, prefect_home):
    import psutil

    proc = _start_screen(tmp_path, prefect_home, tmp_path / "out")
    server = _server_of(proc)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs([server], timeout=60)
    assert server in gone and not alive


def test_sigterm_stops_a_screen_with_one_line_saying_what_was_kept(tmp_path, prefect_home):
    import psutil

    out = tmp_path / "out"
    proc = _start_screen(tmp_path, prefect_home, out, "--chunk-size", "1")
    server = _server_of(proc)
    while proc.poll() is None and not list((out / ".chunks").glob("*.npz")):
        psutil.wait_procs([psutil.Process(proc.pid)], timeout=0.2)
    proc.terminate()
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ldsm screen: stopped by SIGTERM; ") and "checked chunk" in last
    assert "kept in" in last
    assert "Traceback" not in err
    gone, _ = psutil.wait_procs([server], timeout=30)
    assert server in gone


def test_ctrl_c_stops_a_screen_while_rdkit_embeds_in_its_threads(tmp_path, prefect_home):
    """PoseBusters' conformer embedding runs on two threads; RDKit's own SIGINT handler used to
    be left installed (flows.interrupt) and the screen ran on to its end."""
    import numpy as np

    rng = np.random.default_rng(0)
    names = ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCN", "C6H6", "CO2", "CH3CH2OH", "C2H4"]
    frames = []
    for k in range(600):  # distinct poses: PoseBusters' verdict cache does not answer them
        frame = molecule(names[k % len(names)])
        frame.positions += rng.normal(0.0, 0.01, frame.positions.shape)
        frames.append(frame)
    write(tmp_path / "many.xyz", frames)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "screen", str(tmp_path / "many.xyz")]
        + ["--out", str(out), "--chunk-size", "20"],
        cwd=ROOT,
        env={**_screen_env(prefect_home), "LDSM_HOME": str(tmp_path / "ldsm")},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr.txt", "w"),  # a pipe read only at the end could fill
        # As in a terminal's foreground: a test run in a script's background inherits SIGINT
        # ignored, and the command then rightly ignores it too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while proc.poll() is None and len(list((out / ".chunks").glob("*.npz"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("ldsm screen: stopped by Ctrl-C; ")
    assert len(list((out / ".chunks").glob("*.npz"))) < 30  # stopped, not run to its end


def test_a_server_that_does_not_start_is_retried_then_one_line(tmp_path, prefect_home):
    water = tmp_path / "water.xyz"
    write(water, molecule("H2O"))
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", str(water)],
        cwd=ROOT,
        env={**_screen_env(prefect_home), "LDSM_SERVER_TIMEOUT": "0.01"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "the temporary Prefect server did not start twice" in line and "log:" in line


def test_the_api_url_comes_from_the_environment_or_the_active_profile(tmp_path, monkeypatch):
    from flows import api_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    profiles = tmp_path / "profiles.toml"
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    assert api_server.configured_api_url() is None
    profiles.write_text(
        'active = "lab"\n[profiles.lab]\nPREFECT_API_URL = "http://127.0.0.1:4300/api"\n'
        '[profiles.other]\nPREFECT_API_URL = "http://10.0.0.9:4200/api"\n'
    )
    assert api_server.configured_api_url() == "http://127.0.0.1:4300/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4400/api")
    assert api_server.configured_api_url() == "http://127.0.0.1:4400/api"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _screen_runs(api_url: str) -> int:
    body = json.dumps({"flows": {"name": {"any_": ["screen"]}}}).encode()
    request = urllib.request.Request(
        f"{api_url}/flow_runs/count", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_a_background_server_outlives_its_command_and_serves_the_next(tmp_path, prefect_home):
    import psutil

    env = _screen_env(prefect_home)
    del env["LDSM_PREFECT_SERVER"]  # the look-up of a running server is on
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    water = tmp_path / "water.xyz"
    write(water, molecule("H2O"))
    try:
        started = ldsm("server", "start", "--port", str(port), env=env)
        assert started.returncode == 0, started.stderr
        assert f"runs at http://127.0.0.1:{port} " in started.stdout
        pid = json.loads((prefect_home / "ldsm-background-server.json").read_text())["pid"]
        assert psutil.pid_exists(pid)  # it outlived `ldsm server start`
        assert ldsm("server", "status", env=env).returncode == 0
        again = ldsm("server", "start", "--port", str(port), env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        before = _screen_runs(api_url)
        done = ldsm("screen", str(water), "--out", str(tmp_path / "out"), env=env)
        assert done.returncode == 0, done.stderr
        assert f"using the Prefect server running at {api_url}" in done.stderr
        assert _screen_runs(api_url) == before + 1  # the run is in that server's database
    finally:
        stopped = ldsm("server", "stop", env=env)
    assert stopped.returncode == 0 and f"stopped the Prefect server at {api_url}" in stopped.stdout
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    status = ldsm("server", "status", env=env)
    assert status.returncode == 1 and "none started" in status.stdout


def test_a_background_server_on_a_taken_port_is_one_line(tmp_path, prefect_home):
    env = _screen_env(prefect_home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = ldsm("server", "start", "--port", str(port), env=env)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("ldsm server: the Prefect server exited with code ")
    assert f"(port {port} in use?); log: " in line
    assert not (prefect_home / "ldsm-background-server.json").exists()


def test_a_stale_background_record_is_not_used(tmp_path, monkeypatch):
    from flows import api_server, server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("LDSM_PREFECT_SERVER", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    dead = _dead_pid()
    url = f"http://127.0.0.1:{_free_port()}/api"  # nothing listens there
    record = {"pid": dead, "api_url": url, "log": str(tmp_path / "log")}
    (tmp_path / api_server.BACKGROUND_RECORD).write_text(json.dumps(record))
    assert api_server.background_server() == record
    assert server.status() == 1
    if not api_server.healthy(api_server.LOCAL_API):  # no server of the user's on 4200
        assert api_server.choose_api(temporary=False) == (None, None, None)
    assert server.stop() == 0 and api_server.background_server() is None


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_local_dask_cluster_listens_on_loopback_only():
    import psutil

    from flows.runners import task_runner

    with task_runner(workers=1) as runner:
        assert runner.client.wait_for_workers(1, timeout=120) is None  # starts the cluster
        me = psutil.Process()
        sockets = [
            c
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    assert sockets  # the scheduler and its dashboard at least
    assert {c.laddr.ip for c in sockets} <= {"127.0.0.1", "::1"}, sockets


def test_a_screen_console_has_no_library_noise(tmp_path, prefect_home):
    """RDKit's own lines (a pentavalent carbon makes it print 'Explicit valence ...') and
    Prefect's telemetry stay off the console; the verdict keeps the reason."""
    folder = tmp_path / "in"
    folder.mkdir()
    # PoseBusters turns RDKit's logs back on after each molecule it checks: the CH5 comes after
    # waters in its chunk.
    write(folder / "a.xyz", [molecule("H2O")] * 3)
    (folder / "ch5.xyz").write_text(
        "6\nCH5\nC 0 0 0\nH 1.09 0 0\nH -1.09 0 0\nH 0 1.09 0\nH 0 -1.09 0\nH 0 0 1.09\n"
    )
    out = tmp_path / "out"
    done = ldsm("screen", str(folder), "--out", str(out), env=_screen_env(prefect_home))
    assert done.returncode == 0, done.stderr
    for noise in ("Explicit valence", "telemetry", "Traceback", "[RDKit]", "WARNING"):
        assert noise not in done.stderr, done.stderr
    rows = {r["name"]: r for r in csv.DictReader(open(out / "screen.csv"))}
    (ch5,) = [r for name, r in rows.items() if "ch5" in name.lower()]
    assert ch5["valid"] == "False" and ch5["valid_reason"] not in ("", "ok")
