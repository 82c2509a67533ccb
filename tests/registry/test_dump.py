"""Validation of the instruments dump, row by row (pure logic)."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticker.registry.dump import COLUMNS, DumpError, DumpReport, copy_lines, parse_row, validated_rows

HEADER = ",".join(COLUMNS) + "\n"
GOOD = "738561,2885,RELIANCE,RELIANCE INDUSTRIES,0,,0,0.05,1,EQ,NSE,NSE\n"
FUT = "12345678,48225,NIFTY26DECFUT,NIFTY,0,2026-12-29,0,0.05,65,FUT,NFO-FUT,NFO\n"


def parse(text: str, **kwargs) -> tuple[list[tuple], DumpReport]:
    report = DumpReport()
    rows = list(validated_rows(text.splitlines(keepends=True), report, **kwargs))
    return rows, report


def test_good_rows_parse_in_column_order():
    rows, report = parse(HEADER + GOOD + FUT)
    assert report.rows == 2 and report.bad == []
    assert rows[0][:3] == (738561, 2885, "RELIANCE") and rows[0][5] is None
    assert str(rows[1][5]) == "2026-12-29" and rows[1][8] == 65


def test_a_bad_row_is_skipped_and_reported_with_its_line_number():
    bad = "notanumber,1,X,,0,,0,0.05,1,EQ,NSE,NSE\n"
    short = "1,2,3\n"
    bad_date = "99,1,Y,,0,2026-13-45,0,0.05,1,FUT,NFO-FUT,NFO\n"
    rows, report = parse(HEADER + GOOD + bad + short + FUT + bad_date + GOOD)
    assert [r[0] for r in rows] == [738561, 12345678]
    assert [b.line for b in report.bad] == [3, 4, 6, 7]
    assert "columns" in report.bad[1].reason and "duplicate instrument_token" in report.bad[3].reason


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    (HEADER, "no instruments"),
    ("a,b,c\n" + GOOD, "unexpected header"),
    (HEADER + GOOD + FUT[:20], "truncated"),
])
def test_unusable_dumps_are_refused(text, why):
    with pytest.raises(DumpError, match=why):
        parse(text)


def test_too_many_bad_rows_is_a_corrupt_dump():
    with pytest.raises(DumpError, match="corrupt"):
        parse(HEADER + GOOD + "garbage\n" * 4, max_bad=3)


def copy_text(text: str, **kwargs) -> tuple[str, DumpReport]:
    report = DumpReport()
    return "".join(copy_lines(text.splitlines(keepends=True), report, **kwargs)), report


def test_plain_rows_go_to_copy_as_they_came():
    text, report = copy_text(HEADER + GOOD + FUT)
    assert text == GOOD + FUT
    assert report.symbols == {738561: "NSE:RELIANCE", 12345678: "NFO:NIFTY26DECFUT"}


def test_other_rows_are_written_back_as_csv_with_the_same_values():
    quoted = '500,1,"M&M","  MAHINDRA, ""M&M""",,,1e2,.05,+75,EQ,NSE,NSE\n'
    text, report = copy_text(HEADER + quoted + GOOD)
    assert text == '500,1,M&M,"  MAHINDRA, ""M&M""",0,,1e2,.05,75,EQ,NSE,NSE\n' + GOOD
    assert report.bad == []
    assert [parse_row(next(csv.reader([line]))) for line in text.splitlines()] == \
        [parse_row(next(csv.reader([line]))) for line in (quoted, GOOD)]


def test_crlf_line_ends_come_out_as_newlines():
    text, report = copy_text((HEADER + GOOD + FUT).replace("\n", "\r\n"))
    assert text == GOOD + FUT and report.rows == 2


def test_a_record_spanning_lines_keeps_the_line_numbers_right():
    two_lines = '600,1,ODD,"NAME\nON TWO LINES",0,,0,0.05,1,EQ,NSE,NSE\n'
    rows, report = parse(HEADER + two_lines + "1,2,3\n" + GOOD)
    assert [b.line for b in report.bad] == [3, 4]  # the odd row: a line break in a field
    assert [r[0] for r in rows] == [738561]


