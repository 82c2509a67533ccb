"""Kite's instruments dump, validated row by row (pure logic, no I/O).

Policy for bad rows: a row that does not parse (wrong column count, a non-numeric token, a bad
date, a duplicate token or "EXCHANGE:TRADINGSYMBOL") is skipped and reported with its line
number. More than `MAX_BAD_ROWS` bad rows fail the whole load: that is a corrupt dump, not a
few odd listings. A dump with a wrong header, no rows, or a last line cut short (no trailing
newline: the transfer stopped mid-row) is refused outright, and the registry keeps yesterday's.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date

COLUMNS = (
    "instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
    "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange",
)
MAX_BAD_ROWS = 100  # beyond this many the dump is corrupt, and the load fails
TEXT_LIMITS = {"tradingsymbol": 64, "name": 128, "instrument_type": 8, "segment": 16, "exchange": 8}
MAX_TOKEN = 2**63 - 1  # BigInteger
_COPY_SPECIALS = re.compile(r"[\t\\\r\n]")  # would break COPY's text format; no Kite field holds one


class DumpError(ValueError):
    """The dump as a whole is unusable; the registry keeps its current contents."""


@dataclass(frozen=True)
class BadRow:
    line: int  # 1-based line number in the CSV, the header being line 1
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class DumpReport:
    """What validation found; filled in while rows stream through `validated_rows`."""

    rows: int = 0
    bad: list[BadRow] = field(default_factory=list)
    symbols: list[tuple[int, str]] = field(default_factory=list)  # (token, "EXCHANGE:SYMBOL") of good rows


def _int(value: str, name: str) -> int:
    number = int(value)
    if not 0 <= number <= MAX_TOKEN:
        raise ValueError(f"{name} {value!r} is out of range")
    return number


def _decimal(value: str, name: str) -> str:
    if not value:
        return "0"
    if "_" in value or not math.isfinite(float(value)):  # float() raises ValueError for non-numbers
        raise ValueError(f"{name} {value!r} is not a finite number")
    return value  # PostgreSQL parses the exact decimal text itself


def _text(value: str, name: str) -> str:
    if len(value) > TEXT_LIMITS[name]:
        raise ValueError(f"{name} {value[:20]!r}... is longer than {TEXT_LIMITS[name]} characters")
    return value


def parse_row(fields: list[str]) -> tuple:
    """One CSV record as a tuple in COLUMNS order; ValueError says what is wrong."""
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{len(fields)} columns, expected {len(COLUMNS)}")
    if _COPY_SPECIALS.search("".join(fields)):
        raise ValueError("a field holds a tab, backslash or line break")
    token, exchange_token, symbol, name, last_price, expiry, strike, tick, lot, kind, segment, exchange = fields
    if not symbol or not exchange:
        raise ValueError("tradingsymbol and exchange are required")
    return (
        _int(token, "instrument_token"),
        _int(exchange_token, "exchange_token"),
        _text(symbol, "tradingsymbol"),
        _text(name, "name"),
        _decimal(last_price, "last_price"),
        date.fromisoformat(expiry) if expiry else None,
        _decimal(strike, "strike"),
        _decimal(tick, "tick_size"),
        int(lot),
        _text(kind, "instrument_type"),
        _text(segment, "segment"),
        _text(exchange, "exchange"),
    )


def _complete_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines, refusing a dump whose last line has no newline (a transfer cut short)."""
    for line in lines:
        if not line.endswith("\n"):
            raise DumpError("the dump is truncated: its last line is cut short")
        yield line


def validated_rows(lines: Iterable[str], report: DumpReport, max_bad: int = MAX_BAD_ROWS) -> Iterator[tuple]:
    """Yield each good row as a tuple (COLUMNS order) and record bad ones in `report`.

    `lines` are the CSV's text lines with their newlines. Raises DumpError for an unusable
    dump; the caller must not commit anything it wrote before that."""
    reader = csv.reader(_complete_lines(lines))
    header = next(reader, None)
    if header is None:
        raise DumpError("the dump is empty")
    if tuple(h.strip() for h in header) != COLUMNS:
        raise DumpError(f"unexpected header {header[:12]!r}: not Kite's instruments dump")
    tokens: set[int] = set()
    symbols: set[tuple[str, str]] = set()
    for fields in reader:
        line = reader.line_num
        try:
            row = parse_row(fields)
            if row[0] in tokens:
                raise ValueError(f"duplicate instrument_token {row[0]}")
            if (row[11], row[2]) in symbols:
                raise ValueError(f"duplicate symbol {row[11]}:{row[2]}")
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))
            if len(report.bad) > max_bad:
                raise DumpError(f"more than {max_bad} bad rows (the last at {report.bad[-1]}): corrupt dump") from None
            continue
        tokens.add(row[0])
        symbols.add((row[11], row[2]))
        report.symbols.append((row[0], f"{row[11]}:{row[2]}"))
        report.rows += 1
        yield row
    if report.rows == 0:
        raise DumpError("the dump has a header but no instruments")


def copy_line(row: tuple) -> str:
    """One row in PostgreSQL's COPY text format (validation has ruled out tabs and backslashes)."""
    return "\t".join("\\N" if value is None else str(value) for value in row) + "\n"
