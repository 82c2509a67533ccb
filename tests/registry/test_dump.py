"""Validation of the instruments dump, row by row (pure logic)."""

from __future__ import annotations

import pytest

from ticker.registry.dump import COLUMNS, DumpError, DumpReport, validated_rows

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
