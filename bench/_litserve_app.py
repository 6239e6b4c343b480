"""LitServe serving chronoserve's own model backends: the reference server of bench/serving.py.

    python bench/_litserve_app.py --port 8123 --models random/chronos-bolt-tiny,random/chronos-2 \\
        --max-batch 32 --max-wait-ms 10 --workers 1 --torch-threads 2

``POST /forecast`` takes the same JSON body as chronoserve's ``POST /forecast`` (LitServe's
route is configured with ``api_path="/forecast"``) and answers with a body of the same shape
(``median``, ``quantiles``, ``model``, ``batch_size``, ``timings``), so the replayer's
``HTTPTarget`` drives it exactly as it drives ``chronoserve serve``. ``GET /health`` is 200
once every worker has loaded (and warmed up) all the models.

LitServe does the HTTP, the queueing and the batching (``max_batch_size=B``,
``batch_timeout=Δt``: one batch of up to B requests, whatever their models, collected for at
most Δt). Inside ``predict`` the batch is split by (model, batch key) exactly like
chronoserve's ``batched`` policy splits its queue, and each group runs through chronoserve's
backend (``ChronosLoader().load(spec).predict``): the same code path as the engine's workers,
so the answers are the same. ``decode_request`` builds the request with
``chronoserve.server.convert.build_request`` and ``chronoserve.request.prepare``, as the server
does. Only the inference time is measured (inside ``predict``); LitServe does not hand the
time a request waited in its queue to the API, so ``timings`` holds ``inference`` alone.

Offline: LitServe itself makes no network calls; ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``
are set, the random checkpoints load from the local cache, ``generate_client_file`` is off.
SIGTERM (or SIGINT) shuts LitServe down gracefully (exit 0).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import litserve as ls


@dataclass
class _Item:
    """One decoded request: ready to run, or the 422 it gets."""

    prepared: Any = None  # chronoserve.server.convert.ItemRequest
    request: Any = None  # chronoserve.models.base.PreparedRequest
    model: str | None = None
    error: dict[str, Any] | None = None


@dataclass
class _Output:
    item: _Item
    forecast: Any = None  # chronoserve.models.base.Forecast
    batch_size: int = 0
    litserve_batch: int = 0
    inference: float = 0.0
    error: dict[str, Any] | None = None


class ChronosLitAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, models: list[str], torch_threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        import torch

        from chronoserve.data import SeriesStore
        from chronoserve.models.loader import ChronosLoader
        from chronoserve.request import ForecastRequest, prepare

        self.store = SeriesStore.embedded()
        loader = ChronosLoader(torch_threads=self.torch_threads)
        self.specs = {name: loader.resolve(name) for name in self.models}
        self.backends = {name: loader.load(spec) for name, spec in self.specs.items()}
        torch.set_num_threads(self.torch_threads)
        # Warm-up, like chronoserve serve's: one tiny forecast per model before ready.
        for name, spec in self.specs.items():
            warm = ForecastRequest(model=name, target=[float(i % 24) for i in range(64)], horizon=1)
            self.backends[name].predict([prepare(warm, spec)])
        print(
            f"litserve worker ready: pid {os.getpid()}, torch threads {torch.get_num_threads()}, "
            f"models {', '.join(self.models)}",
            flush=True,
        )

    # No annotation on ``request`` nor on encode_response's return: LitServe reads them to type
    # its FastAPI route (unannotated: the raw request, parsed as JSON, and a plain response).
    def decode_request(self, request, **kwargs):  # type: ignore[no-untyped-def]
        from pydantic import ValidationError

        from chronoserve.errors import InvalidRequest
        from chronoserve.request import prepare
        from chronoserve.server.convert import build_request, http_field
        from chronoserve.server.schemas import ForecastIn

        # A bad request must not fail the whole LitServe batch: it becomes an item with its 422.
        try:
            item = ForecastIn.model_validate(request, strict=False)  # decoded by LitServe: dates are strings
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            return _Item(error={"loc": ["body", *first["loc"]], "msg": first["msg"], "type": first["type"]})
        if item.model_name not in self.specs:
            msg = f"model {item.model_name!r} is not served here ({', '.join(self.models)})"
            return _Item(error={"loc": ["body", "model_name"], "msg": msg, "type": "unknown_model"})
        try:
            prepared = build_request(item, self.store, item.model_name)
            spec = self.specs[item.model_name]
            return _Item(prepared, prepare(prepared.request, spec), item.model_name)
        except InvalidRequest as exc:
            return _Item(error={"loc": ["body", http_field(exc.field, item)], "msg": exc.message, "type": "invalid"})

    def predict(self, x: list[_Item], **kwargs: Any) -> list[_Output]:
        from chronoserve.models.base import batch_key, covariate_signature

        outputs = [_Output(item, error=item.error, litserve_batch=len(x)) for item in x]
        groups: dict[tuple[str, Any], list[int]] = {}
        for i, item in enumerate(x):
            if item.error is None:
                assert item.model is not None
                r = item.request
                key = batch_key(
                    self.specs[item.model], r.horizon, covariate_signature(r.past_covariates, r.future_covariates)
                )
                groups.setdefault((item.model, key), []).append(i)
        for (model, _), indices in groups.items():
            start = time.perf_counter()
            try:
                forecasts = self.backends[model].predict([x[i].request for i in indices])
            except Exception as exc:  # that group fails, the others run
                for i in indices:
                    outputs[i].error = {"loc": ["body"], "msg": f"{type(exc).__name__}: {exc}", "type": "inference"}
                continue
            elapsed = time.perf_counter() - start
            for i, forecast in zip(indices, forecasts, strict=True):
                outputs[i].forecast, outputs[i].batch_size, outputs[i].inference = forecast, len(indices), elapsed
        return outputs

    def unbatch(self, output: list[_Output]) -> list[_Output]:
        return output

    def encode_response(self, output, **kwargs):  # type: ignore[no-untyped-def]
        from fastapi.responses import JSONResponse

        if output.error is not None:
            status = 500 if output.error["type"] == "inference" else 422
            return JSONResponse(status_code=status, content={"detail": [output.error]})
        item, forecast = output.item, output.forecast
        spec = self.specs[item.model]
        request = item.prepared.request
        levels = item.request.quantile_levels
        return {
            "request_id": request.request_id,
            "model": {"name": spec.name, "family": spec.family, "random_weights": spec.random_weights},
            "policy": "litserve",
            "series": item.prepared.series,
            "timestamps": item.prepared.timestamps(len(forecast.median)),
            "median": [_finite(v) for v in forecast.median.tolist()],
            "quantile_levels": list(levels),
            "quantiles": {
                f"{q:g}": [_finite(v) for v in forecast.quantiles[:, j].tolist()] for j, q in enumerate(levels)
            },
            "batch_size": output.batch_size,
            "litserve_batch_size": output.litserve_batch,
            "cold_start": False,
            "timings": {"inference": output.inference},
            "context_used": len(item.request.context),
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", required=True, help="comma-separated: loaded (and warmed up) in setup")
    parser.add_argument("--max-batch", type=int, default=32, help="LitAPI max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="LitAPI batch_timeout, in milliseconds")
    parser.add_argument("--workers", type=int, default=1, help="LitServer workers_per_device (processes)")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch threads in each worker")
    parser.add_argument("--fast-queue", action="store_true", help="LitServer fast_queue=True (ZMQ transport)")
    args = parser.parse_args()

    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked child (uvicorn's process) inherited this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt  # LitServer.run shuts down gracefully on KeyboardInterrupt

    # LitServer.run handles KeyboardInterrupt but not SIGTERM (which would orphan its workers).
    signal.signal(signal.SIGTERM, stop)
    api = ChronosLitAPI(
        models=[m for m in args.models.split(",") if m],
        torch_threads=args.torch_threads,
        max_batch_size=args.max_batch,
        batch_timeout=args.max_wait_ms / 1000.0,
        api_path="/forecast",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=args.workers,
        timeout=False,  # like chronoserve with --max-queue 100000: no request is refused for waiting
        fast_queue=args.fast_queue,
    )
    print(
        f"litserve {ls.__version__}: B={args.max_batch}, batch_timeout={args.max_wait_ms / 1000.0}s, "
        f"{args.workers} worker process(es) x {args.torch_threads} torch threads, fast_queue={args.fast_queue}",
        flush=True,
    )
    # access_log off: chronoserve serve logs no line per request either.
    server.run(host=args.host, port=args.port, generate_client_file=False, access_log=False)


if __name__ == "__main__":
    main()
