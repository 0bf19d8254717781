"""The Python API (``flows.api``): README's example runs as written, and errors are raised
before any server starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows import api, lock
from flows.console import UsageError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The Python block of README's "The Python API" section."""
    section = (ROOT / "README.md").read_text().split("## The Python API", 1)[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_readme_example_designs_and_screens_again(tmp_path):
    """The example in a fresh interpreter, as a user pastes it: a temporary Prefect server, the
    shipped model, the design run's samples screened again by ``screen``."""
    code = readme_example()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LDSM_PREFECT_SERVER": "temporary"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Prefect's queued logs and events were sent before the temporary server stopped.
    assert "failed to process" not in done.stderr and "Unable to connect" not in done.stderr
    run = tmp_path / "runs" / "api-design"
    assert (run / "samples" / "samples.sdf").read_text().count("$$$$") == 8
    assert (run / "report.md").exists() and (
        tmp_path / "runs" / "api-screen" / "screen.csv"
    ).exists()
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "8 molecules screened again", done.stdout
    assert lines[-2].startswith("runs/api-design ") and 0 <= float(lines[-2].split()[1]) <= 1


def test_errors_are_raised_before_a_server_starts(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        api.screen(input=str(tmp_path / "missing.sdf"), out=str(tmp_path / "s"))
    with pytest.raises(UsageError, match="not-a-model.pt"):
        api.generate(tmp_path / "not-a-model.pt", tmp_path / "g", n=2)
    sdf = tmp_path / "water.xyz"
    sdf.write_text("3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n")
    held = tmp_path / "held"
    # Another process holds the folder: the call is refused at once, naming the holder.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from flows import lock;"
            f"lock.acquire({str(held)!r}); print('held', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.FolderInUse, match=f"pid {holder.pid}"):
            api.screen(input=str(sdf), out=str(held))
    finally:
        holder.kill()
        holder.wait()
