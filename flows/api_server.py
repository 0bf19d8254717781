"""Which Prefect API an ``ldsm`` command reports to, and the temporary server when there is none.

Order of choice (:func:`choose_api`):

1. ``PREFECT_API_URL`` from the environment or from the active Prefect profile: used as it is;
2. a Prefect server already answering: the one ``ldsm server start`` recorded in
   ``$PREFECT_HOME/ldsm-background-server.json`` (:mod:`flows.server`), else one on
   ``http://127.0.0.1:4200`` (the README's ``prefect server start``); used, and the command says
   so in one line. ``LDSM_PREFECT_SERVER=temporary`` skips this look-up;
3. otherwise a temporary server, a child of the command (:class:`TemporaryServer`).

Why not Prefect's own temporary server: it waits 20 s at most (two of three commands started
together on a loaded machine gave up), it does not retry, and it outlives a command killed with
``kill -9``. This one waits ``LDSM_SERVER_TIMEOUT`` seconds (default 180) and retries once on a
new port; it runs in a session of its own (a Ctrl-C in the terminal reaches the command, which
then stops the server last, not first) and asks the kernel to send it SIGTERM when the command
dies (``PR_SET_PDEATHSIG``), so no orphan is left behind. It is started before the command imports
torch and RDKit, so its start-up overlaps theirs.

Nothing here imports Prefect (the API URL must be in the environment before Prefect is imported)
except :func:`drain_prefect` and :func:`heartbeats_as_configured`, which act on a Prefect
already imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from flows.interrupt import unblock_in_child

LOCAL_API = "http://127.0.0.1:4200/api"
DEFAULT_TIMEOUT = 180.0
BACKGROUND_RECORD = "ldsm-background-server.json"  # written by ``ldsm server start``
BACKGROUND_LOG = "ldsm-background-server.log"
# A busy server can take a second to answer; where nothing listens the look-up fails at once.
LOOKUP_TIMEOUT = 2.0
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The temporary Prefect server did not start (the message says why)."""


def prefect_home() -> Path:
    """``$PREFECT_HOME`` (default ``~/.prefect``): Prefect's database, and the servers' logs."""
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


def server_timeout() -> float:
    """Seconds to wait for a server to answer: ``LDSM_SERVER_TIMEOUT``, default 180."""
    return float(os.environ.get("LDSM_SERVER_TIMEOUT", DEFAULT_TIMEOUT))


def background_server() -> dict | None:
    """``{"pid", "api_url", "log"}`` of the server ``ldsm server start`` recorded for this
    ``PREFECT_HOME`` (it may have exited since), or None."""
    try:
        record = json.loads((prefect_home() / BACKGROUND_RECORD).read_text())
        return {"pid": int(record["pid"]), "api_url": str(record["api_url"]), "log": record["log"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment, else from the active profile of
    ``profiles.toml`` (what ``prefect config set PREFECT_API_URL=...`` writes), else None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home() / "profiles.toml"))
    try:
        profiles = tomllib.loads(path.expanduser().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether ``api_url/health`` answers ``true`` within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200 and json.loads(response.read()) is True
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent(parent: int):
    """A ``preexec_fn``: SIGINT unblocked, SIGTERM to the child when ``parent`` dies (Linux),
    and exit at once when the parent is already gone (it died between fork and this call)."""

    def preexec() -> None:
        unblock_in_child()  # the command may hold SIGINT blocked (flows.interrupt)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: the command stops it on exit instead
            return
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class TemporaryServer:
    """A Prefect API server on a free loopback port, a child process of this one.

    :meth:`start` launches it without waiting; :meth:`wait` blocks until ``/health`` answers
    (retrying once on a new port if it exits or does not answer in time); :meth:`stop` ends it.
    Its database is Prefect's default (``$PREFECT_HOME/prefect.db``), so the runs stay visible
    to a server started later; its UI and analytics are off.
    """

    def __init__(self, timeout: float | None = None, log: Path | None = None):
        self.timeout = server_timeout() if timeout is None else timeout
        self.log = log or prefect_home() / "ldsm-server.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.started = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> TemporaryServer:
        """Launch the server process (returns at once)."""
        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            raise ServerError("prefect is not installed")
        app_dir = Path(list(spec.submodule_search_locations)[0]).parent
        self.port = _free_port()
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        env.pop("PREFECT_API_URL", None)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory"]
                + ["prefect.server.api.server:create_app", "--host", "127.0.0.1"]
                + ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        return self

    def _wait_once(self) -> str | None:
        """None when healthy within the timeout counted from the start, else why not."""
        deadline = self.started + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"it exited with code {self.process.returncode}"
            if healthy(self.api_url, timeout=2.0):
                return None
            time.sleep(0.1)
        return f"it did not answer within {self.timeout:.0f} s (LDSM_SERVER_TIMEOUT)"

    def wait(self) -> str:
        """Block until the server answers; returns its API URL. Raises :class:`ServerError`
        after a second failed attempt, naming the log file."""
        why = self._wait_once()
        if why is not None:
            self.stop()
            self.start()
            why = self._wait_once()
        if why is not None:
            self.stop()
            raise ServerError(
                f"the temporary Prefect server did not start twice ({why}); log: {self.log}"
            )
        return self.api_url

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def choose_api(temporary: bool = True) -> tuple[str | None, TemporaryServer | None, str | None]:
    """``(api_url, server, note)``: the configured API (server None), a running local server
    (``note`` says so), or (``temporary``) a started :class:`TemporaryServer` whose ``wait()``
    confirms its ``api_url``; ``(None, None, None)`` when none is found and ``temporary`` is off."""
    url = configured_api_url()
    if url:
        return url, None, None
    if os.environ.get("LDSM_PREFECT_SERVER", "auto") != "temporary":
        record = background_server()
        recorded = [record["api_url"]] if record else []
        for running in dict.fromkeys(recorded + [LOCAL_API]):
            if healthy(running, LOOKUP_TIMEOUT):
                note = (
                    f"using the Prefect server running at {running} "
                    "(set PREFECT_API_URL to choose one, or LDSM_PREFECT_SERVER=temporary)"
                )
                return running, None, note
    if not temporary:
        return None, None, None
    return None, TemporaryServer().start(), None


def drain_prefect(timeout: float) -> None:
    """Send the logs and events still queued to the API while the temporary server lives
    (after it stops, Prefect retries them for over a minute at exit)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


def heartbeats_as_configured() -> contextlib.AbstractContextManager:
    """Prefect's flow-run heartbeats off unless the user set their frequency.

    Prefect 3.9 emits one every 180 s by default from a thread that sleeps in 1 s steps, and the
    end of every flow run waits for that sleep: 0.9 s of a 1.2 s one-task flow here (BENCHMARKS
    ``startup``). Heartbeats only serve an automation that marks silent runs Crashed, which a
    self-hosted user creates after setting ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (Prefect's
    "How to detect and respond to zombie flows"); a frequency set in the environment or the
    profile is kept."""
    if "prefect" not in sys.modules:
        return contextlib.nullcontext()
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        return contextlib.nullcontext()
    return temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
