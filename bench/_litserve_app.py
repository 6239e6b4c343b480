"""LitServe as the reference server of bench/serving.py and bench/http.py, in two modes.

    python bench/_litserve_app.py --port 8123 --models random/chronos-bolt-tiny,random/chronos-2 \\
        --max-batch 32 --max-wait-ms 10 --workers 1 --torch-threads 2          # chronoserve's backends
    python bench/_litserve_app.py --mode upstream --port 8123 --models random/chronos-bolt-tiny \\
        --max-batch 32 --max-wait-ms 10 --workers 2 --torch-threads 1          # the upstream pipeline

``--mode chronoserve`` (the default) serves chronoserve's own model backends inside LitServe
(``--backend NAME`` is handed to ``ChronosLoader(backend=NAME)``); ``--mode upstream`` serves
the model the way a LitServe user writes it (see ``UpstreamChronosAPI`` below). Both answer
the same ``POST /forecast`` bodies with the same answer shape.

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

``--mode upstream``: what a LitServe user serving Chronos writes, with nothing of chronoserve
on the request path. ``setup`` loads ``chronos.BaseChronosPipeline.from_pretrained(path)``
(float32; ``path`` is the model's checkpoint: for ``random/...`` names the directory
chronoserve materialised, found with ``ChronosLoader.resolve``, which reads no weights);
``decode_request`` turns the body's ``target`` into a tensor (``null`` as NaN) and reads
``horizon_hours`` (24) and ``quantile_levels`` ([0.1, 0.5, 0.9]); LitServe batches
(``max_batch_size``, ``batch_timeout``); ``batch`` keeps the list; ``predict`` calls
``pipeline.predict_quantiles`` once per (horizon, levels) in the batch, on the list of context
tensors (upstream left-pads them), with 0.5 added to the levels for the median; ``unbatch``
and ``encode_response`` give each request its ``median`` and ``quantiles``. LitServer's own
defaults otherwise (its 30 s request timeout included). ``--torch-threads`` unset leaves torch
at its default (one thread per core), as LitServe does.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

# Run as a script, this file's folder comes first on sys.path, and bench/http.py would stand in
# for the standard library's ``http`` (which LitServe's FastAPI and uvicorn import).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import litserve as ls  # noqa: E402

#: ``--mode upstream``: the answer's defaults where the body gives none (chronoserve's, docs/http.md).
DEFAULT_HORIZON = 24
DEFAULT_LEVELS = (0.1, 0.5, 0.9)


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
    def __init__(self, models: list[str], torch_threads: int | None, backend: str = "torch", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.torch_threads = torch_threads
        self.backend = backend

    def setup(self, device: str) -> None:
        import torch

        from chronoserve.data import SeriesStore
        from chronoserve.models.loader import ChronosLoader
        from chronoserve.request import ForecastRequest, prepare

        self.store = SeriesStore.embedded()
        # ``backend`` only when it is not the default: older loaders have no such keyword (see main).
        extra = {} if self.backend == "torch" else {"backend": self.backend}
        loader = ChronosLoader(torch_threads=self.torch_threads, **extra)
        self.specs = {name: loader.resolve(name) for name in self.models}
        self.backends = {name: loader.load(spec) for name, spec in self.specs.items()}
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        # Warm-up, like chronoserve serve's: one tiny forecast per model before ready.
        for name, spec in self.specs.items():
            warm = ForecastRequest(model=name, target=[float(i % 24) for i in range(64)], horizon=1)
            self.backends[name].predict([prepare(warm, spec)])
        print(
            f"litserve worker ready: pid {os.getpid()}, torch threads {torch.get_num_threads()}, "
            f"backend {self.backend}, models {', '.join(self.models)}",
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


class UpstreamChronosAPI(ls.LitAPI):  # type: ignore[misc]
    """The model as a LitServe user serves it: the upstream Chronos pipeline and LitServe's batching."""

    def __init__(self, paths: dict[str, str], torch_threads: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = paths  # model name -> checkpoint (a directory or a hub id)
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        import torch
        from chronos import BaseChronosPipeline

        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        self.pipelines = {
            name: BaseChronosPipeline.from_pretrained(path, device_map=device, dtype=torch.float32)
            for name, path in self.paths.items()
        }
        for pipeline in self.pipelines.values():  # one tiny forecast each before ready
            pipeline.predict_quantiles([torch.arange(64, dtype=torch.float32) % 24], 1, quantile_levels=[0.5])
        print(
            f"litserve worker ready (upstream pipeline): pid {os.getpid()}, torch threads {torch.get_num_threads()}, "
            f"models {', '.join(self.paths)}",
            flush=True,
        )

    def decode_request(self, request, **kwargs):  # type: ignore[no-untyped-def]
        import torch
        from fastapi import HTTPException

        model = request.get("model_name") or next(iter(self.paths))
        if model not in self.pipelines:
            raise HTTPException(422, f"model {model!r} is not served here")
        target = request.get("target")
        if not isinstance(target, list) or not target:
            raise HTTPException(422, "target: a list of numbers is required")
        values = [math.nan if v is None else float(v) for v in target]
        return {
            "request_id": request.get("request_id"),
            "model": model,
            "context": torch.tensor(values, dtype=torch.float32),
            "horizon": int(request.get("horizon_hours", DEFAULT_HORIZON)),
            "levels": [float(q) for q in request.get("quantile_levels", DEFAULT_LEVELS)],
        }

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs  # contexts of any length: predict_quantiles takes the list and left-pads

    def predict(self, x: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any]] = [{} for _ in x]
        groups: dict[tuple[str, int, tuple[float, ...]], list[int]] = {}
        for i, item in enumerate(x):
            groups.setdefault((item["model"], item["horizon"], tuple(item["levels"])), []).append(i)
        for (model, horizon, levels), indices in groups.items():
            asked = sorted({*levels, 0.5})
            start = time.perf_counter()
            quantiles, _ = self.pipelines[model].predict_quantiles(
                [x[i]["context"] for i in indices], prediction_length=horizon, quantile_levels=asked
            )
            elapsed = time.perf_counter() - start
            for j, i in enumerate(indices):
                rows = quantiles[j].numpy()  # (H, Q); Chronos-2: (variates, H, Q)
                rows = rows[0] if rows.ndim == 3 else rows
                outputs[i] = {
                    **x[i],
                    "median": rows[:, asked.index(0.5)],
                    "quantiles": {q: rows[:, asked.index(q)] for q in levels},
                    "batch_size": len(indices),
                    "litserve_batch": len(x),
                    "inference": elapsed,
                }
        return outputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output, **kwargs):  # type: ignore[no-untyped-def]
        return {
            "request_id": output["request_id"],
            "model": {"name": output["model"]},
            "policy": "litserve-upstream",
            "series": None,
            "timestamps": None,
            "median": [_finite(v) for v in output["median"].tolist()],
            "quantile_levels": output["levels"],
            "quantiles": {f"{q:g}": [_finite(v) for v in values.tolist()] for q, values in output["quantiles"].items()},
            "batch_size": output["batch_size"],
            "litserve_batch_size": output["litserve_batch"],
            "cold_start": False,
            "timings": {"inference": output["inference"]},
            "context_used": len(output["context"]),
        }


