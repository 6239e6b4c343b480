"""Deadlines in the engine and over HTTP: nothing runs after its deadline, shed requests say why."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from chronoserve import ForecastRequest
from chronoserve.errors import DeadlineExpired, DeadlineUnmeetable, PolicyError
from chronoserve.events import EngineObserver
from chronoserve.policy import Policy, Shed
from chronoserve.server import create_app
from chronoserve.testing import FakeClock, FakeLoader, fake_engine, fake_spec, server_settings


class Outcomes(EngineObserver):
    def __init__(self):
        self.seen = []

    def deadline_outcome(self, model, priority, outcome):
        self.seen.append((priority, outcome))


class Holding(Policy):
    """Dispatches nothing until ``release`` is set: requests wait in the queue."""

    name = "holding"

    def __init__(self):
        self.release = False

    def decide(self, state, now):
        from chronoserve.policy import Dispatch, Load

        out = []
        for model, queue in state.queues.items():
            if model not in state.models:
                out.append(Load(model))
            elif self.release and state.models[model].status == "ready" and state.free_slots:
                out.append(Dispatch(model, tuple(r.seq for r in queue)))
        return out


def request(deadline=None, priority=None):
    return ForecastRequest(model="fake", target=np.ones(8), horizon=2, deadline=deadline, priority=priority)


async def test_a_request_whose_deadline_passes_in_the_queue_fails_and_never_runs():
    clock = FakeClock()
    policy, outcomes = Holding(), Outcomes()
    loader = FakeLoader()
    async with fake_engine(policy, clock=clock, loader=loader, observers=[outcomes]) as engine:
        short = await engine.submit(request(deadline=0.2, priority=1))
        long = await engine.submit(request(deadline=5.0))
        none = await engine.submit(request())
        await asyncio.sleep(0)
        clock.advance(0.25)  # the engine's timer at the first deadline fires
        with pytest.raises(DeadlineExpired, match="deadline of 200 ms passed while the request was queued"):
            await short
        assert not long.done() and not none.done()
        policy.release = True
        await engine.forecast(request())  # a new arrival: the policy decides again, and runs all three
        await long
        await none
    assert loader.batch_sizes() == [3]  # the expired one never ran
    assert outcomes.seen == [(1, "deadline_expired"), (None, "met")]
    assert engine.stats().failed == 1


class Shedding(Policy):
    """Sheds every queued request with a deadline, predicting answers at ``now + 1``."""

    name = "shedding"

    def decide(self, state, now):
        out = []
        for queue in state.queues.values():
            doomed = tuple(r.seq for r in queue if r.deadline is not None)
            if doomed:
                out.append(Shed(doomed, predicted=now + 1.0))
        return out


async def test_a_shed_request_says_its_budget_and_the_predicted_time():
    outcomes = Outcomes()
    async with fake_engine(Shedding(), clock=FakeClock(start=10.0), observers=[outcomes]) as engine:
        with pytest.raises(DeadlineUnmeetable) as caught:
            await engine.forecast(request(deadline=0.25, priority=2))
    error = caught.value
    assert error.budget == 0.25 and error.predicted == pytest.approx(1.0) and error.retry_after == pytest.approx(0.75)
    assert "deadline of 250 ms cannot be met: its answer is predicted 1000 ms after arrival" in str(error)
    assert outcomes.seen == [(2, "deadline_unmeetable")]


async def test_shedding_a_request_without_a_deadline_is_a_policy_error():
    class Wrong(Policy):
        name = "wrong"

        def decide(self, state, now):
            return [Shed(tuple(r.seq for q in state.queues.values() for r in q))]

    async with fake_engine(Wrong()) as engine:
        with pytest.raises(PolicyError, match="has no deadline"):
            await engine.forecast(request())


async def test_an_answer_after_the_deadline_counts_as_late():
    """Dispatched in time, answered after its deadline: counted late (a miss), not hidden."""
    from chronoserve.testing import FakeModel

    outcomes = Outcomes()
    clock = FakeClock()

    class Slow(FakeModel):
        def predict(self, batch):
            clock.advance(1.0)  # the model takes a second of the fake clock
            return super().predict(batch)

    class Loader(FakeLoader):
        def load(self, spec):
            return Slow(spec)

    options = {"max_wait": 0, "max_batch": 1}
    async with fake_engine(clock=clock, loader=Loader(), observers=[outcomes], policy_options=options) as engine:
        await engine.forecast(request())  # loads the model
        in_time = await engine.forecast(request(deadline=5.0))
        late = await engine.forecast(request(deadline=0.5))
    assert in_time.timings.total == pytest.approx(1.0) and late.timings.total == pytest.approx(1.0)
    assert outcomes.seen == [(None, "met"), (None, "late")]


# -- over HTTP ------------------------------------------------------------------------------------


async def test_http_deadline_fields_headers_and_the_server_default_reach_the_engine():
    seen = []

    class Watching(Holding):
        def decide(self, state, now):
            for q in state.queues.values():
                seen.extend((r.deadline - r.arrival if r.deadline else None, r.priority) for r in q)
            self.release = True
            return super().decide(state, now)

    settings = server_settings(default_model="fake", default_deadline_ms=3000.0)
    app = create_app(settings, loader=FakeLoader(specs={"fake": fake_spec("fake")}))
    async with LifespanManager(app) as manager:
        app.state.runtime.engine.policy = Watching()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"target": [1.0, 2.0, 3.0]}
            assert (await client.post("/forecast", json={**body, "deadline_ms": 200, "priority": 1})).status_code == 200
            r = await client.post("/forecast", json=body, headers={"X-Deadline-Ms": "750", "X-Priority": "3"})
            assert r.status_code == 200
            r = await client.post("/forecast", json={**body, "deadline_ms": 100}, headers={"X-Deadline-Ms": "750"})
            assert r.status_code == 200  # the body wins over the header
            assert (await client.post("/forecast", json=body)).status_code == 200  # the server's default
            r = await client.post("/forecast/batch", json={"requests": [body, {**body, "priority": 2}]},
                                  headers={"X-Priority": "5"})  # fmt: skip
            assert [item["status"] for item in r.json()["results"]] == [200, 200]
    budgets = sorted({(round(d, 3), p) for d, p in seen if d is not None}, key=str)  # not the warm-up
    assert budgets == sorted({(0.2, 1), (0.75, 3), (0.1, None), (3.0, None), (3.0, 5), (3.0, 2)}, key=str)


@pytest.mark.parametrize(
    ("body", "headers", "where", "kind"),
    [
        ({"deadline_ms": 0}, {}, ["body", "deadline_ms"], "greater_than"),
        ({"deadline_ms": 1e12}, {}, ["body", "deadline_ms"], "less_than_equal"),
        ({"priority": 0}, {}, ["body", "priority"], "greater_than_equal"),
        ({"priority": "1"}, {}, ["body", "priority"], "int_type"),
        ({}, {"X-Deadline-Ms": "soon"}, ["header", "x-deadline-ms"], "invalid_header"),
        ({}, {"X-Deadline-Ms": "-5"}, ["header", "x-deadline-ms"], "invalid_header"),
        ({}, {"X-Priority": "high"}, ["header", "x-priority"], "invalid_header"),
    ],
)
async def test_bad_deadlines_and_priorities_get_422_naming_the_field_or_header(body, headers, where, kind):
    settings = server_settings(default_model="fake")
    app = create_app(settings, loader=FakeLoader(specs={"fake": fake_spec("fake")}))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/forecast", json={"target": [1.0, 2.0], **body}, headers=headers)
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["loc"] == where and detail["type"] == kind


async def test_http_statuses_for_a_shed_and_an_expired_request():
    settings = server_settings(default_model="fake")
    app = create_app(settings, loader=FakeLoader(specs={"fake": fake_spec("fake")}))
    async with LifespanManager(app) as manager:
        engine = app.state.runtime.engine
        engine.policy = Shedding()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/forecast", json={"target": [1.0, 2.0], "deadline_ms": 50})
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
            (detail,) = r.json()["detail"]
            assert detail["loc"] == ["body", "deadline_ms"] and detail["type"] == "deadline_unmeetable"
            assert detail["budget_ms"] == pytest.approx(50.0) and detail["predicted_ms"] == pytest.approx(1000.0, abs=5)
            engine.policy = Holding()  # never dispatches: the request waits until its deadline
            r = await client.post("/forecast", json={"target": [1.0, 2.0], "deadline_ms": 20})
            assert r.status_code == 504
            (detail,) = r.json()["detail"]
            assert detail["type"] == "deadline_expired" and detail["budget_ms"] == pytest.approx(20.0)
            metrics = (await client.get("/metrics")).text
    assert (
        'chronoserve_deadline_requests_total{model="fake",outcome="deadline_unmeetable",priority="none"} 1.0' in metrics
    )
    assert 'chronoserve_deadline_requests_total{model="fake",outcome="deadline_expired",priority="none"} 1.0' in metrics


async def test_each_item_of_a_batch_gets_its_own_deadline_answer():
    """Under the deadline policy, with a cost model that predicts 50 ms a batch (and has seen no load:
    it predicts none): the 40 ms item is refused at once, the one without a deadline is served."""
    from chronoserve.costs import BatchFeatures, CostModel

    costs = CostModel()
    for gflop in np.linspace(0.0, 1.0, 50):
        costs.observe_batch(BatchFeatures("fake", float(gflop), 1), 0.05)
    settings = server_settings(default_model="fake", policy="deadline", warmup=False)
    app = create_app(settings, loader=FakeLoader(specs={"fake": fake_spec("fake")}), engine_options={"costs": costs})
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"target": [1.0, 2.0, 3.0]}
            r = await client.post("/forecast/batch", json={"requests": [{**body, "deadline_ms": 40}, body]})
    first, second = r.json()["results"]
    assert r.status_code == 200 and first["status"] == 503 and second["status"] == 200
    (detail,) = first["error"]["detail"]
    assert detail["loc"] == ["body", "requests", 0, "deadline_ms"] and detail["type"] == "deadline_unmeetable"
    assert detail["budget_ms"] == pytest.approx(40.0) and detail["predicted_ms"] > 40.0


def test_the_deadline_book_pops_what_fell_due_and_forgets_what_left_the_queue():
    from chronoserve.deadlines import Deadlines

    book = Deadlines()
    for deadline, seq in [(3.0, 3), (1.0, 1), (2.0, 2), (5.0, 5)]:
        book.add(deadline, seq)
    gone = {1}  # answered before its deadline
    assert book.due(2.5, lambda seq: seq not in gone) == ([2], 3.0)
    assert book.due(2.5, lambda seq: True) == ([], 3.0)
    assert book.due(10.0, lambda seq: seq != 3) == ([5], None)
    assert len(book) == 0
