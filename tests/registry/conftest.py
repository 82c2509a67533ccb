"""Fixtures of the registry tests: a database of their own for Kite accounts.

The shared stack's shard supervisor streams with every account that has a valid token, so
accounts created by these tests live in a separate database that no shard reads."""

from __future__ import annotations

import pytest

from tests.conftest import DATABASE_URL
from ticker.registry import migrate

ACCOUNTS_DATABASE_URL = DATABASE_URL + "_accounts"


@pytest.fixture(scope="session")
def accounts_database() -> str:
    """A fresh database at the newest migration, for tests that create Kite accounts."""
    return migrate.recreate_database(ACCOUNTS_DATABASE_URL)
