"""kite accounts: refresh token, token expiry, invalid reason, last check

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("kite_accounts", sa.Column("refresh_token_encrypted", sa.Text(), nullable=True))
    op.add_column("kite_accounts", sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("kite_accounts", sa.Column("token_invalid_reason", sa.Text(), nullable=True))
    op.add_column("kite_accounts", sa.Column("token_checked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("kite_accounts", "token_checked_at")
    op.drop_column("kite_accounts", "token_invalid_reason")
    op.drop_column("kite_accounts", "token_expires_at")
    op.drop_column("kite_accounts", "refresh_token_encrypted")
