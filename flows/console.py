"""What an ``ldsm`` command prints: one line per problem, no library noise.

- :class:`UsageError`: a bad option or input file; the CLI prints its message as one line and
  exits with code 2 (argparse's code for usage errors).
- :func:`quiet_environment` (before Prefect is imported): Prefect's analytics off unless the user
  turned them on (``PREFECT_SERVER_ANALYTICS_ENABLED=true``); on a machine without internet they
  end in a ``Failed to send telemetry`` ERROR line.
- :func:`quiet_libraries` (after): RDKit's own console messages (``Explicit valence for atom
  ...``) off for good (:func:`silence_rdkit`), since every verdict already carries its reason in
  the screening table; tracebacks kept out of Prefect's console lines unless ``--debug`` (the
  Prefect UI still gets them).
"""

from __future__ import annotations

import logging
import os


class UsageError(ValueError):
    """A bad option, file or combination of options: the message names it and says what is wrong."""


def quiet_environment() -> None:
    """Analytics off unless the user turned them on; call before importing Prefect."""
    analytics = os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = analytics
    if analytics.lower() not in ("1", "true", "yes"):
        os.environ.setdefault("DO_NOT_TRACK", "1")


class _NoTraceback(logging.Filter):
    """Drop the traceback of a console record (the message stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def silence_rdkit() -> None:
    """RDKit's console messages off for the process: sent to Python's ``rdkit`` logger, which
    drops them, so that a library turning RDKit's logs back on cannot print them (PoseBusters'
    sanity check calls ``RDLogger.EnableLog("rdApp.*")`` after each molecule)."""
    from rdkit import RDLogger, rdBase

    rdBase.LogToPythonLogger()
    logger = logging.getLogger("rdkit")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    RDLogger.DisableLog("rdApp.*")


def quiet_libraries(debug: bool = False) -> None:
    """RDKit console logging off (:func:`silence_rdkit`); without ``debug``, no tracebacks in
    Prefect's console lines."""
    silence_rdkit()
    if debug:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_NoTraceback())
