"""Shared fixtures."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The commands that tests run start Prefect servers on PREFECT_HOME's database: a home of the
# session's own keeps the user's database (which another Prefect version may share) untouched.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ldsm-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_home() -> Path:
    """The session's PREFECT_HOME (tests/conftest.py): its database is migrated once."""
    return Path(os.environ["PREFECT_HOME"])


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for flow tests (one per session: starting it takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    # A loaded 2-core machine can take more than the default 30 s to start the server.
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: on small tensors a second thread on this shared 2-core
    machine costs ~10x (measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
