"""The request path's shortcuts answer exactly as the long way: model names checked once, answer
timestamps formatted once per axis, request ids without a system call; and the body read it
keeps bounded gives up at the drain."""

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


async def test_a_body_still_arriving_when_the_drain_begins_gets_503():
    """A handler waiting for the rest of its body answers 503 as soon as the drain begins."""
    import asyncio

    from asgi_lifespan import LifespanManager
    from waiting import until

    from chronoserve.server import create_app
    from chronoserve.testing import FakeLoader, fake_spec, server_settings

    model = "random/chronos-bolt-tiny"
    spec = fake_spec(model, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False)
    app = create_app(server_settings(default_model=model), loader=FakeLoader(specs={model: spec}))
    body = b'{"city": "dongsi", "horizon_hours": 4}'

    async def post(asgi, parts: list[bytes]) -> tuple[int, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/forecast", "raw_path": b"/forecast", "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        messages = [{"type": "http.request", "body": p, "more_body": True} for p in parts]
        answer: dict[str, object] = {}

        async def receive() -> dict[str, object]:
            if messages:
                return messages.pop(0)
            waiting.set()
            await asyncio.Event().wait()  # the rest of the body never comes
            return {}

        async def send(message: dict[str, object]) -> None:
            answer.setdefault(message["type"], message)

        await asgi(scope, receive, send)
        start, end = answer["http.response.start"], answer["http.response.body"]
        return int(start["status"]), bytes(end["body"])  # type: ignore[call-overload]

    waiting = asyncio.Event()
    async with LifespanManager(app) as manager:
        runtime = app.state.runtime
        whole = asyncio.create_task(post(manager.app, [body[:10]]))  # more_body stays true: still arriving
        await until(waiting.is_set, "the handler waiting for the rest of its body")
        runtime.begin_drain()
        status, text = await whole
    assert status == 503 and b"shutting down" in text


# -- interrupting the handler's own task (body.Interrupt) -----------------------------------------


async def test_an_interrupt_raises_its_reason_and_leaves_the_task_uncancelled():
    import asyncio

    from chronoserve.server.body import Interrupt, Interrupted

    async def sleep_until_stopped() -> None:
        with Interrupt() as stop:
            asyncio.get_running_loop().call_soon(stop, "timeout")
            stop("drain")  # the first reason wins; the second call is a no-op
            await asyncio.sleep(3600)

    async def wait_until_stopped() -> str:
        with pytest.raises(Interrupted) as raised:
            await sleep_until_stopped()
        task = asyncio.current_task()
        assert task is not None
        assert getattr(task, "cancelling", lambda: 0)() == 0  # uncancelled: a later timeout scope still works
        await asyncio.sleep(0)  # and no cancellation is left pending
        return raised.value.reason

    assert await asyncio.create_task(wait_until_stopped()) == "drain"


async def test_a_cancellation_from_elsewhere_passes_through_an_interrupt():
    import asyncio

    from chronoserve.server.body import Interrupt

    entered = asyncio.Event()

    async def guarded() -> None:
        with Interrupt():
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_interrupt_in_the_turn_its_await_finishes_still_wins():
    """The awaited thing is done, the task is scheduled to resume, and the interrupt lands first:
    the task learns of it where it resumes, inside the block, so the reason is never lost."""
    import asyncio

    from chronoserve.server.body import Interrupt, Interrupted

    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    holder: list[Interrupt] = []
    entered = asyncio.Event()

    async def guarded() -> str:
        with Interrupt() as stop:
            holder.append(stop)
            entered.set()
            return await ready

    task = asyncio.create_task(guarded())
    await entered.wait()
    ready.set_result("the answer")  # schedules the task's wake-up ...
    holder[0]("disconnected")  # ... and the interrupt lands before it runs
    with pytest.raises(Interrupted, match="disconnected"):
        await task


async def test_the_server_freezes_the_heap_once_its_model_has_loaded():
    """Full collections then skip torch's and the model's objects (a loaded server's p99 was the pause)."""
    import gc

    import httpx
    from asgi_lifespan import LifespanManager

    from chronoserve.server import create_app
    from chronoserve.testing import FakeLoader, fake_spec, server_settings

    model = "m"
    loader = FakeLoader(specs={model: fake_spec(model, family="chronos-bolt", supports_covariates=False)})
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        app = create_app(server_settings(default_model=model, warmup=False), loader=loader)
        async with LifespanManager(app) as manager:
            assert gc.get_freeze_count() == 0  # nothing loaded yet
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                r = await client.post("/forecast", json={"target": [1.0, 2.0, 3.0], "horizon_hours": 2})
            assert r.status_code == 200
            assert gc.get_freeze_count() > 0  # the load froze what existed
    finally:
        gc.unfreeze()
