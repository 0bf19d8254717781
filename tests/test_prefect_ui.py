"""The Prefect web UI shows a design run: its state, its logs and its report artifact.

A real ``prefect server start`` with the UI on, a small ``ldsm design`` run against it, and
headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol: the
flow-run page must show the run's name, its state and the design's log line, and the
artifact page the design report. The screenshots are kept with the test's files; README's
``docs/prefect-ui.png`` is the flow-run page of one of these runs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from prefect_server import free_port, prefect_server, stop

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab of a headless Chromium, driven by the DevTools protocol over its websocket."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu"]
            + [f"--remote-debugging-port={port}", f"--user-data-dir={profile}"]
            + ["--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline, "chromium's DevTools did not answer in 60 s"
                time.sleep(0.3)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=2**27)
        self.calls = 0

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.calls:
                assert "error" not in message, message
                return message["result"]

    def text_once_showing(self, url: str, *needles: str, timeout: float = 90) -> str:
        """The page's visible text once it contains every needle (fails after ``timeout``)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            text = self.call(
                "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
            )["result"].get("value", "")
            if all(n in text for n in needles):
                return text
            assert time.monotonic() < deadline, f"{url} never showed {needles}:\n{text[:2000]}"
            time.sleep(0.5)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        self.ws.close()
        stop(self.proc)


def _find(url: str, kind: str, body: dict) -> list[dict]:
    return httpx.post(f"{url}/{kind}/filter", json=body, timeout=30).json()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_prefect_ui_shows_a_design_run_its_logs_and_report(tmp_path):
    with prefect_server(tmp_path, ui=True) as api:
        out = tmp_path / "design"
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path)}
        done = subprocess.run(
            [str(Path(sys.executable).parent / "ldsm"), "design", "--out", str(out)]
            + ["--n", "4", "--nfe", "10", "--reference-size", "20", "--no-posebusters"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs = _find(api, "flow_runs", {"flows": {"name": {"any_": ["design"]}}})
        assert len(runs) == 1, runs
        run = runs[0]
        (artifact,) = _find(api, "artifacts", {"artifacts": {"key": {"any_": ["design-report"]}}})
        assert artifact["flow_run_id"] == run["id"]

        page = Page(tmp_path / "chromium")
        try:
            ui = api.removesuffix("/api")
            text = page.text_once_showing(
                f"{ui}/runs/flow-run/{run['id']}", run["name"], "Completed", f"design run {out}"
            )
            assert "Artifacts" in text
            page.screenshot(tmp_path / "flow-run.png")
            text = page.text_once_showing(
                f"{ui}/artifacts/artifact/{artifact['id']}",
                "Design run design",
                "4 generated structures",
            )
            page.screenshot(tmp_path / "artifact.png")
        finally:
            page.close()
    assert (tmp_path / "flow-run.png").stat().st_size > 10_000
