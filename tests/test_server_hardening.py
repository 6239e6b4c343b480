"""A hostile client cannot hang, crash or starve the server: one test per class of attack found.

In-process (httpx's ASGI transport, fake models); the connection-level classes (slow clients,
header sizes, connection caps, shutdown) run against a real server in test_serve_hygiene.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import httpx
import pytest
from test_server import FAKE, client_for, fake_loader, loc
from waiting import until

from chronoserve.limits import MAX_HORIZON, MAX_MODEL_NAME
from chronoserve.server import ServerSettings
from chronoserve.server.schemas import MAX_BATCH_ITEMS
from chronoserve.testing import server_settings

C2 = "random/chronos-2"


def settings(**kw) -> ServerSettings:
    return server_settings(default_model=FAKE, policy_options={"max_wait": 0.001}, **kw)


async def post(client: httpx.AsyncClient, body: object, path: str = "/forecast") -> httpx.Response:
    return await client.post(path, json=body)


# -- 1. work sized by untrusted numbers ----------------------------------------------------------

HUGE_NUMBERS = [
    ({"target": [1.0], "horizon_hours": 2755369720, "start": "2000-01-01T00:00:01Z"}, "horizon_hours"),
    ({"target": [1.0], "horizon_hours": 18446744073709551615, "freq_hours": 1e-12}, "horizon_hours"),
    ({"target": [1.0], "horizon_hours": 10**7, "start": "2000-01-01T00:00:00"}, "horizon_hours"),
    # within every schema bound, beyond the model's horizon: refused before any timestamp is built
    ({"target": [1.0], "horizon_hours": MAX_HORIZON, "start": "2000-01-01T00:00:00"}, "horizon_hours"),
    ({"city": "dongsi", "horizon_hours": MAX_HORIZON}, "horizon_hours"),
    ({"target": [1.0], "horizon_hours": 2, "context_hours": 10**12}, "context_hours"),
    ({"target": [1.0], "horizon_hours": 2, "seed": 2**70}, "seed"),
    ({"target": [1.0], "horizon_hours": 2, "quantile_levels": [i / 1000 for i in range(1, 999)]}, "quantile_levels"),
]


@pytest.mark.parametrize(("body", "field"), HUGE_NUMBERS)
async def test_huge_numbers_are_refused_naming_the_field(body, field):
    async with client_for(settings()) as client:
        r = await post(client, body)
    assert r.status_code == 422, r.text
    assert loc(r)[:2] == ["body", field]


async def test_a_batch_of_huge_horizons_is_refused_whole_before_any_work():
    loader = fake_loader()
    async with client_for(settings(), loader=loader) as client:
        batch = {"requests": [{"target": [1.0, 2.0], "horizon_hours": 10**5} for _ in range(100)]}
        r = await post(client, batch, "/forecast/batch")
        assert r.status_code == 422
        assert loc(r)[:4] == ["body", "requests", 0, "horizon_hours"]
        # within the schema's bound but beyond the model's: each item refused on its own
        batch = {"requests": [{"target": [1.0, 2.0], "horizon_hours": 1000, "start": "2000-01-01T00:00:00"}] * 100}
        r = await post(client, batch, "/forecast/batch")
    assert r.status_code == 200
    items = r.json()["results"]
    assert {i["status"] for i in items} == {422}
    assert items[7]["error"]["detail"][0]["loc"] == ["body", "requests", 7, "horizon_hours"]
    assert loader.batch_sizes(FAKE) == [1]  # the warm-up only


# -- 2. overflow never becomes a 500 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target": [1.0], "horizon_hours": 3, "start": "9999-12-31T22:00:00"}, "start"),
        ({"target": [1.0], "horizon_hours": 3, "start": "9999-12-31T22:00:00+05:00"}, "start"),
        ({"target": [1.0], "horizon_hours": 3, "start": "2000-01-01T00:00:00", "freq_hours": 1e300}, "start"),
        ({"target": [1.0] * 50, "horizon_hours": 24, "start": "9990-01-01T00:00:00", "freq_hours": 4000}, "start"),
        ({"target": [1.0], "horizon_hours": 3, "start": "2000-01-01T00:00:00", "freq_hours": 1e-12}, "freq_hours"),
        ({"target": [1.0], "horizon_hours": 3, "freq_hours": 0}, "freq_hours"),
        ({"target": [1e300], "horizon_hours": 3}, "target"),
        ({"target": [1.0], "horizon_hours": 3, "quantile_levels": [1e-320]}, None),
    ],
)
async def test_overflowing_time_axes_and_values_get_422_not_500(body, field):
    async with client_for(settings()) as client:
        r = await post(client, body)
    assert r.status_code in (200, 422), r.text
    if field is not None:
        assert r.status_code == 422 and loc(r)[:2] == ["body", field], r.text


async def test_the_last_existing_timestamps_are_served_with_their_offset():
    async with client_for(settings()) as client:
        r = await post(client, {"target": [1.0, 2.0], "horizon_hours": 3, "start": "9999-12-31T19:00:00+05:00"})
    assert r.status_code == 200, r.text
    assert r.json()["timestamps"] == [
        "9999-12-31T21:00:00+05:00",
        "9999-12-31T22:00:00+05:00",
        "9999-12-31T23:00:00+05:00",
    ]


# -- 3. covariates and cost ---------------------------------------------------------------------


def covariate_body(n: int, length: int = 48) -> dict:
    return {
        "model_name": C2,
        "target": [1.0] * length,
        "horizon_hours": 4,
        "past_covariates": {f"c{i}": [0.5] * length for i in range(n)},
    }


async def test_covariates_beyond_the_server_limit_are_refused_before_a_worker_sees_them():
    loader = fake_loader()
    async with client_for(settings(max_covariates=4), loader=loader) as client:
        r = await post(client, covariate_body(600))
        assert r.status_code == 422 and loc(r)[:2] == ["body", "past_covariates"]
        assert "at most 4" in r.json()["detail"][0]["msg"]
        r = await post(client, covariate_body(5))
        assert r.status_code == 422
        assert (await post(client, covariate_body(4))).status_code == 200
    assert loader.batch_sizes(C2) == [1]


async def test_a_request_over_the_cost_budget_gets_422_too_costly_naming_the_field():
    loader = fake_loader()
    async with client_for(settings(max_request_gflop=0.5), loader=loader) as client:
        cheap = await post(client, covariate_body(1, length=64))
        assert cheap.status_code == 200, cheap.text
        r = await post(client, covariate_body(30, length=8000))
        assert r.status_code == 422
        detail = r.json()["detail"][0]
        assert detail["type"] == "too_costly" and "GFLOP" in detail["msg"]
        assert detail["loc"] == ["body", "context_hours"] or detail["loc"] == ["body", "past_covariates"]
        metrics = (await client.get("/metrics")).text
    assert 'chronoserve_rejected_requests_total{reason="too_costly"} 1.0' in metrics
    assert loader.batch_sizes(C2) == [1]


async def test_a_batch_past_max_inference_seconds_answers_504():
    loader = fake_loader(hang={C2})
    async with client_for(settings(max_inference_seconds=0.2), loader=loader) as client:
        r = await post(client, {"model_name": C2, "target": [1.0, 2.0], "horizon_hours": 2})
        assert r.status_code == 504, r.text
        assert "max_inference_seconds" in r.json()["detail"]
        # the worker is free again
        assert (await post(client, {"target": [1.0, 2.0], "horizon_hours": 2})).status_code == 200


# -- 4. readiness tells the truth ---------------------------------------------------------------


async def test_a_failing_extra_model_does_not_keep_the_server_from_being_ready():
    loader = fake_loader(fail_load={"/models/mine"})
    s = settings(models=("/models/mine",))
    async with client_for(s, loader=loader, load_retry=(30.0, 300.0)) as client:
        # the warm-up of the extras runs in the background: wait for its outcome (the load runs in
        # a thread; its failure is recorded when the thread is done, after the load has started)
        async def load_failed() -> bool:
            return bool((await client.get("/readyz")).json().get("failed_models"))

        await until(load_failed, "the extra model's failed load")
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        failed = ready.json()["failed_models"]
        assert [f["name"] for f in failed] == ["/models/mine"] and "told to fail" in failed[0]["error"]
        assert 0 < failed[0]["retry_in_seconds"] <= 30
        models = (await client.get("/models")).json()
        assert [f["name"] for f in models["failed"]] == ["/models/mine"]
        # requests for it are refused at once, saying when it is tried again, and do not reload it
        for _ in range(3):
            r = await post(client, {"model_name": "/models/mine", "target": [1.0], "horizon_hours": 2})
            assert r.status_code == 503
            assert 1 <= int(r.headers["retry-after"]) <= 30
        assert loader.loads["/models/mine"] == 1
        assert (await post(client, {"target": [1.0], "horizon_hours": 2})).status_code == 200


async def test_a_failing_default_model_is_retried_until_it_loads_without_exit_on_error():
    loader = fake_loader(fail_load={FAKE})
    async with client_for(settings(exit_on_error=False), loader=loader, load_retry=(0.01, 0.02)) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "default_model_failed" and "told to fail" in r.json()["error"]
        loader.fail_load.clear()

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await until(ready, "ready: the next retry loads it")
        assert (await client.get("/readyz")).json()["status"] == "ready"
    assert loader.loads[FAKE] >= 2


# -- 5. canonical model names -------------------------------------------------------------------


async def test_spellings_of_a_model_name_are_one_model_and_one_metric_label():
    loader = fake_loader()
    async with client_for(settings(), loader=loader) as client:
        for name in (FAKE, f"{FAKE} ", f"  {FAKE}", f" {FAKE}   "):
            r = await post(client, {"model_name": name, "target": [1.0, 2.0], "horizon_hours": 2})
            assert r.status_code == 200, r.text
            assert r.json()["model"]["name"] == FAKE
        metrics = (await client.get("/metrics")).text
    assert loader.loads == {FAKE: 1}
    labels = {line.split('model="')[1].split('"')[0] for line in metrics.splitlines() if 'model="' in line}
    assert labels == {FAKE}


async def test_unknown_names_never_become_metric_labels():
    async with client_for(settings()) as client:
        before = len((await client.get("/metrics")).text)
        for i in range(300):
            r = await post(client, {"model_name": f"no/such-model-{i}", "target": [1.0], "horizon_hours": 2})
            assert r.status_code == 422 and loc(r)[:2] == ["body", "model_name"]
        after = (await client.get("/metrics")).text
    assert "no/such-model" not in after
    assert len(after) < before + 2000  # counters by status, not by name


@pytest.mark.parametrize("name", ["x" * (MAX_MODEL_NAME + 1), "", "   ", "random/chronos\n-bolt-tiny", "a\x00b"])
async def test_names_that_cannot_be_names_are_refused(name):
    async with client_for(settings()) as client:
        r = await post(client, {"model_name": name, "target": [1.0], "horizon_hours": 2})
    assert r.status_code == 422 and loc(r)[:2] == ["body", "model_name"], r.text


# -- 8. strict types, media types, locations ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"city": "dongsi", "horizon_hours": True}, "horizon_hours"),
        ({"city": "dongsi", "horizon_hours": "24"}, "horizon_hours"),
        ({"city": "dongsi", "horizon_hours": 24.5}, "horizon_hours"),
        ({"target": ["1"], "horizon_hours": 2}, "target"),
        ({"target": [1.0], "horizon_hours": 2, "seed": "1"}, "seed"),
        ({"city": "dongsi", "use_covariates": 1}, "use_covariates"),
        ({"city": "dongsi", "end": 1480550400}, "end"),
        ({"target": [1.0], "start": "yesterday"}, "start"),
    ],
)
async def test_types_are_not_coerced(body, field):
    async with client_for(settings()) as client:
        r = await post(client, body)
    assert r.status_code == 422, r.text
    assert loc(r)[:2] == ["body", field]


@pytest.mark.parametrize("content", [b'{"target": [NaN], "horizon_hours": 2}', b'{"target": [Infinity]}'])
async def test_non_finite_numbers_are_refused(content):
    async with client_for(settings()) as client:
        r = await client.post("/forecast", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422 and loc(r)[:2] == ["body", "target"], r.text


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_a_body_that_is_not_json_by_its_content_type_gets_415(content_type):
    async with client_for(settings()) as client:
        r = await client.post("/forecast", content=b'{"city": "dongsi"}', headers={"content-type": content_type})
        assert r.status_code == 415
        assert r.json()["detail"][0]["loc"] == ["header", "content-type"]
        for ok in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json", None):
            headers = {"content-type": ok} if ok else {}
            r = await client.post("/forecast", content=b'{"city": "dongsi", "horizon_hours": 2}', headers=headers)
            assert r.status_code == 200, (ok, r.text)


async def test_the_openapi_examples_are_valid_requests():
    async with client_for(settings()) as client:
        document = (await client.get("/openapi.json")).json()
        examples = document["components"]["schemas"]["ForecastIn"]["examples"]
        assert len(examples) >= 2
        for example in examples:
            body = {**example, "model_name": C2} if "use_covariates" in example else example
            r = await post(client, body)
            assert r.status_code == 200, (example, r.text)


# -- the event loop stays free ------------------------------------------------------------------


async def loop_lag_while(work: Awaitable[object]) -> float:
    """The longest the event loop went without running a 10 ms ticker while ``work`` ran."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    probe = asyncio.ensure_future(ticker())
    try:
        await work
    finally:
        done.set()
        await probe
    return worst


