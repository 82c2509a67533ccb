"""candles: completed candles, partitioned by IST day

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Partitions go in a schema of their own, so the public schema holds only what the models
    # declare; the candle builder and a beat job create and drop them (ticker.candles.store).
    op.execute("CREATE SCHEMA IF NOT EXISTS candle_days")
    op.create_table(
        "candles",
        sa.Column("instrument_token", sa.Integer(), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("close", sa.Float(), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("oi", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("instrument_token", "interval", "ts"),
        postgresql_partition_by="RANGE (ts)",
    )


def downgrade() -> None:
    op.drop_table("candles")  # drops every partition with it
    op.execute("DROP SCHEMA IF EXISTS candle_days CASCADE")
