"""Start-up of the ``ldsm`` commands: help, and screening one water molecule, before and after.

Runs each command as a user does (a fresh ``python -m flows.cli`` process, wall time to exit)
with two copies of the code in the same Python environment, alternating, so that both see the
same machine load: "before" is ``--before REF`` exported with ``git archive`` (default: the
merge base with ``main``), "after" is this checkout. The screen runs twice: with no Prefect
server configured (each command gets a temporary one) and with ``PREFECT_API_URL`` pointing at a
running local ``prefect server start`` (what ``ldsm server start`` runs). Both use a fresh
``PREFECT_HOME`` migrated by a warm-up run that is not counted. Prefect's own floor is timed in
the same run: a script with one flow calling one task and no ``ldsm`` code, against a temporary
server (Prefect's own) and against the running one. Medians of ``--repeats`` runs; the ratio is
before / after. Writes the ``startup`` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 3] [--before main]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
WATER = "3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
FLOOR = """from prefect import flow, task


@task
def add_one(x):
    return x + 1


@flow
def floor():
    return add_one(1)


floor()
"""


def _export(ref: str, folder: Path) -> Path:
    """The tree of ``ref`` in ``folder`` (``git archive``)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _timed(code: Path, argv: list[str], env: dict, command: tuple = ("-m", "flows.cli")) -> float:
    """Wall seconds of ``python -m flows.cli ARGV`` (or ``python COMMAND ARGV``) run from
    ``code``; fails loudly on error."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *command, *argv],
        cwd=code,
        env={**env, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{code}: ldsm {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return seconds


def _server(home: Path, env: dict) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_UI_ENABLED": "false"},
        stdout=open(home / "server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"prefect server not healthy; see {home / 'server.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command and version")
    parser.add_argument("--before", default=None, help="git ref of the old code (merge base)")
    args = parser.parse_args()
    git = ["rev-parse", args.before] if args.before else ["merge-base", "HEAD", "main"]
    before_ref = subprocess.run(  # a commit, so the table names what it ran
        ["git", *git], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()

    from _report import write_section

    tmp = Path(tempfile.mkdtemp(prefix="ldsm_startup_"))
    versions = {"before": _export(before_ref, tmp / "before"), "after": ROOT}
    water = tmp / "water.xyz"
    water.write_text(WATER)
    floor = tmp / "floor.py"
    floor.write_text(FLOOR)
    home = tmp / "prefect"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        LDSM_HOME=str(tmp / "ldsm"),
        LDSM_PREFECT_SERVER="temporary",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    load = [os.getloadavg()[0]]
    cases = [
        ("`ldsm --help`", ["--help"], None),
        ("`ldsm screen --help`", ["screen", "--help"], None),
        ("`ldsm screen water.xyz`, no server configured", ["screen", str(water)], False),
        ("`ldsm screen water.xyz`, a local server running", ["screen", str(water)], True),
    ]
    times = {(case, v): [] for case, _, _ in cases for v in versions}
    floors = {
        "no server configured (Prefect's temporary server)": False,
        "a local server running": True,
    }
    floor_times = {case: [] for case in floors}
    server, url = _server(home, env)
    try:
        for name, code in versions.items():  # warm-up: migrations, caches, bytecode
            _timed(code, ["screen", str(water), "--out", str(tmp / f"warm-{name}")], env)
        run = 0
        for _ in range(args.repeats):
            for case, argv, with_server in cases:
                for name, code in versions.items():
                    run += 1
                    out = ["--out", str(tmp / f"out{run}")] if with_server is not None else []
                    case_env = {**env, "PREFECT_API_URL": url} if with_server else env
                    times[(case, name)].append(_timed(code, argv + out, case_env))
            for case, with_server in floors.items():
                case_env = {**env, "PREFECT_API_URL": url} if with_server else env
                floor_times[case].append(_timed(tmp, [], case_env, command=(str(floor),)))
    finally:
        server.terminate()
        server.wait(30)
    load.append(os.getloadavg()[0])

    rows = ["| command | before (s) | after (s) | before / after |", "| --- | --- | --- | --- |"]
    for case, _, _ in cases:
        b = statistics.median(times[(case, "before")])
        a = statistics.median(times[(case, "after")])
        rows.append(f"| {case} | {b:.2f} | {a:.2f} | {b / a:.1f}x |")
    floor_rows = ["| Prefect flow with one task, no ldsm code | seconds |", "| --- | --- |"]
    for case, seconds in floor_times.items():
        floor_rows.append(f"| {case} | {statistics.median(seconds):.2f} |")
    body = (
        f"Wall time of a fresh `python -m flows.cli` process to its exit, median of "
        f"{args.repeats} runs per cell, before (`{before_ref[:10]}`) and after (this checkout) "
        "alternating in one run, same Python environment (so the same Prefect). 'No server "
        "configured': the command's temporary server (`flows.api_server`'s, started while the "
        "command imports its libraries, where the version has it; else Prefect's own). 'A local "
        "server running': "
        "`PREFECT_API_URL` set to a `prefect server start` on this machine (what `ldsm server "
        "start` runs, and what a command then finds by itself). Screen with its "
        f"defaults (PoseBusters on). 1-minute load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end (the machine is shared).\n\n" + "\n".join(rows) + "\n\n"
        "Prefect's own floor, timed in the same run (a script with one `@flow` calling one "
        "`@task`, medians):\n\n" + "\n".join(floor_rows) + "\n\n"
        "`--help` imports only argparse (the options live in `flows/cli_*.py`; "
        "`tests/test_cli.py` holds their defaults equal to the configs'). A screen imports "
        "neither torch nor torch_geometric (its records are numpy `pipeline.structures.Record`s "
        "and its chunks `.npz` files; `tests/test_screen_flow.py` holds it) and draws its plots "
        "without pyplot, and Prefect's flow-run heartbeats are off unless their frequency is "
        "set (the end of each run waited up to 1 s for their thread; the floor script keeps "
        "Prefect's default). What remains: Prefect's import and flow-run calls (the floor), "
        "the temporary server where none runs, and the libraries the outputs need (ASE, which "
        "imports SciPy, for XYZ; PoseBusters; matplotlib)."
    )
    write_section(
        "startup",
        "Command start-up: help and a one-molecule screen",
        f"python benchmarks/bench_startup.py --repeats {args.repeats} --before {before_ref[:10]}",
        body,
    )
    print(body)


if __name__ == "__main__":
    main()
