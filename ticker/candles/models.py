"""The `candles` table: completed candles, partitioned by IST day (PostgreSQL declarative
partitioning). The partitions live in the schema `candle_days`, one table a day
(`candle_days.candles_20261130`), created ahead and dropped after `CANDLE_RETENTION_DAYS` by
`ticker.candles.store.maintain_partitions`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ticker.db import Base

PARTITION_SCHEMA = "candle_days"


class CandleRow(Base):
    """One completed candle: `ts` is its start; prices in rupees; `volume` and `oi` quantities."""

    __tablename__ = "candles"
    __table_args__ = {"postgresql_partition_by": "RANGE (ts)"}

    instrument_token: Mapped[int] = mapped_column(Integer, primary_key=True)
    interval: Mapped[str] = mapped_column(String(16), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    open: Mapped[float] = mapped_column(Float, nullable=False)
    high: Mapped[float] = mapped_column(Float, nullable=False)
    low: Mapped[float] = mapped_column(Float, nullable=False)
    close: Mapped[float] = mapped_column(Float, nullable=False)
    volume: Mapped[int] = mapped_column(BigInteger, nullable=False)
    oi: Mapped[int] = mapped_column(BigInteger, nullable=False)
