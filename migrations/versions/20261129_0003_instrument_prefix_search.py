"""instruments: prefix-search indexes for GET /instruments

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_instruments_tradingsymbol_prefix ON instruments (tradingsymbol varchar_pattern_ops)")
    op.execute("CREATE INDEX ix_instruments_name_prefix ON instruments (upper(name) text_pattern_ops)")


def downgrade() -> None:
    op.drop_index("ix_instruments_name_prefix", table_name="instruments")
    op.drop_index("ix_instruments_tradingsymbol_prefix", table_name="instruments")
