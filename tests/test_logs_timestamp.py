"""The log timestamp formatter's fast path agrees with datetime to the microsecond."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from kms.logs import _timestamp


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_matches_datetime(created: float) -> None:
    expected = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    assert _timestamp(created) == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_seconds_boundary_rounds_up() -> None:
    assert _timestamp(1646783057.9999996) == "2022-03-08T23:44:18.000000Z"