WORST_OF_EACH_CLASS = [
    {"target": [1.0], "horizon_hours": 2755369720, "start": "2000-01-01T00:00:01Z"},
    {"target": [1.0], "horizon_hours": MAX_HORIZON, "start": "2000-01-01T00:00:00"},
    {"target": [1.0], "horizon_hours": 3, "start": "2000-01-01T00:00:00", "freq_hours": 1e300},
    {"target": [1.0], "horizon_hours": 18446744073709551615, "freq_hours": 1e-12},
    covariate_body(1000, length=20),
    {"model_name": "x" * 100_000, "target": [1.0]},
    # 1,000 items (the most a batch takes): 100 held the loop 9 s before the fix, these would hold it ~90 s
    {"requests": [{"target": [1.0, 2.0], "horizon_hours": 10**5}] * MAX_BATCH_ITEMS},
]
#: Seconds the loop may go without a tick: a hang guard, not a speed limit. The fixed server's lag
#: is milliseconds (tens on a loaded machine); before the fix the reproducers held the loop 148 s
#: (horizon 2.7e9), forever (2^64 steps of 1e-12 h) and 9 s (a batch of 100 items; the batch here
#: has 1,000, ~90 s then): each still far past this bound, which no load of the machine comes near.
MAX_LOOP_LAG_S = 30.0


