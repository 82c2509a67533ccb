"""Fixtures of the registry tests: a database of their own for Kite accounts.

The shared stack's shard supervisor streams with every account that has a valid token, so
accounts created by these tests live in a separate database that no shard reads."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import DATABASE_URL
from ticker.db import sqlalchemy_url
from ticker.registry import migrate

ACCOUNTS_DATABASE_URL = DATABASE_URL + "_accounts"


@pytest.fixture(scope="session")
def accounts_database() -> str:
    """A fresh database at the newest migration, for tests that create Kite accounts."""
    url = make_url(sqlalchemy_url(ACCOUNTS_DATABASE_URL))
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()
    migrate.create_database(ACCOUNTS_DATABASE_URL)
    migrate.upgrade(ACCOUNTS_DATABASE_URL)
    return ACCOUNTS_DATABASE_URL
