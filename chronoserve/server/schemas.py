"""The HTTP API's request and response bodies (pydantic), and their OpenAPI schemas.

Field names follow the seed study's request (``request_id``, ``city``, ``model_name``,
``context_hours``, ``horizon_hours``, ``use_covariates``); a series can instead be sent
inline (``target`` and optional covariates).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from chronoserve.limits import (
    MAX_COVARIATES,
    MAX_DEADLINE_SECONDS,
    MAX_HORIZON,
    MAX_LABEL,
    MAX_MODEL_NAME,
    MAX_PRIORITY,
    MAX_QUANTILE_LEVELS,
    MAX_SEED,
    MAX_SERIES_POINTS,
    MIN_FREQ_HOURS,
)
from chronoserve.models.catalog import DEFAULT_MODEL
from chronoserve.request import MAX_ABS_VALUE

DEFAULT_CONTEXT_HOURS = 512
MAX_BATCH_ITEMS = 1000

#: A value of a series: finite, within ±MAX_ABS_VALUE (float32 models square it), or null for a gap.
Number = Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)] | None
Series = Annotated[list[Number], Field(max_length=MAX_SERIES_POINTS)]
CovariateName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL)]
#: No control characters (the names are logged, and are metric labels once served).
_NAME_PATTERN = r"^[^\x00-\x1f\x7f]*$"

#: An ISO 8601 date and time of day, fields within their ranges (the calendar is checked on parsing).
_TIME = (
    r"(000[1-9]|00[1-9]\d|0[1-9]\d{2}|[1-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?"
)
_LOCAL_TIME = re.compile(f"^{_TIME}$")
_TIME_WITH_OFFSET = re.compile(f"^{_TIME}(Z|[+-]\\d{{2}}:\\d{{2}})?$")


class _ParseDateTime:
    """An ISO 8601 date-time string matching ``pattern``, parsed (the schema states the pattern).

    JSON Schema's ``format: date-time`` requires a UTC offset, which ``end`` must not have.
    """

    def __init__(self, pattern: re.Pattern[str], what: str) -> None:
        self.pattern, self.what = pattern, what

    def __call__(self, value: object) -> object:
        if not isinstance(value, str):
            return value  # the strict datetime type refuses it, naming the type
        if not self.pattern.match(value):
            raise ValueError(f"must be {self.what}, e.g. 2016-12-01T00:00:00")
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:  # within the pattern, outside the calendar: 2016-02-30
            raise PydanticCustomError(
                "invalid_date", "not a date in the calendar: {reason}", {"reason": str(exc)}
            ) from None


LocalDateTime = Annotated[
    datetime,
    BeforeValidator(_ParseDateTime(_LOCAL_TIME, "a local date-time without a UTC offset")),
    WithJsonSchema({"type": "string", "pattern": _LOCAL_TIME.pattern}),
]
DateTime = Annotated[
    datetime,
    BeforeValidator(_ParseDateTime(_TIME_WITH_OFFSET, "an ISO 8601 date-time (a UTC offset is optional)")),
    WithJsonSchema({"type": "string", "pattern": _TIME_WITH_OFFSET.pattern}),
]

#: Strict types (no ``"24"`` for 24, no ``true`` for 1), finite numbers only, no unknown fields.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

_EXAMPLES: list[JsonValue] = [
    {"city": "dongsi", "horizon_hours": 24},
    {"city": "dongsi", "horizon_hours": 12, "context_hours": 240, "use_covariates": True},
    {"target": [61.0, 58.0, None, 64.0, 70.0], "start": "2016-12-01T00:00:00Z", "horizon_hours": 6},
]


class ForecastIn(BaseModel):
    """One forecast: from a named series (``city``) or from a history sent inline (``target``).

    Which fields go together (one of ``city`` and ``target``, and the fields of each) is
    checked by :func:`combination_errors`, which names the field at fault.
    """

    model_config = ConfigDict(**_STRICT, json_schema_extra={"examples": _EXAMPLES})

    request_id: str | None = Field(
        default=None, max_length=MAX_LABEL, description="Echoed back; generated when absent.", examples=["r-1"]
    )
    model_name: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        max_length=MAX_MODEL_NAME,
        pattern=_NAME_PATTERN,
        description="A catalog name (`chronos-bolt-small`, `random/chronos-2`, ...) or a model the operator "
        "allowed. Default: the server's default model.",
        examples=[DEFAULT_MODEL],
    )
    city: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LABEL,
        description="A series the server knows (`GET /series`), e.g. a Beijing site. Instead of `target`.",
    )
    end: LocalDateTime | None = Field(
        default=None,
        description="With `city`: the first forecast hour (local, no time zone); the context is the hours before it. "
        "Default: the hour after the series' last reading.",
        examples=["2016-12-01T00:00:00"],
    )
    context_hours: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SERIES_POINTS,
        description=f"Hours of history to use (the last ones). Default with `city`: {DEFAULT_CONTEXT_HOURS}; "
        "with `target`: all of it.",
        examples=[240],
    )
    horizon_hours: int = Field(
        default=24,
        ge=1,
        le=MAX_HORIZON,
        description="Steps to forecast; at most the model's own limit (`GET /models`).",
        examples=[24],
    )
    use_covariates: bool = Field(
        default=False,
        description="With `city`: give the model the series' weather covariates over the context "
        "(Chronos-2 models only).",
    )
    known_future_covariates: bool = Field(
        default=False,
        description="With `city` and `use_covariates`: also give the real covariate values over the horizon, "
        "as if weather forecasts were perfect (the seed study's optimistic assumption).",
    )
    target: Series | None = Field(
        default=None,
        min_length=1,
        description="Inline history, oldest first; null for a gap. Instead of `city`.",
    )
    past_covariates: dict[CovariateName, Series] | None = Field(
        default=None,
        max_length=MAX_COVARIATES,
        description="With `target`: covariates aligned with it (Chronos-2 only; the server's `--max-covariates` "
        "bounds how many).",
    )
    future_covariates: dict[CovariateName, Series] | None = Field(
        default=None,
        max_length=MAX_COVARIATES,
        description="With `target`: known covariate values over the horizon; each also needs past values.",
    )
    start: DateTime | None = Field(
        default=None,
        description="With `target`: the timestamp of its first point, to label the forecast (its UTC offset, "
        "if any, is kept).",
    )
    freq_hours: float = Field(
        default=1.0,
        ge=MIN_FREQ_HOURS,
        description="With `target` and `start`: hours between points (at least one second).",
    )
    quantile_levels: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        # A factory: pydantic deep-copies a mutable default for every request (the schema still says it).
        default_factory=lambda: [0.1, 0.5, 0.9],
        min_length=1,
        max_length=MAX_QUANTILE_LEVELS,
        description="Distinct levels in (0, 1).",
        examples=[[0.1, 0.5, 0.9]],
        json_schema_extra={"uniqueItems": True, "default": [0.1, 0.5, 0.9]},
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Chronos-T5 sampling seed (other models are deterministic)."
    )
    deadline_ms: float | None = Field(
        default=None,
        gt=0,
        le=MAX_DEADLINE_SECONDS * 1000.0,
        allow_inf_nan=False,
        description="The answer is wanted within this many ms of arrival (else the `X-Deadline-Ms` header, else "
        "the server's `--default-deadline-ms`). A request not run by then gets 504 `deadline_expired` and is never "
        "run; a policy that predicts it cannot be met refuses it at once: 503 `deadline_unmeetable`.",
        examples=[200],
    )
    priority: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PRIORITY,
        description="Priority class, 1 the highest (as in Triton); none: the default class, below every number "
        "(else the `X-Priority` header). Policies decide what it means; `deadline` serves higher classes first.",
    )

    lower_bound: float | None = Field(
        default=None,
        ge=-MAX_ABS_VALUE,
        le=MAX_ABS_VALUE,
        description="The least value the quantity can take: forecast values below it (quantiles and median) are "
        "raised to it, and the answer says how many (`clipped_values`). Default: the series' own bound for a "
        "`city` (0 for the embedded PM2.5 series; see GET /series), none for an inline `target`.",
        examples=[0.0],
    )
    nonnegative: bool | None = Field(
        default=None,
        description="`true`: a lower bound of 0; `false`: no bound, not even the series' own. Excludes `lower_bound`.",
    )

    @field_validator("context_hours", "horizon_hours", "seed", "priority", mode="before")
    @classmethod
    def _integral(cls, value: object) -> object:
        """``24.0`` is the integer 24 in JSON (and JSON Schema); ``"24"``, ``true`` and ``24.5`` are not."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("quantile_levels")
    @classmethod
    def _distinct(cls, levels: list[float]) -> list[float]:
        if len(set(levels)) != len(levels):
            raise PydanticCustomError("unique_items", "levels must be distinct")
        return levels


