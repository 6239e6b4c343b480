"""Prometheus metrics for the server, fed by the engine's events.

Names follow what Ray Serve and Triton users know (their equivalents are in each HELP
text). Every server gets its own registry, so several apps in one process (tests) never
share counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chronoserve.events import EngineObserver

if TYPE_CHECKING:
    from chronoserve.costs import BatchCost
    from chronoserve.engine import Engine
    from chronoserve.request import ForecastResult

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ERROR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class _ServerCPU(Collector):
    """``chronoserve_server_cpu_seconds_total``: CPU seconds of every process of the server.

    This process's own, plus what the front-end processes of ``serve --http-workers`` last
    reported (and what the ones since restarted had used, so the total never goes back).
    """

    def __init__(self) -> None:
        self.others: dict[str, float] = {}
        self.gone = 0.0

    def report(self, process: str, seconds: float) -> None:
        """``process`` (a front end's name) has used ``seconds``; less than before: it was restarted."""
        before = self.others.get(process, 0.0)
        if seconds < before:
            self.gone += before
        self.others[process] = seconds

    def collect(self) -> Iterator[Metric]:
        own = time.process_time()
        total = CounterMetricFamily(
            "chronoserve_server_cpu_seconds",
            "CPU seconds of every process of the server: this one and, with --http-workers, the front ends "
            "(process_cpu_seconds_total is this process alone).",
        )
        total.add_metric([], own + self.gone + sum(self.others.values()))
        yield total


class _EngineState(Collector):
    """Gauges read from the engine at scrape time: queue depth per model, resident models."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        depth = GaugeMetricFamily(
            "chronoserve_queue_depth",
            "Requests waiting per model (Triton: nv_inference_pending_request_count; "
            "Ray Serve: ray_serve_deployment_queued_queries).",
            labels=["model"],
        )
        resident = GaugeMetricFamily(
            "chronoserve_resident_models",
            "Models resident in memory (Ray Serve: ray_serve_num_multiplexed_models).",
        )
        resident_bytes = GaugeMetricFamily("chronoserve_resident_bytes", "Bytes of the resident models.")
        running = GaugeMetricFamily("chronoserve_running_batches", "Batches running or handed to a worker.")
        host = GaugeMetricFamily(
            "chronoserve_host_tier_models", "Evicted models whose weights the host tier keeps (--host-cache-budget)."
        )
        host_bytes = GaugeMetricFamily("chronoserve_host_tier_bytes", "Bytes the host tier keeps.")
        imports = GaugeMetricFamily(
            "chronoserve_import_seconds",
            "How long importing the model loader's modules (torch, transformers, chronos) took at start-up, "
            "apart from any load.",
        )
        if engine is not None:
            for model, n in sorted(engine.queue_depths().items()):
                depth.add_metric([model], n)
            stats = engine.stats()
            resident.add_metric([], len(stats.resident))
            resident_bytes.add_metric([], stats.resident_bytes)
            running.add_metric([], stats.running_batches)
            host.add_metric([], len(stats.host_models))
            host_bytes.add_metric([], stats.host_bytes)
            if stats.import_seconds is not None:
                imports.add_metric([], stats.import_seconds)
        yield from (depth, resident, resident_bytes, running, host, host_bytes, imports)


class HTTPCounts(Protocol):
    """What a front end counts per answer: :class:`ServerMetrics` itself, or (in a front-end
    process) a forwarder to the engine process's metrics (:class:`~.frontend.CountsForwarder`)."""

    def http_answered(self, route: str, status: int, n: int = 1) -> None: ...

    def refused(self, reason: str, n: int = 1) -> None: ...


class ServerMetrics(EngineObserver):
    """The server's metrics registry; also an engine observer that keeps it up to date."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux; nothing elsewhere):
        # the replayer reads the CPU time to report CPU-seconds per forecast.
        ProcessCollector(registry=r)
        self.requests = Counter(
            "chronoserve_requests",
            "Requests the engine accepted, by how they ended: ok, cancelled, or the error "
            "(Triton: nv_inference_request_success / _failure).",
            ["model", "status"],
            registry=r,
        )
        self.deadlines = Counter(
            "chronoserve_deadline_requests",
            "Requests with a deadline, by priority class (none: the default class) and outcome: met, late "
            "(answered after it), deadline_unmeetable (shed), deadline_expired (it passed in the queue), failed. "
            "SLO attainment per class = met / all outcomes.",
            ["model", "priority", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "chronoserve_rejected_requests",
            "Requests refused before any work, by reason: queue_full, invalid_request, too_costly, "
            "model_load_failed (in its backoff), engine_closed, body_too_large, unsupported_media_type "
            "(Ray Serve: BackPressureError; Triton: REJECTED).",
            ["reason"],
            registry=r,
        )
        self.http = Counter(
            "chronoserve_http_requests", "HTTP requests by route and status code.", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "chronoserve_request_latency_seconds",
            "End-to-end time in the engine, from acceptance to the answer.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "chronoserve_queue_time_seconds",
            "Time a request waited for its batch and a worker, load excluded "
            "(Ray Serve: ray_serve_batch_wait_time_ms).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "chronoserve_inference_time_seconds",
            "Time a batch ran on a worker (Ray Serve: ray_serve_batch_execution_time_ms).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "chronoserve_batch_size",
            "Requests per batch (Ray Serve: ray_serve_actual_batch_size; BentoML: adaptive_batch_size).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter("chronoserve_batch_failures", "Batches that raised.", ["model"], registry=r)
        self.prediction_error = Histogram(
            "chronoserve_batch_latency_prediction_error",
            "|predicted - actual| / actual of each batch's latency, as the online cost model predicted it "
            "at dispatch (chronoserve.costs).",
            ["model"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "chronoserve_model_load_seconds",
            "Model load time (Ray Serve: ray_serve_multiplexed_model_load_latency_ms).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_duration = Gauge(
            "chronoserve_model_load_duration_seconds",
            "The last load time of each model (Triton: nv_model_load_duration_secs).",
            ["model"],
            registry=r,
        )
        self.load_failures = Counter("chronoserve_model_load_failures", "Failed model loads.", ["model"], registry=r)
        self.evictions = Counter("chronoserve_model_evictions", "Models evicted from memory.", ["model"], registry=r)
        self.cold_starts = Counter(
            "chronoserve_cold_starts", "Requests that waited for their model to load.", ["model"], registry=r
        )
        self.tier_loads = Counter(
            "chronoserve_model_tier_loads",
            "Model loads (a model's cold starts) by the tier they loaded from: host, disk, hub.",
            ["model", "tier"],
            registry=r,
        )
        self.tier_load_seconds = Histogram(
            "chronoserve_model_tier_load_seconds",
            "Model load time by the tier it loaded from (host, disk, hub).",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.process_start = Gauge(
            "chronoserve_process_start_seconds",
            "From the OS creating this server's process to the server ready (default model warm): imports, "
            "load and warm-up included. method: fork-server, spawn (a worker of serve --http-workers) or "
            "process (chronoserve serve in one process).",
            ["method"],
            registry=r,
        )
        self.demotions = Counter(
            "chronoserve_model_demotions",
            "Models moved down a tier: evicted to host (weights kept) or lower, or dropped by the host tier.",
            ["model", "source", "target"],
            registry=r,
        )
        r.register(_EngineState(engine))
        self.server_cpu = _ServerCPU()
        r.register(self.server_cpu)
        # labels() hashes and locks on every call: the hot path's children are looked up once.
        self._http_children: dict[tuple[str, int], Counter] = {}
        self._model_children: dict[tuple[str, str], tuple[Counter, Histogram, Histogram]] = {}

    def http_answered(self, route: str, status: int, n: int = 1) -> None:
        """Count ``n`` answers of ``route`` with ``status``."""
        child = self._http_children.get((route, status))
        if child is None:
            child = self._http_children[(route, status)] = self.http.labels(route, str(status))
        child.inc(n)

    def refused(self, reason: str, n: int = 1) -> None:
        """Count ``n`` requests refused before any work (a bad body, a full queue, ...)."""
        self.rejected.labels(reason).inc(n)

    def add_counts(self, http: list[list[Any]], refused: list[list[Any]], process: str, cpu: float) -> None:
        """A front end's counts since its last report (a :data:`~.wire.COUNTS` frame's fields): HTTP
        answers ``[route, status, n]``, refusals ``[reason, n]``, and its CPU seconds so far."""
        self.server_cpu.report(process, cpu)
        for route, status, n in http:
            self.http_answered(route, status, n)
        for reason, n in refused:
            self.refused(reason, n)

    def process_ready(self, seconds: float, method: str) -> None:
        """The process became ready ``seconds`` after it was created, started by ``method``."""
        self.process_start.labels(method).set(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- EngineObserver ---------------------------------------------------------------------

    def request_rejected(self, model: str, reason: str) -> None:
        # Invalid input is counted by the HTTP layer, which sees every 422 (also those found
        # before the engine: bad JSON, unknown series, a model not served here).
        if reason not in ("invalid_request", "unknown_model", "too_costly"):
            self.rejected.labels(reason).inc()

    def request_finished(self, model: str, status: str, result: ForecastResult | None) -> None:
        children = self._model_children.get((model, status))
        if children is None:
            children = (self.requests.labels(model, status), self.latency.labels(model), self.queue_time.labels(model))
            self._model_children[(model, status)] = children
        requests, latency, queue_time = children
        requests.inc()
        if result is not None:
            t = result.timings
            latency.observe(t.total)
            queue_time.observe(t.queue)
            if result.cold_start:
                self.cold_starts.labels(model).inc()

    def deadline_outcome(self, model: str, priority: int | None, outcome: str) -> None:
        self.deadlines.labels(model, "none" if priority is None else str(priority), outcome).inc()

    def batch_finished(self, model: str, size: int, inference_seconds: float, ok: bool) -> None:
        self.batch_size.labels(model).observe(size)
        if ok:
            self.inference_time.labels(model).observe(inference_seconds)
        else:
            self.batch_failures.labels(model).inc()

    def batch_cost(self, cost: BatchCost) -> None:
        if cost.relative_error is not None:
            self.prediction_error.labels(cost.features.model).observe(abs(cost.relative_error))

    def model_loaded(self, model: str, seconds: float, nbytes: int) -> None:
        self.load_seconds.labels(model).observe(seconds)
        self.load_duration.labels(model).set(seconds)

    def model_load_failed(self, model: str, reason: str) -> None:
        self.load_failures.labels(model).inc()

    def model_evicted(self, model: str) -> None:
        self.evictions.labels(model).inc()

    def model_moved(self, model: str, source: str, target: str, seconds: float) -> None:
        if target == "resident":
            self.tier_loads.labels(model, source).inc()
            self.tier_load_seconds.labels(source).observe(seconds)
        else:
            self.demotions.labels(model, source, target).inc()
