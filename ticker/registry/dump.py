"""Kite's instruments dump, validated row by row (pure logic, no I/O).

Policy for bad rows: a row that does not parse (wrong column count, a non-numeric token, a bad
date, a number out of its column's range, a duplicate token or "EXCHANGE:TRADINGSYMBOL") is
skipped and reported with its line number. More than `MAX_BAD_ROWS` bad rows fail the whole
load: that is a corrupt dump, not a few odd listings. A dump with a wrong header, no rows, a
last line cut short (no trailing newline: the transfer stopped mid-row) or broken CSV quoting
is refused outright, and the registry keeps yesterday's.

Good rows come out as lines of CSV for PostgreSQL's `COPY ... (FORMAT csv)` (`COPY_OPTIONS`).
Nearly every row of Kite's dump is plain: no quotes, canonical numbers, an ISO date. One
precompiled pattern recognises such a line, and it goes to COPY as it came; any other line is
parsed field by field (`parse_row`), which gives the reason a bad row is bad, and written back
as CSV. The pattern accepts only lines `parse_row` accepts unchanged, so both ways give the
same rows (tests/registry/test_dump.py checks that on generated dumps).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

COLUMNS = (
    "instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
    "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange",
)
MAX_BAD_ROWS = 100  # beyond this many the dump is corrupt, and the load fails
TEXT_LIMITS = {"tradingsymbol": 64, "name": 128, "instrument_type": 8, "segment": 16, "exchange": 8}
MAX_TOKEN = 2**63 - 1  # BigInteger
MAX_LOT_SIZE = 2**31 - 1  # Integer
DECIMAL_LIMIT = 10**11  # Numeric(18, 7): eleven digits before the point,
DECIMAL_SCALE = Decimal("1e-7")  # and seven after it
_SPECIALS = re.compile(r"[\t\\\r\n\x00]")  # no Kite field holds one; NUL cannot be stored at all
# Text columns an empty CSV field must fill with "" rather than NULL.
COPY_OPTIONS = f"FORMAT csv, FORCE_NOT_NULL ({', '.join(TEXT_LIMITS)})"


def _plain_row_pattern() -> re.Pattern[str]:
    """A line that parse_row accepts as it stands: unquoted, integers in canonical form (so
    str(int(text)) == text) and in range, decimals plain and in range, a YYYY-MM-DD expiry
    (its calendar is checked apart), texts within their limits."""
    text = r'[^,"\t\\\r\n\x00]'
    integer = r"(?:0|[1-9][0-9]{0,17})"  # at most 18 digits: below MAX_TOKEN
    lot = r"(?:0|[1-9][0-9]{0,8})"  # at most 9 digits: below MAX_LOT_SIZE
    decimal = r"[0-9]{1,11}(?:\.[0-9]{1,7})?"  # below DECIMAL_LIMIT, at most the column's scale

    def limited(column: str, least: int = 0) -> str:
        return f"{text}{{{least},{TEXT_LIMITS[column]}}}"

    return re.compile(
        rf"({integer}),{integer},({limited('tradingsymbol', 1)}),{limited('name')},{decimal},"
        rf"([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})?,{decimal},{decimal},{lot},{limited('instrument_type')},"
        rf"{limited('segment')},({limited('exchange', 1)})\r?\n"
    )


_PLAIN_ROW = _plain_row_pattern()


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
    """What validation found; filled in while rows stream through `copy_lines`."""

    rows: int = 0
    bad: list[BadRow] = field(default_factory=list)
    symbols: dict[int, str] = field(default_factory=dict)  # token -> "EXCHANGE:SYMBOL" of good rows, in dump order


def _int(value: str, name: str, limit: int = MAX_TOKEN) -> int:
    number = int(value)
    if not 0 <= number <= limit:
        raise ValueError(f"{name} {value!r} is out of range")
    return number


def _decimal(value: str, name: str) -> str:
    if not value:
        return "0"
    # PostgreSQL reads neither underscores nor non-ASCII digits; Decimal reads both.
    if "_" in value or not value.isascii():
        raise ValueError(f"{name} {value!r} is not a finite number")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{name} {value!r} is not a finite number")
    # As the column stores it: rounded to its scale, then below its limit.
    if abs(number) >= DECIMAL_LIMIT or abs(number.quantize(DECIMAL_SCALE, ROUND_HALF_UP)) >= DECIMAL_LIMIT:
        raise ValueError(f"{name} {value!r} is out of range")
    return value  # PostgreSQL parses the exact decimal text itself


def _text(value: str, name: str) -> str:
    if len(value) > TEXT_LIMITS[name]:
        raise ValueError(f"{name} {value[:20]!r}... is longer than {TEXT_LIMITS[name]} characters")
    return value


def _lot_size(value: str) -> int:
    number = int(value)
    if not -MAX_LOT_SIZE <= number <= MAX_LOT_SIZE:
        raise ValueError(f"lot_size {value!r} is out of range")
    return number


def parse_row(fields: list[str]) -> tuple:
    """One CSV record as a tuple in COLUMNS order; ValueError says what is wrong."""
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{len(fields)} columns, expected {len(COLUMNS)}")
    if _SPECIALS.search("".join(fields)):
        raise ValueError("a field holds a tab, backslash, NUL or line break")
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
        _lot_size(lot),
        _text(kind, "instrument_type"),
        _text(segment, "segment"),
        _text(exchange, "exchange"),
    )


def csv_line(row: tuple) -> str:
    """A parsed row as one CSV line for COPY (None, an absent expiry, as an unquoted empty field)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue()