async def test_the_loop_stays_free_while_the_worst_request_of_each_class_is_in_flight():
    async with client_for(settings(max_body_bytes=1 << 20)) as client:

        async def all_of_them() -> list[httpx.Response]:
            calls = [
                post(client, b, "/forecast/batch" if "requests" in b else "/forecast") for b in WORST_OF_EACH_CLASS
            ]
            return await asyncio.gather(*calls)

        responses: list[httpx.Response] = []

        async def run() -> None:
            responses.extend(await all_of_them())

        lag = await loop_lag_while(run())
    assert [r.status_code for r in responses] == [422] * len(WORST_OF_EACH_CLASS), [r.text for r in responses]
    assert lag < MAX_LOOP_LAG_S, lag


# -- answers are bounded too ---------------------------------------------------------------------


async def test_a_batch_whose_answer_would_be_huge_is_refused_before_any_work():
    loader = fake_loader()
    levels = [i / 100 for i in range(1, 100)]
    item = {"model_name": C2, "target": [1.0], "horizon_hours": 1024, "quantile_levels": levels}
    async with client_for(settings(), loader=loader) as client:
        r = await post(client, {"requests": [item] * 1000}, "/forecast/batch")
        assert r.status_code == 422
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "requests"] and detail["type"] == "too_costly"
        assert "split the batch" in detail["msg"]
        r = await post(client, {"requests": [item] * 9}, "/forecast/batch")  # 9 x 1024 x 101 numbers: fine
        assert r.status_code == 200 and {i["status"] for i in r.json()["results"]} == {200}
    assert sum(loader.batch_sizes(C2)) == 9  # the 1,000 were never run


async def test_integral_numbers_are_integers_as_json_says():
    async with client_for(settings()) as client:
        r = await post(client, {"city": "dongsi", "horizon_hours": 4.0, "context_hours": 48.0, "seed": 0.0})
    assert r.status_code == 200, r.text
    assert len(r.json()["median"]) == 4 and r.json()["context_used"] == 48


async def test_unknown_routes_and_methods_answer_json():
    async with client_for(settings()) as client:
        missing = await client.get("/nowhere")
        wrong = await client.put("/forecast", json={})
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert wrong.status_code == 405 and wrong.json() == {"detail": "Method Not Allowed"}
    assert "POST" in wrong.headers["allow"]


async def test_the_served_document_names_the_servers_default_model():
    async with client_for(settings()) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["components"]["schemas"]["ForecastIn"]["properties"]["model_name"]["default"] == FAKE


async def test_an_app_can_be_started_again_after_a_shutdown():
    from asgi_lifespan import LifespanManager

    from chronoserve.server import create_app

    app = create_app(settings(), loader=fake_loader())
    for _ in range(2):
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                r = await post(client, {"target": [1.0, 2.0], "horizon_hours": 2})
                assert r.status_code == 200, r.text
