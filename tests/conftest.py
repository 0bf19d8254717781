"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for flow tests (one per session: starting it takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