def checkpoint_paths(models: list[str]) -> dict[str, str]:
    """Each model's checkpoint for ``from_pretrained``: random ones materialised (once) where chronoserve keeps them."""
    from chronoserve.models.loader import ChronosLoader
    from chronoserve.models.materialize import is_materialized, materialize

    loader = ChronosLoader()
    paths = {}
    for name in models:
        spec = loader.resolve(name)
        if spec.random_weights and not is_materialized(spec.source):
            materialize(str(spec.extra["catalog_name"]), dir=spec.source, seed=int(spec.extra.get("seed") or 0))
        paths[name] = spec.source
    return paths


def check_backend(backend: str) -> str | None:
    """Why ``--backend`` cannot be used here, or None. ``torch`` always can (it is never passed on)."""
    if backend == "torch":
        return None
    from chronoserve.models.loader import ChronosLoader

    if "backend" not in inspect.signature(ChronosLoader).parameters:
        return f"--backend {backend}: this chronoserve's ChronosLoader takes no backend= yet (only torch)"
    known = getattr(sys.modules[ChronosLoader.__module__], "BACKENDS", None)
    if known is not None and backend not in known:
        return f"--backend {backend}: not one of ChronosLoader's backends ({', '.join(known)})"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--mode",
        choices=["chronoserve", "upstream"],
        default="chronoserve",
        help="chronoserve: chronoserve's backends (the default); upstream: the upstream Chronos pipeline",
    )
    parser.add_argument("--models", required=True, help="comma-separated: loaded (and warmed up) in setup")
    parser.add_argument("--max-batch", type=int, default=32, help="LitAPI max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="LitAPI batch_timeout, in milliseconds")
    parser.add_argument("--workers", type=int, default=1, help="LitServer workers_per_device (processes)")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads in each worker (default: torch's own)"
    )
    parser.add_argument(
        "--backend",
        default="torch",
        help="--mode chronoserve: ChronosLoader(backend=NAME), e.g. torch (the default) or onnx",
    )
    parser.add_argument("--fast-queue", action="store_true", help="LitServer fast_queue=True (ZMQ transport)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.mode == "upstream" and args.backend != "torch":
        parser.error("--backend: only with --mode chronoserve (upstream runs the Chronos pipeline as it is)")
    if (reason := check_backend(args.backend)) is not None:
        parser.error(reason)

    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked child (uvicorn's process) inherited this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt  # LitServer.run shuts down gracefully on KeyboardInterrupt

    # LitServer.run handles KeyboardInterrupt but not SIGTERM (which would orphan its workers).
    signal.signal(signal.SIGTERM, stop)
    batching = {"max_batch_size": args.max_batch, "batch_timeout": args.max_wait_ms / 1000.0, "api_path": "/forecast"}
    server_options: dict[str, Any] = {
        "accelerator": "cpu",
        "workers_per_device": args.workers,
        "fast_queue": args.fast_queue,
    }
    if args.mode == "upstream":
        api: ls.LitAPI = UpstreamChronosAPI(checkpoint_paths(models), args.torch_threads, **batching)
    else:
        api = ChronosLitAPI(models=models, torch_threads=args.torch_threads, backend=args.backend, **batching)
        # like chronoserve with --max-queue 100000: no request is refused for waiting
        server_options["timeout"] = False
    server = ls.LitServer(api, **server_options)
    threads = "torch's default" if args.torch_threads is None else args.torch_threads
    print(
        f"litserve {ls.__version__} ({args.mode}): B={args.max_batch}, batch_timeout={args.max_wait_ms / 1000.0}s, "
        f"{args.workers} worker process(es) x {threads} torch threads, fast_queue={args.fast_queue}, "
        f"backend {args.backend if args.mode == 'chronoserve' else 'upstream pipeline'}",
        flush=True,
    )
    # access_log off: chronoserve serve logs no line per request either.
    server.run(host=args.host, port=args.port, generate_client_file=False, access_log=False)


if __name__ == "__main__":
    main()
