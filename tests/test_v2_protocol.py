"""The Open Inference Protocol (KServe v2) beside chronoserve's API, through the same engine: health,
metadata, inference in JSON and with the binary data extension, answers equal to ``/forecast``'s,
errors as ``{"error": ...}``; and the official ``tritonclient`` against a real ``serve``."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from test_frontends import pair
from test_serve_process import serve_process, stop, wait_ready
from test_server import FAKE, client_for

from chronoserve.testing import server_settings

NAN = float("nan")
ROWS = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [NAN, NAN, 7.0, NAN, 9.0, 8.0]]  # the second: shorter, padded
LEVELS = [0.1, 0.5, 0.9]


def infer_body(rows=ROWS, horizon=3, **parameters) -> dict:
    return {
        "id": "req-1",
        "inputs": [{"name": "history", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": rows}],
        "parameters": {"horizon": horizon, "quantile_levels": ",".join(map(str, LEVELS)), **parameters},
    }


def post_json(client: httpx.AsyncClient, path: str, body: dict):
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


async def test_health_and_metadata() -> None:
    async with client_for() as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        assert (await client.get("/v2")).json()["extensions"] == ["binary_tensor_data"]
        meta = (await client.get(f"/v2/models/{FAKE}")).json()  # a name with a slash, as tritonclient sends it
        assert meta["name"] == FAKE and meta["inputs"][0]["name"] == "history"
        assert {o["name"] for o in meta["outputs"]} == {"median", "quantiles", "quantile_levels"}
        assert meta["parameters"]["random_weights"] is True
        assert (await client.get(f"/v2/models/{FAKE}/versions/1/ready")).json()["ready"] is True
        missing = await client.get("/v2/models/no-such-model")
        assert missing.status_code == 404 and "not served here" in missing.json()["error"]


async def test_infer_answers_what_forecast_answers_row_by_row() -> None:
    async with client_for() as client:
        r = await post_json(client, f"/v2/models/{FAKE}/infer", infer_body())
        assert r.status_code == 200, r.text
        answer = r.json()
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert answer["model_name"] == FAKE and answer["id"] == "req-1"
        assert outputs["median"]["shape"] == [2, 3] and outputs["quantiles"]["shape"] == [2, 3, 3]
        median = np.asarray(outputs["median"]["data"]).reshape(2, 3)
        quantiles = np.asarray(outputs["quantiles"]["data"]).reshape(2, 3, 3)
        for i, row in enumerate(ROWS):
            history = [None if v != v else v for v in row]
            while history[0] is None:
                history.pop(0)  # the padding is not history
            own = (
                await client.post("/forecast", json={"target": history, "horizon_hours": 3, "quantile_levels": LEVELS})
            ).json()
            assert median[i].tolist() == pytest.approx(own["median"], rel=1e-6)
            for j, q in enumerate(LEVELS):
                assert quantiles[i, :, j].tolist() == pytest.approx(own["quantiles"][f"{q:g}"], rel=1e-6)


async def test_binary_tensors_in_and_out() -> None:
    history = np.asarray(ROWS, dtype="<f4")
    header = {
        "inputs": [
            {
                "name": "history",
                "datatype": "FP32",
                "shape": list(history.shape),
                "parameters": {"binary_data_size": history.nbytes},
            }
        ],
        "parameters": {"horizon": 2, "binary_data_output": True},
        "outputs": [
            {"name": "median", "parameters": {"binary_data": True}},
            {"name": "quantile_levels", "parameters": {"binary_data": False}},
        ],
    }
    head = json.dumps(header).encode()
    async with client_for() as client:
        r = await client.post(
            f"/v2/models/{FAKE}/infer",
            content=head + history.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
        )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    median_out, levels_out = meta["outputs"]
    assert median_out["parameters"]["binary_data_size"] == 2 * 2 * 4 and "data" not in median_out
    median = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 2)
    assert median[0].tolist() == [6.0, 6.0] and median[1].tolist() == [
        8.0,
        8.0,
    ]  # the fake model repeats the last value
    assert len(levels_out["data"]) == 9


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [{"name": "series", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, 400, "history"),
        ({"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, 400, "not numeric"),
        (
            {"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]},
            400,
            "2 values for shape",
        ),
        ({"inputs": [{"name": "history", "datatype": "FP32", "shape": [10**9, 10], "data": []}]}, 400, "too large"),
        (
            {"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, 2], "data": [1, "x"]}]},
            400,
            "NaN or null",
        ),
        (infer_body(horizon=0), 400, "parameter 'horizon'"),
        (
            infer_body(horizon=5000),
            400,
            "horizon: 5000 exceeds",
        ),  # beyond what the model produces: the engine's refusal
        (infer_body(lower_bound="zero"), 400, "lower_bound: must be a number"),
    ],
)
async def test_bad_requests_are_400_with_an_error(body: dict, status: int, message: str) -> None:
    async with client_for() as client:
        r = await post_json(client, f"/v2/models/{FAKE}/infer", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


async def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    head = json.dumps(
        {"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 12}}]}
    ).encode()
    async with client_for() as client:
        wrong = await client.post(
            f"/v2/models/{FAKE}/infer",
            content=head + b"\0" * 12,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        beyond = await client.post(
            f"/v2/models/{FAKE}/infer", content=head, headers={"Inference-Header-Content-Length": str(len(head) + 5)}
        )
    assert wrong.status_code == 400 and "binary_data_size" in wrong.json()["error"]
    assert beyond.status_code == 400 and "beyond the body" in beyond.json()["error"]


async def test_keys_guard_inference_but_not_health() -> None:
    key = "api-key-0123456789abcdef"
    settings = server_settings(default_model=FAKE, policy_options={"max_wait": 0.001}, api_keys=(key,))
    async with client_for(settings) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await post_json(client, f"/v2/models/{FAKE}/infer", infer_body())).status_code == 401
        ok = await client.post(
            f"/v2/models/{FAKE}/infer", content=json.dumps(infer_body()), headers={"Authorization": f"Bearer {key}"}
        )
        assert ok.status_code == 200


async def test_through_a_front_end(tmp_path) -> None:
    async with pair(tmp_path) as (_, client, _runtime):
        r = await post_json(client, f"/v2/models/{FAKE}/infer", infer_body(lower_bound=6.5))
        assert r.status_code == 200, r.text
        median = {o["name"]: o for o in r.json()["outputs"]}["median"]["data"]
        assert median == [6.5, 6.5, 6.5, 8.0, 8.0, 8.0] and r.json()["parameters"]["clipped_values"] > 0
        assert (await client.get(f"/v2/models/{FAKE}")).json()["name"] == FAKE  # forwarded to the engine


@pytest.mark.slow
@pytest.mark.torch
def test_the_official_tritonclient_against_serve(tmp_path) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    model = "random/tiny-chronos-bolt"
    with serve_process("--default-model", model, "--backend", "torch") as (url, proc):
        wait_ready(url, proc, timeout=180)
        client = httpclient.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=120)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
        assert client.get_model_metadata(model)["name"] == model
        series = np.asarray(
            [np.sin(np.arange(64) / 4.0) * 10 + 20, np.cos(np.arange(64) / 3.0) * 5 + 9], dtype=np.float32
        )
        series[1, :10] = np.nan  # a shorter second series, padded
        history = httpclient.InferInput("history", list(series.shape), "FP32")
        history.set_data_from_numpy(series)  # binary, tritonclient's default
        result = client.infer(model, [history], parameters={"horizon": 4, "quantile_levels": "0.1,0.5,0.9"})
        median, quantiles = result.as_numpy("median"), result.as_numpy("quantiles")
        assert median.shape == (2, 4) and quantiles.shape == (2, 4, 3)
        for i in range(2):
            target = [float(v) for v in series[i] if v == v]
            own = httpx.post(
                f"{url}/forecast",
                json={"target": target, "horizon_hours": 4, "quantile_levels": [0.1, 0.5, 0.9], "model_name": model},
                timeout=60,
            ).json()
            np.testing.assert_allclose(median[i], own["median"], rtol=1e-5)
            np.testing.assert_allclose(quantiles[i, :, 0], own["quantiles"]["0.1"], rtol=1e-5)
        client.close()
        stop(proc)