def _complete(line: str) -> str:
    if not line.endswith("\n"):
        raise DumpError("the dump is truncated: its last line is cut short")
    return line


def _read_header(lines: Iterator[str]) -> None:
    header = next(csv.reader(_complete(line) for line in lines), None)
    if header is None:
        raise DumpError("the dump is empty")
    if tuple(h.strip() for h in header) != COLUMNS:
        raise DumpError(f"unexpected header {header[:12]!r}: not Kite's instruments dump")


class _Validator:
    """The per-row policy: parse, reject duplicates, count bad rows. State for one dump."""

    def __init__(self, report: DumpReport, max_bad: int):
        self.report, self.max_bad = report, max_bad
        self.by_token = report.symbols
        self.symbols: set[str] = set()
        self.expiries: set[str] = set()  # YYYY-MM-DD texts already found to be real dates

    def plain(self, match: re.Match) -> bool:
        """Accept a line the plain-row pattern matched, unless it needs a closer look: a
        duplicate or an impossible date, which `parsed` reports."""
        token_text, symbol, expiry, exchange = match.groups()
        token, key = int(token_text), f"{exchange}:{symbol}"
        if token in self.by_token or key in self.symbols or (expiry and not self._real_date(expiry)):
            return False
        self.by_token[token] = key
        self.symbols.add(key)
        return True

    def parsed(self, fields: list[str], line: int) -> tuple | None:
        """The row, or None when it is bad (recorded with its line number)."""
        try:
            row = parse_row(fields)
            key = f"{row[11]}:{row[2]}"
            if row[0] in self.by_token:
                raise ValueError(f"duplicate instrument_token {row[0]}")
            if key in self.symbols:
                raise ValueError(f"duplicate symbol {key}")
        except ValueError as exc:
            self.report.bad.append(BadRow(line, str(exc)))
            if len(self.report.bad) > self.max_bad:
                raise DumpError(f"more than {self.max_bad} bad rows (the last at {self.report.bad[-1]}): "
                                "corrupt dump") from None
            return None
        self.by_token[row[0]] = key
        self.symbols.add(key)
        return row

    def _real_date(self, text: str) -> bool:
        if text not in self.expiries:
            try:
                date.fromisoformat(text)
            except ValueError:
                return False
            self.expiries.add(text)
        return True


def copy_lines(lines: Iterable[str], report: DumpReport, max_bad: int = MAX_BAD_ROWS,
               plain_rows: bool = True) -> Iterator[str]:
    """Yield each good row as a line of CSV (COLUMNS order) for COPY with `COPY_OPTIONS`, and
    record bad ones in `report`.

    `lines` are the CSV's text lines with their newlines. Raises DumpError for an unusable
    dump; the caller must not commit anything it wrote before that. `plain_rows=False` parses
    every row field by field (the reference the fast way is tested against)."""
    lines = iter(lines)
    _read_header(lines)
    validator = _Validator(report, max_bad)
    plain = _PLAIN_ROW.fullmatch if plain_rows else lambda line: None
    number = 1
    for line in lines:
        number += 1
        match = plain(line)
        if match is not None and validator.plain(match):
            yield line if line[-2] != "\r" else line[:-2] + "\n"
            continue
        # A record may span lines (a quoted field with a newline): the reader takes what it needs.
        reader = csv.reader(map(_complete, itertools.chain([line], lines)))
        try:
            fields = next(reader)
        except csv.Error as exc:
            raise DumpError(f"the dump is not valid CSV at line {number + reader.line_num - 1}: {exc}") from None
        number += reader.line_num - 1
        row = validator.parsed(fields, number)
        if row is not None:
            yield csv_line(row)
    report.rows = len(report.symbols)
    if report.rows == 0:
        raise DumpError("the dump has a header but no instruments")


def validated_rows(lines: Iterable[str], report: DumpReport, max_bad: int = MAX_BAD_ROWS) -> Iterator[tuple]:
    """`copy_lines` as typed tuples (COLUMNS order), for callers that want values, not COPY text."""
    for line in copy_lines(lines, report, max_bad):
        yield parse_row(next(csv.reader([line])))
