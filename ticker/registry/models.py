"""SQLAlchemy models. Every change here needs an Alembic migration (tests check they agree)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
    literal_column,
)
from sqlalchemy.orm import Mapped, mapped_column

from ticker.db import Base


class Instrument(Base):
    """One row of Kite's instruments dump."""

    __tablename__ = "instruments"
    # "EXCHANGE:TRADINGSYMBOL" lookups from subscribe and the search box.
    __table_args__ = (
        Index("ix_instruments_exchange_tradingsymbol", "exchange", "tradingsymbol"),
        # Prefix search (GET /instruments): LIKE 'Q%' uses these only with the pattern operator class.
        Index("ix_instruments_tradingsymbol_prefix", "tradingsymbol",
              postgresql_ops={"tradingsymbol": "varchar_pattern_ops"}),
        Index("ix_instruments_name_prefix", func.upper(literal_column("name")).label("upper_name"),
              postgresql_ops={"upper_name": "text_pattern_ops"}),
        # A word inside a symbol or name (LIKE '%Q%'): trigram indexes (pg_trgm, migration 0005).
        Index("ix_instruments_tradingsymbol_trgm", "tradingsymbol", postgresql_using="gin",
              postgresql_ops={"tradingsymbol": "gin_trgm_ops"}),
        Index("ix_instruments_name_trgm", func.upper(literal_column("name")).label("upper_name"),
              postgresql_using="gin", postgresql_ops={"upper_name": "gin_trgm_ops"}),
    )

    instrument_token: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    exchange_token: Mapped[int] = mapped_column(BigInteger)
    tradingsymbol: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    last_price: Mapped[float] = mapped_column(Numeric(18, 7), default=0)
    expiry: Mapped[date | None] = mapped_column(Date)
    strike: Mapped[float] = mapped_column(Numeric(18, 7), default=0)
    tick_size: Mapped[float] = mapped_column(Numeric(18, 7))
    lot_size: Mapped[int] = mapped_column(Integer)
    instrument_type: Mapped[str] = mapped_column(String(8))
    segment: Mapped[str] = mapped_column(String(16))
    exchange: Mapped[str] = mapped_column(String(8))

    @property
    def symbol(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}"


class KiteAccount(Base):
    """A Kite Connect app (API key) whose ticker connections the service owns.

    `api_secret`, `access_token` and `refresh_token` are stored encrypted
    (ticker.registry.secrets); ticker.registry.accounts is the one place that reads or writes them."""

    __tablename__ = "kite_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key: Mapped[str] = mapped_column(String(64), unique=True)
    api_secret_encrypted: Mapped[str] = mapped_column(Text)
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    refresh_token_encrypted: Mapped[str | None] = mapped_column(Text)
    token_valid: Mapped[bool] = mapped_column(Boolean, default=False)
    token_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When Kite will stop accepting the token (its daily expiry, about 06:00 IST).
    token_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why the token was marked invalid (Kite's message), for operators; None while valid.
    token_invalid_reason: Mapped[str | None] = mapped_column(Text)
    token_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class JobStatus(Base):
    """The last run of each beat job (ticker.jobs), one row per job, written once per run.

    Kept in PostgreSQL, not Redis, so /health and /metrics still show it after Redis restarted
    empty; the lock that keeps a job to one copy at a time stays in Redis."""

    __tablename__ = "job_status"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when the last run started
    outcome: Mapped[str] = mapped_column(String(16))  # ticker.jobs.OK or FAILED
    detail: Mapped[str] = mapped_column(Text, default="")  # a summary, or the error of a failed run
    duration_secs: Mapped[float] = mapped_column(Float)
    last_ok: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # when the last successful run started
