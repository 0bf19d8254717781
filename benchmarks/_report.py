"""Write a benchmark's Markdown section into BENCHMARKS.md between its own markers."""

from __future__ import annotations

import datetime
import platform
import re
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    return f"{torch.get_num_threads()}-thread CPU ({platform.machine()}), torch {torch.__version__}"


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section delimited by ``<!-- begin name -->`` / ``<!-- end name -->``."""
    today = datetime.date.today().isoformat()
    block = (
        f"<!-- begin {name} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine()}  \nDate: {today}\n\n{body.strip()}\n"
        f"<!-- end {name} -->"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(
        rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S
    )
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    BENCHMARKS.write_text(text)
