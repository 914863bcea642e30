"""``WHEN``: ISO-8601 or a duration meaning that long ago; ``SEQ_OR_WHEN``: a seq or a WHEN."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from mpstate.cli.params import SEQ_OR_WHEN, WHEN


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 3 h ", timedelta(hours=3)),
    ],
)
def test_a_duration_means_that_long_ago(text: str, ago: timedelta) -> None:
    before = datetime.now(UTC)

    moment = WHEN.convert(text, None, None)

    assert before - ago - timedelta(seconds=1) <= moment <= datetime.now(UTC) - ago


def test_iso_8601_is_read_with_its_offset() -> None:
    moment = WHEN.convert("2024-05-01T14:00:00+02:00", None, None)

    assert moment == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert WHEN.convert("2024-05-01T12:00:00Z", None, None) == moment


def test_a_time_without_an_offset_is_utc_as_in_the_store() -> None:
    assert WHEN.convert("2024-05-01", None, None) == datetime(2024, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterdayish", "2x", "-2h", "2024-13-01", "", "99999999999d"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"ISO-8601|too long ago"):
        WHEN.convert(text, None, None)


@pytest.mark.parametrize(("text", "seq"), [("0", 0), ("12", 12), (" 7 ", 7), ("+3", 3), (5, 5)])
def test_a_bare_number_is_a_seq(text: str | int, seq: int) -> None:
    assert SEQ_OR_WHEN.convert(text, None, None) == seq


def test_anything_else_is_a_when() -> None:
    before = datetime.now(UTC)

    moment = SEQ_OR_WHEN.convert("2h", None, None)

    assert isinstance(moment, datetime)
    assert before - timedelta(hours=2, seconds=1) <= moment <= datetime.now(UTC)
    assert SEQ_OR_WHEN.convert("2024-05-01T12:00:00Z", None, None) == datetime(
        2024, 5, 1, 12, tzinfo=UTC
    )


@pytest.mark.parametrize("text", ["-1", "-2h", "soon"])
def test_a_negative_seq_or_an_unreadable_time_is_refused(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"ISO-8601"):
        SEQ_OR_WHEN.convert(text, None, None)
