"""Session fixtures shared by every test directory (and tests/ on sys.path for tests/pg_kit.py)."""

from __future__ import annotations

import pytest
from pg_kit import server_for_tests


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server (tests/pg_kit.py), one per session, started on first use.
    Without PostgreSQL the tests that use it are skipped, except in CI, where they fail."""
    server = server_for_tests()
    yield server
    server.stop()