#: Fields that only go with ``target`` (an inline history), and only with ``city``.
_TARGET_ONLY = ("past_covariates", "future_covariates", "start")
_CITY_ONLY = ("use_covariates", "known_future_covariates", "end")


def combination_errors(item: ForecastIn) -> list[tuple[str, str]]:
    """``(field, message)`` for each field that does not go with the others (empty when all do)."""
    if item.city is None and item.target is None:
        return [("city", "give exactly one of `city` (a known series) or `target` (an inline history)")]
    if item.city is not None and item.target is not None:
        return [("target", "`target` and `city` exclude each other: give one")]
    if item.city is not None:
        errors = [(f, f"`{f}` goes with an inline `target`, not with `city`") for f in _TARGET_ONLY if getattr(item, f)]
    else:
        errors = [(f, f"`{f}` goes with `city`, not with an inline `target`") for f in _CITY_ONLY if getattr(item, f)]
    if item.known_future_covariates and not item.use_covariates:
        errors.append(("known_future_covariates", "needs `use_covariates`"))
    if item.nonnegative is not None and item.lower_bound is not None:
        errors.append(("nonnegative", "`nonnegative` and `lower_bound` exclude each other: give one"))
    return errors


class BatchIn(BaseModel):
    model_config = _STRICT

    requests: list[ForecastIn] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class ModelOut(BaseModel):
    name: str
    family: str
    random_weights: bool = Field(description="True: random weights; the numbers are not forecasts.")


