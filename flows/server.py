"""``ldsm server start|stop|status``: a local Prefect server that outlives the command.

``ldsm server start [--port 4200]`` runs ``prefect server start --host 127.0.0.1 --port PORT``
(Prefect's own server, with its UI) in a session of its own, its output appended to
``$PREFECT_HOME/ldsm-background-server.log``, records ``{"pid", "api_url", "log"}`` in
``$PREFECT_HOME/ldsm-background-server.json`` and returns once ``/health`` answers. Every ``ldsm``
command then reports to it (:func:`flows.api_server.choose_api` reads the record), says so in one
line, and starts without a temporary server of its own (BENCHMARKS ``startup``); its runs, logs
and artifacts are in the UI at the printed address. ``ldsm server stop`` ends it (SIGTERM, then
SIGKILL after 10 s); ``ldsm server status`` says whether it answers (exit code 0) or not (1).

Why not ``prefect server start --background``: Prefect 3.9.1 hands that server pipes that nobody
reads, so it dies at its first log line once the starting command has exited (on this machine
within 15 s of its start).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows import api_server as A

STOP_TIMEOUT = 10.0


def _record_path() -> Path:
    return A.prefect_home() / A.BACKGROUND_RECORD


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is alive and runs a Prefect server (not a recycled pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone (or no /proc: then trust the pid while it answers signal 0)
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return b"prefect" in command and b"server" in command


def start(port: int) -> int:
    """Start the server on ``port`` unless one recorded here already answers; returns the exit
    code."""
    record = A.background_server()
    if record is not None and A.healthy(record["api_url"], timeout=A.LOOKUP_TIMEOUT):
        print(f"ldsm server: already running at {record['api_url']} (pid {record['pid']})")
        return 0
    api_url = f"http://127.0.0.1:{port}/api"
    if A.healthy(api_url, timeout=A.LOOKUP_TIMEOUT):
        found = (
            "ldsm commands use it"
            if api_url == A.LOCAL_API
            else f"set PREFECT_API_URL={api_url} for ldsm commands to use it"
        )
        print(f"ldsm server: a Prefect server already answers at {api_url}; {found}")
        return 0
    log = A.prefect_home() / A.BACKGROUND_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # The UI calls the API at the address these settings give (not at --port).
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in this terminal does not reach it
        )
    _record_path().write_text(
        json.dumps({"pid": process.pid, "api_url": api_url, "log": str(log)}) + "\n"
    )
    deadline = time.monotonic() + A.server_timeout()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return _failed(f"exited with code {process.returncode} (port {port} in use?)", log)
        if A.healthy(api_url, timeout=A.LOOKUP_TIMEOUT):
            ui = api_url.removesuffix("/api")
            print(
                f"ldsm server: a Prefect server runs at {ui} (UI; API {api_url}), pid "
                f"{process.pid}, log {log}; every ldsm command with this PREFECT_HOME uses it; "
                "`ldsm server stop` ends it"
            )
            return 0
        time.sleep(0.2)
    _stop_pid(process.pid)
    timeout = A.server_timeout()
    return _failed(f"did not answer within {timeout:.0f} s (LDSM_SERVER_TIMEOUT); stopped it", log)


def _failed(why: str, log: Path) -> int:
    """Forget the server that did not start; one line on stderr; exit code 1."""
    _record_path().unlink(missing_ok=True)
    print(f"ldsm server: the Prefect server {why}; log: {log}", file=sys.stderr)
    return 1


def _stop_pid(pid: int) -> None:
    """SIGTERM to ``pid``, SIGKILL after :data:`STOP_TIMEOUT` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            # Reap it when it is our child (a server that failed to start), else probe it.
            if _reaped(pid) or not _is_our_server(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not our child
        return False


def stop() -> int:
    """Stop the recorded server; returns an exit code (0 also when none was running)."""
    record = A.background_server()
    if record is None:
        print(f"ldsm server: no server started by `ldsm server start` for {A.prefect_home()}")
        return 0
    if _is_our_server(record["pid"]):
        _stop_pid(record["pid"])
        print(
            f"ldsm server: stopped the Prefect server at {record['api_url']} (pid {record['pid']})"
        )
    else:
        print(f"ldsm server: the server at {record['api_url']} had already exited")
    _record_path().unlink(missing_ok=True)
    return 0


def status() -> int:
    """One line on the recorded server; exit code 0 when it answers, 1 when not."""
    record = A.background_server()
    if record is None:
        print(f"ldsm server: none started by `ldsm server start` for {A.prefect_home()}")
        return 1
    if A.healthy(record["api_url"], timeout=A.LOOKUP_TIMEOUT):
        print(
            f"ldsm server: running at {record['api_url']} (pid {record['pid']}, log {record['log']})"
        )
        return 0
    alive = _is_our_server(record["pid"])
    print(
        f"ldsm server: {record['api_url']} does not answer (pid {record['pid']} "
        f"{'alive' if alive else 'gone'}); log {record['log']}"
    )
    return 1


def run(args) -> int:
    """``ldsm server ACTION``."""
    if args.action == "start":
        return start(args.port)
    return stop() if args.action == "stop" else status()
