"""Property-based fuzz of the HTTP API from its own OpenAPI schema (schemathesis + hypothesis).

Valid and invalid bodies for /forecast and /forecast/batch: the server never answers 5xx,
never hangs, and every 422 names a location.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from chronoserve import __version__  # noqa: E402
from chronoserve.server import ServerSettings, create_app  # noqa: E402
from chronoserve.server.schemas import openapi_document  # noqa: E402
from chronoserve.testing import FakeLoader, fake_spec  # noqa: E402

pytestmark = pytest.mark.slow

SCHEMA = schemathesis.openapi.from_dict(openapi_document(__version__))
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    specs = {
        name: fake_spec(name, family=family, context_length=ctx, max_horizon=h, supports_covariates=cov, batch_patch=p)
        for name, family, ctx, h, cov, p in [
            ("random/chronos-bolt-tiny", "chronos-bolt", 2048, 64, False, None),
            ("random/chronos-2", "chronos-2", 8192, 1024, True, 16),
        ]
    }
    app = create_app(
        ServerSettings(
            default_model="random/chronos-bolt-tiny", max_body_bytes=256 * 1024, policy_options={"max_wait": 0.0005}
        ),
        loader=FakeLoader(specs=specs),
    )
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def _check(client: TestClient, case) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    start = time.monotonic()
    response = client.request(
        kwargs["method"], kwargs["url"], headers=kwargs.get("headers"), json=kwargs.get("json"),
        params=kwargs.get("params"),
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert response.status_code < 500, (response.status_code, response.text, kwargs.get("json"))
    assert elapsed < 10, f"took {elapsed:.1f} s"
    if response.status_code == 422:
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail and all("loc" in d and d["msg"] for d in detail)


@pytest.mark.parametrize("path", ["/forecast", "/forecast/batch"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_no_server_error_and_no_hang(client, path, mode):
    strategy = SCHEMA[path]["POST"].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    def run(case) -> None:
        _check(client, case)

    run()


@given(
    body=st.fixed_dictionaries(
        {"city": st.sampled_from(["dongsi", "tiantan", "Dongsi", "nowhere"])},
        optional={
            "horizon_hours": st.integers(-5, 2000),
            "context_hours": st.integers(-5, 9000),
            "end": st.datetimes().map(lambda d: d.isoformat()),
            "use_covariates": st.booleans(),
            "known_future_covariates": st.booleans(),
            "model_name": st.sampled_from(["random/chronos-bolt-tiny", "random/chronos-2", "x/y", "../../etc"]),
            "quantile_levels": st.lists(st.floats(allow_nan=True), max_size=5),
        },
    )
)
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_city_requests_with_plausible_values_never_5xx(client, body):
    # json.dumps writes NaN as a bare `NaN`, which is not JSON: the server must say so (422), not fail.
    content = json.dumps(body)
    response = client.post("/forecast", content=content, headers={"content-type": "application/json"})
    assert response.status_code in (200, 422), (response.status_code, response.text, body)
