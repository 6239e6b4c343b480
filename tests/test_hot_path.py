"""The request path's shortcuts answer exactly as the long way: model names checked once, answer
timestamps formatted once per axis, request ids without a system call."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from chronoserve import limits
from chronoserve.errors import InvalidRequest
from chronoserve.request import ForecastRequest
from chronoserve.server.convert import ItemRequest


def test_a_clean_name_is_remembered_and_a_dirty_one_never_is(monkeypatch):
    monkeypatch.setattr(limits, "_CLEAN_NAMES", set())
    assert limits.check_model_name("  random/chronos-bolt-tiny ") == "random/chronos-bolt-tiny"
    assert "random/chronos-bolt-tiny" in limits._CLEAN_NAMES
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(InvalidRequest, match="control characters"):
            limits.check_model_name("random/chronos\tbolt")
    assert {"random/chronos-bolt-tiny"} == limits._CLEAN_NAMES


def test_the_remembered_names_are_bounded(monkeypatch):
    monkeypatch.setattr(limits, "_CLEAN_NAMES", set())
    monkeypatch.setattr(limits, "_CLEAN_NAMES_MAX", 10)
    for i in range(25):
        assert limits.check_model_name(f"model-{i}") == f"model-{i}"  # still checked and accepted
    assert len(limits._CLEAN_NAMES) == 10


@pytest.mark.parametrize("start", [datetime(2016, 12, 31, 20), datetime(2016, 12, 31, 20, tzinfo=timezone.utc)])
def test_answer_timestamps_are_those_of_the_time_axis_and_each_answer_gets_its_own_list(start):
    item = ItemRequest(ForecastRequest(model="m", target=[1.0, 2.0], horizon=6), "dongsi", start, 0.5)
    first, second = item.timestamps(6), item.timestamps(6)
    assert first == [(start + timedelta(hours=0.5 * h)).isoformat() for h in range(6)]
    assert first == second and first is not second
    first.append("changed")  # a caller's list is its own: the cached axis is untouched
    assert item.timestamps(6) == second


def test_request_ids_look_like_uuid4_hex_and_differ():
    ids = {ForecastRequest(model="m", target=[1.0], horizon=1).request_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