class CatalogModelOut(BaseModel):
    name: str
    family: str
    parameters: int
    hub_id: str | None = Field(description="Where the published weights live; null for models not published.")
    random_name: str = Field(description="The name that loads this architecture with random weights.")
    test_only: bool = Field(description="A tiny configuration for tests.")
    trained_here: bool = Field(
        description="Weights trained by `chronoserve models train` and shipped with chronoserve (not published)."
    )
    description: str = Field(description="What the model is and how it was trained; empty for published ones.")


class ProfileRowOut(BaseModel):
    """One configuration of a cost table (`chronoserve profile`), as measured on the server's machine."""

    model_config = ConfigDict(populate_by_name=True)

    query_class: str = Field(alias="class", description="The query class: a context, a horizon, covariates.")
    context: int
    horizon: int
    covariates: int
    batch: int = Field(description="Batch size (the `batched` policy's B) it was measured at.")
    workers: int
    torch_threads: int
    latency_p50_ms: float | None = Field(description="Median batch latency with every worker busy.")
    latency_p95_ms: float | None
    series_per_s: float | None = Field(description="Throughput with the queue kept full.")
    cpu_s_per_1k: float | None = Field(description="CPU-seconds per 1,000 forecasts (the energy stand-in).")
    msrr_per_s: float | None = Field(
        description="Maximum serviceable request rate: the highest Poisson rate whose p95 met the profile's SLO."
    )


class ProfileOut(BaseModel):
    path: str = Field(description="The profile.json the server loaded (`serve --profile`).")
    slo_p95_ms: float | None = Field(description="The SLO the MSRR figures meet.")
    max_wait_ms: float | None = Field(description="The batching delay the MSRR figures were measured with.")
    models: dict[str, list[ProfileRowOut]]


class ModelsOut(BaseModel):
    default: str = Field(description="The model of requests that name none.")
    allowed_extra: list[str]
    resident: list[dict[str, Any]] = Field(
        description="Loaded or loading models: status, bytes, load time, `backend` and `dtype` (what runs it: "
        "`torch` or `onnx`, after any fallback; null while it loads), `loaded_from` (the tier its load came "
        "from: `host`, `disk`, `hub`), and `profile`: the loaded cost table's rows for the model (null without "
        "`--profile`)."
    )
    tiers: dict[str, Any] = Field(
        description="Residency in tiers (docs/coldstart.md): `models`, where the weights of every model requests "
        "have named are now (`resident`, `host`, `disk`, `hub`); `host_models`, `host_bytes` and `host_budget` of "
        "the host tier (`--host-cache-budget`); `import_seconds`, what importing torch, transformers and chronos "
        "took at start-up, apart from any load."
    )
    failed: list[dict[str, Any]] = Field(
        description="Models whose last load failed: `name`, `error`, `failures` in a row, `retry_in_seconds`, "
        "`permanent` (no retry helps until the operator acts)."
    )
    catalog: list[CatalogModelOut]
    profile: ProfileOut | None = Field(description="The cost table the server loaded (`serve --profile`), or null.")
    policy: dict[str, Any] | None = Field(
        default=None,
        description="The scheduling policy: its name and options as it describes them; `batched` with `auto` adds "
        "`tuned`, per model the `max_batch`, `max_wait`, `concurrency` chosen and the `rate` they were chosen for.",
    )
    note: str


class TimingsOut(BaseModel):
    queue: float
    load: float
    inference: float
    total: float


