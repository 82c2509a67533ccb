"""The models and the migrations agree: a fresh database at head has nothing to autogenerate."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ticker.candles import models as candle_models  # noqa: F401  (registers the tables)
from ticker.db import Base, engine_for
from ticker.registry import models  # noqa: F401


def test_models_match_migrations(database):
    with engine_for(database).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
