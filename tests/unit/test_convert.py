"""Rows to protobuf messages (perdured.convert)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from perdured import convert

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none() | offsets))
def test_timestamp__equals_protobufs_own_conversion_for_any_datetime(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)  # naive datetimes are UTC, as in protobuf
    assert convert.timestamp(value) == expected


def test_timestamp__of_nothing_is_nothing_and_of_seconds_is_exact() -> None:
    assert convert.timestamp(None) is None
    assert convert.timestamp(1.5) == Timestamp(seconds=1, nanos=500_000_000)
    assert convert.timestamp(datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == Timestamp(
        seconds=-1, nanos=999_999_000)
