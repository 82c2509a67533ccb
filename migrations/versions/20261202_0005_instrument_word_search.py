"""instruments: trigram indexes so GET /instruments finds a word inside a symbol or name

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # pg_trgm ships with PostgreSQL (contrib); creating it needs a superuser or, from
    # PostgreSQL 13, the database owner (it is a trusted extension).
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX ix_instruments_tradingsymbol_trgm ON instruments USING gin (tradingsymbol gin_trgm_ops)")
    op.execute("CREATE INDEX ix_instruments_name_trgm ON instruments USING gin (upper(name) gin_trgm_ops)")


def downgrade() -> None:
    op.drop_index("ix_instruments_name_trgm", table_name="instruments")
    op.drop_index("ix_instruments_tradingsymbol_trgm", table_name="instruments")
