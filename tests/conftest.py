"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for flow tests (one per session: starting it takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    # A loaded 2-core machine can take more than the default 30 s to start the server.
    with prefect_test_harness(server_startup_timeout=180):
        yield