class ForecastOut(BaseModel):
    request_id: str
    model: ModelOut
    policy: str
    series: str | None = None
    timestamps: list[str] | None = Field(
        default=None,
        description="The forecast steps as ISO 8601 date-times, when known: with `start`'s UTC offset when it "
        "had one; naive local time for the named series (the embedded ones are Beijing local time).",
    )
    median: list[float | None]
    quantile_levels: list[float]
    quantiles: dict[str, list[float | None]] = Field(description="Per level (as a string): one value per step.")
    batch_size: int = Field(description="How many requests shared the batch this one ran in.")
    cold_start: bool = Field(description="The request waited for its model to load.")
    timings: TimingsOut = Field(description="Seconds: queue + load + inference = total.")
    context_used: int
    served_by: str | None = Field(
        default=None,
        description="Which engine answered, where there are several: `engine-<i>` with `serve --engines K`, "
        "the Ray Serve replica's id with `serve --ray`; absent with one engine.",
    )
    lower_bound: float | None = Field(
        default=None, description="The bound the forecast was clipped to (absent: none applied)."
    )
    clipped_values: int | None = Field(
        default=None, description="With `lower_bound`: how many values (quantiles and median) were raised to it."
    )


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    budget_ms: float | None = Field(
        default=None, description="`deadline_unmeetable`, `deadline_expired`: the request's deadline_ms."
    )
    predicted_ms: float | None = Field(
        default=None,
        description="`deadline_unmeetable`: when the answer was predicted, in ms after arrival (null if unknown).",
    )


class ErrorOut(BaseModel):
    detail: list[ErrorDetail] | str


class BatchItemOut(BaseModel):
    status: int
    result: ForecastOut | None = None
    error: ErrorOut | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


def openapi_document(version: str, default_model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, built from the pydantic models.

    ``default_model`` is the serving server's ``--default-model``: the default of ``model_name``.
    """
    models: list[type[BaseModel]] = [ForecastIn, BatchIn, ForecastOut, BatchOut, ErrorOut, ModelsOut]
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema

    components["ForecastIn"]["properties"]["model_name"]["default"] = default_model

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(name)}}}

    def reply(description: str, name: str | None = None, media: str = "application/json") -> dict[str, Any]:
        out: dict[str, Any] = {"description": description}
        if name is not None:
            out["content"] = {media: {"schema": ref(name)}}
        return out

    errors = {
        "400": reply("Not HTTP the server can parse", "ErrorOut"),
        "408": reply("The body did not arrive within the server's `--body-timeout`", "ErrorOut"),
        "413": reply("The body is over the server's `--max-body-bytes`", "ErrorOut"),
        "415": reply("The body is not `application/json`", "ErrorOut"),
        "422": reply(
            "Invalid request: `detail` names each field and the reason (also a request over the server's "
            "cost budget: `type: too_costly`)",
            "ErrorOut",
        ),
        "429": reply("Queue full: retry after the `Retry-After` header's seconds", "ErrorOut"),
        "503": reply("Draining, or the model could not be loaded (`Retry-After`: when it is tried again)", "ErrorOut"),
        "504": reply("The batch ran past the server's `--max-inference-seconds` and was stopped", "ErrorOut"),
    }
    plain = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chronoserve",
            "version": version,
            "description": "Forecasts from Chronos models (Chronos-2, Chronos-Bolt, Chronos-T5).",
        },
        "paths": {
            "/forecast": {
                "post": {
                    "summary": "Forecast one series",
                    "operationId": "forecast",
                    "requestBody": body("ForecastIn"),
                    "responses": {"200": reply("The forecast", "ForecastOut"), **errors},
                }
            },
            "/forecast/batch": {
                "post": {
                    "summary": "Forecast many series in one call; each item has its own status",
                    "operationId": "forecast_batch",
                    "requestBody": body("BatchIn"),
                    "responses": {"200": reply("One item per request, in order", "BatchOut"), **errors},
                }
            },
            "/models": {
                "get": {
                    "summary": "The model catalog and what is resident",
                    "operationId": "models",
                    "responses": {"200": reply("The default model, the resident ones and the catalog", "ModelsOut")},
                }
            },
            "/series": {
                "get": {
                    "summary": "The series the server knows",
                    "operationId": "series",
                    "responses": {"200": {"description": "Series", "content": {"application/json": {"schema": plain}}}},
                }
            },
            "/healthz": {"get": {"summary": "Alive", "operationId": "healthz", "responses": {"200": reply("Alive")}}},
            "/readyz": {
                "get": {
                    "summary": "Ready: warm and not draining",
                    "operationId": "readyz",
                    "responses": {"200": reply("Ready"), "503": reply("Warming up or draining")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
        },
        "components": {"schemas": components},
    }
