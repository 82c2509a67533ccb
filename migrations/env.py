"""Alembic environment: the URL comes from the caller (flask db) or ticker.config."""

from alembic import context
from sqlalchemy import create_engine, pool

import ticker.candles.models  # noqa: F401  (registers the tables on Base.metadata)
import ticker.registry.models  # noqa: F401
from ticker.config import Config
from ticker.db import Base, sqlalchemy_url

config = context.config
url = sqlalchemy_url(config.get_main_option("sqlalchemy.url") or Config.DATABASE_URL)


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