@pytest.mark.parametrize(("field", "value", "why"), [
    (4, "123456789012", "last_price '123456789012' is out of range"),  # Numeric(18, 7)
    (6, "1e300", "strike '1e300' is out of range"),
    (7, "١٢", "not a finite number"),  # float() reads Arabic-Indic digits; PostgreSQL does not
    (8, str(2**31), "lot_size '2147483648' is out of range"),  # Integer
    (3, "NUL\x00", "NUL"),
])
def test_values_postgresql_would_refuse_are_bad_rows_not_a_failed_load(field, value, why):
    fields = GOOD.rstrip("\n").split(",")
    fields[field] = value
    rows, report = parse(HEADER + ",".join(fields) + "\n" + FUT)
    assert [r[0] for r in rows] == [12345678]
    assert [b.line for b in report.bad] == [2] and why in report.bad[0].reason


def test_broken_quoting_that_swallows_the_dump_is_refused():
    with pytest.raises(DumpError, match="not valid CSV"):
        parse(HEADER + '1,2,"OPEN QUOTE\n' + GOOD * 3000)  # past the csv module's field size limit


# Dumps of mostly plain rows, some with a value at or past the edge of what the plain-row
# pattern takes (a number too long, a date that does not exist, a quote, a tab, ...).
def some(*values: str) -> st.SearchStrategy[str]:
    return st.sampled_from(values)


TEXT = st.text(alphabet="AB z09-&.", max_size=10)
PLAIN = [
    st.integers(0, 200).map(str), st.integers(0, 10**6).map(str), st.text(alphabet="ABC09-&", min_size=1, max_size=8),
    TEXT, st.decimals(0, 10**6, places=2).map(str), some("", "2026-12-29", "2027-01-28"),
    some("0", "17650.5", "99999999999.9999999"), some("0.05", "0.0025", "0.1234567"), st.integers(0, 5000).map(str),
    some("EQ", "FUT", "CE", ""), some("NSE", "NFO-OPT", "INDICES", ""), some("NSE", "NFO", "BSE"),
]
NUMBER_EDGES = ("", "x", "-1", "007", " 12", "9" * 18, "9" * 19, str(2**63 - 1), str(2**63), "1_0", "١٢", "+5",
                    "999999999", str(2**31 - 1), str(2**31))
DECIMAL_EDGES = ("", "1e5", " 1.5", ".5", "5.", "nan", "inf", "1_0", "-3", "١٢", "abc", "100000000000",
                     "0.12345678")
TEXT_EDGES = ("", "X" * 8, "X" * 9, "X" * 16, "X" * 17, "X" * 64, "X" * 65, "Y" * 128, "Y" * 129, "a,b", 'a"b',
                  "tab\t", "back\\slash", "nul\x00", "\x0bv", "é", " pad ", "x:y")
EDGES = [NUMBER_EDGES, NUMBER_EDGES, TEXT_EDGES, TEXT_EDGES, DECIMAL_EDGES,
         ("2026-02-30", "20261229", "2026-1-1", "0000-01-01", "x", "2026-12-29T00:00"),
         DECIMAL_EDGES, DECIMAL_EDGES, NUMBER_EDGES, TEXT_EDGES, TEXT_EDGES, TEXT_EDGES]


@st.composite
def rows(draw) -> list[str]:
    row = [draw(strategy) for strategy in PLAIN]
    if draw(st.booleans()):
        column = draw(st.integers(0, len(COLUMNS) - 1))
        row[column] = draw(st.sampled_from(EDGES[column]))
    return row


@st.composite
def dumps(draw) -> str:
    out = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    writer = csv.writer(out, lineterminator="\n", quoting=quoting)
    writer.writerow(COLUMNS)
    for row in draw(st.lists(st.one_of(rows(), rows(), rows(), st.lists(TEXT, max_size=13)), max_size=30)):
        writer.writerow(row)
    text = out.getvalue()
    return text.replace("\n", "\r\n") if draw(st.booleans()) else text


def outcome(text: str, plain_rows: bool) -> tuple:
    report = DumpReport()
    try:
        lines = list(copy_lines(text.splitlines(keepends=True), report, max_bad=10, plain_rows=plain_rows))
        error = None
    except DumpError as exc:
        lines, error = None, str(exc)
    return lines, error, report.bad, report.symbols


@settings(max_examples=400, deadline=None)
@given(dumps())
def test_the_plain_row_pattern_gives_what_parsing_every_field_gives(text):
    assert outcome(text, plain_rows=True) == outcome(text, plain_rows=False)


def test_each_edge_value_in_each_column_gives_what_parsing_every_field_gives():
    plain = GOOD.rstrip("\n").split(",")
    for column, edges in enumerate(EDGES):
        for value in edges:
            fields = [*plain[:column], value, *plain[column + 1:]]
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerow(fields)
            text = HEADER + out.getvalue() + FUT
            assert outcome(text, plain_rows=True) == outcome(text, plain_rows=False), (column, value)
