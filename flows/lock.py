"""A run owns its output folder: ``OUT/.lock``, an exclusive ``flock`` held while the run lasts.

A second run into the same folder is refused with :class:`FolderInUse`, whose message names the
process that holds it (pid, host, command line, start time), instead of both writing and leaving
a folder that mixes the two. The kernel drops the lock when the holder exits in any way (even
``kill -9``), so a stale lock cannot block a re-run. Locks are re-entrant within a process: the
CLI takes the lock before the flow starts (so the refusal is one line), the flow takes it again
(so a deployment run started by ``ldsm serve`` or a worker is protected too).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[Path, list] = {}  # resolved folder -> [open file, depth, created by this hold]


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process (it wrote no details)"


def acquire(folder: str | Path) -> None:
    """Take ``folder``'s lock (creating the folder) or raise :class:`FolderInUse`."""
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FolderInUse(
            f"{folder} is in use by {_holder(path)}; wait for that run to end or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    command = " ".join(["ldsm", *sys.argv[1:]]) if sys.argv else "?"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({command}), since {started}\n")
    handle.flush()
    _held[folder] = [handle, 1, created]


def release(folder: str | Path) -> None:
    """Give back one hold of ``folder``'s lock; the last one unlocks it."""
    folder = Path(folder).resolve()
    entry = _held.get(folder)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        handle, _, created = _held.pop(folder)
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        # A run refused before it wrote anything (a missing input) leaves no folder behind.
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()


@contextmanager
def owned(folder: str | Path):
    """Hold ``folder``'s lock for the ``with`` block."""
    acquire(folder)
    try:
        yield Path(folder)
    finally:
        release(folder)
