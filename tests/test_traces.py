"""Trace files: the format (reader, writer, errors), the generator, retiming, the CLI, the shipped traces."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from chronoserve.data import SeriesStore
from chronoserve.errors import InvalidRequest
from chronoserve.limits import MAX_DEADLINE_SECONDS, MAX_PRIORITY
from chronoserve.models.catalog import find_entry
from chronoserve.traces import (
    DEFAULT_CONTEXT_DAYS,
    DEFAULT_HORIZONS,
    MAX_DEADLINE_MS,
    DeadlineClass,
    Trace,
    TraceError,
    TraceRequest,
    arrival_times,
    check_trace,
    dumps_trace,
    generate,
    loads_trace,
    read_trace,
    retime,
    scale_time,
    write_trace,
)
from chronoserve.traces._cli import main as trace_main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("random/chronos-bolt-tiny", "random/chronos-bolt-mini", "random/chronos-2")
DATA_START, DATA_END = datetime(2016, 7, 1), datetime(2017, 1, 1)

#: Measured rate within ±3 % of the requested rate, CV of the gaps within ±5 % of the requested CV.
RATE_TOLERANCE = 0.03
CV_TOLERANCE = 0.05
#: The deadline classes of traces/deadlines.jsonl: (name, deadline_ms, share, priority).
CLASSES = (("interactive", 150.0, 0.2, 1), ("dashboard", 1000.0, 0.5, 2), ("batch", 5000.0, 0.3, 3))
CLASSES_FLAG = "interactive:150:0.2:1,dashboard:1000:0.5:2,batch:5000:0.3:3"
#: The command that wrote traces/deadlines.jsonl (docs/traces.md and traces/README.md show it).
DEADLINES_ARGV = (
    "--arrivals onoff --rate 20 --burst-factor 4 --burst-share 0.2 --burst-seconds 2 --phase-cv 0 "
    f"--n 600 --seed 0 --deadline-classes {CLASSES_FLAG}"
).split()
DEADLINES_COMMAND = f"chronoserve trace gen {' '.join(DEADLINES_ARGV)} --out traces/deadlines.jsonl"


@pytest.fixture(scope="module")
def store() -> SeriesStore:
    return SeriesStore.embedded()


def _request(i: int, t: float, **changes: object) -> TraceRequest:
    fields: dict[str, object] = {
        "t": t,
        "request_id": f"r-{i}",
        "model_name": "random/chronos-bolt-tiny",
        "city": "dongsi",
        "context_hours": 48,
        "horizon_hours": 24,
        "use_covariates": False,
    }
    fields.update(changes)
    return TraceRequest(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Format


def test_round_trip_keeps_every_field_and_the_meta(tmp_path):
    trace = Trace(
        (
            _request(0, 0.0),
            _request(
                1,
                0.25,
                model_name="random/chronos-2",
                use_covariates=True,
                known_future_covariates=True,
                end=datetime(2016, 12, 1),
                quantile_levels=(0.05, 0.5, 0.95),
                seed=3,
                deadline_ms=250.0,
                priority=2,
                deadline_class="dashboard",
            ),
            _request(2, 0.25, city="Tiantan", priority=100, deadline_ms=MAX_DEADLINE_MS),
            _request(3, 1.5, end=datetime(2016, 8, 2, 13)),
        ),
        {"arrivals": "poisson", "rate": 2.0, "note": "ünïcode"},
    )
    path = tmp_path / "t.jsonl"
    write_trace(trace, path)
    back = read_trace(path)
    assert back.requests == trace.requests
    assert back.meta == trace.meta
    write_trace(back, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    first, *_ = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(first) == {"meta": dict(trace.meta)}


def test_meta_line_is_optional_and_blank_lines_are_ignored():
    text = '\n{"t": 0, "request_id": "a", "model_name": "m", "city": "c", "context_hours": 1, "horizon_hours": 1, "use_covariates": false}\n\n'  # noqa: E501
    trace = loads_trace(text)
    assert trace.meta == {}
    assert trace.requests == (TraceRequest(0.0, "a", "m", "c", context_hours=1, horizon_hours=1, use_covariates=False),)
    assert dumps_trace(trace).count("\n") == 1  # no meta line written for empty meta


def test_key_order_of_a_written_line():
    line = _request(
        0, 1.0, end=datetime(2016, 12, 1), seed=1, deadline_ms=150, priority=1, deadline_class="interactive"
    ).to_json()
    assert list(line) == [
        "t",
        "request_id",
        "model_name",
        "city",
        "end",
        "context_hours",
        "horizon_hours",
        "use_covariates",
        "seed",
        "deadline_ms",
        "priority",
        "deadline_class",
    ]
    assert line["deadline_ms"] == 150.0 and isinstance(line["deadline_ms"], float)


def test_to_http_body_is_a_valid_forecast_body_with_deadline_and_priority():
    from chronoserve.server.schemas import ForecastIn

    request = _request(
        1,
        2.5,
        model_name="random/chronos-2",
        use_covariates=True,
        known_future_covariates=True,
        end=datetime(2016, 12, 1),
        quantile_levels=(0.1, 0.9),
        seed=4,
        deadline_ms=100.0,
        priority=3,
        deadline_class="batch",
    )
    body = request.to_http_body()
    assert "t" not in body and "deadline_class" not in body
    assert body["deadline_ms"] == 100.0 and body["priority"] == 3
    assert body["end"] == "2016-12-01T00:00:00" and body["quantile_levels"] == [0.1, 0.9]
    parsed = ForecastIn.model_validate_json(orjson.dumps(body))  # as the server parses it
    assert parsed.deadline_ms == 100.0 and parsed.priority == 3
    assert parsed.model_dump(include=set(body)) | {"end": body["end"]} == body
    assert set(_request(0, 0.0).to_http_body()) == {
        "request_id",
        "model_name",
        "city",
        "context_hours",
        "horizon_hours",
        "use_covariates",
    }
    assert "deadline_ms" not in _request(0, 0.0, priority=5).to_http_body()
    assert "priority" not in _request(0, 0.0, deadline_ms=5.0).to_http_body()


def test_the_trace_bounds_are_the_http_api_bounds():
    from pydantic import ValidationError

    from chronoserve.server.schemas import ForecastIn

    assert MAX_DEADLINE_MS == MAX_DEADLINE_SECONDS * 1000
    largest = _request(0, 0.0, deadline_ms=MAX_DEADLINE_MS, priority=MAX_PRIORITY)
    assert loads_trace(dumps_trace(Trace((largest,)))).requests == (largest,)
    ForecastIn.model_validate_json(orjson.dumps(largest.to_http_body()))
    for changes in ({"deadline_ms": MAX_DEADLINE_MS * 1.001}, {"priority": MAX_PRIORITY + 1}, {"priority": 0}):
        body = largest.to_http_body() | changes
        with pytest.raises(ValidationError):
            ForecastIn.model_validate_json(orjson.dumps(body))
        (key,) = changes
        with pytest.raises(TraceError, match=f"'{key}' must be"):
            loads_trace(_line(**changes))


GOOD = '{"t": 0.5, "request_id": "b", "model_name": "m", "city": "c", "context_hours": 48, "horizon_hours": 4, "use_covariates": false}'  # noqa: E501
META = '{"meta": {"arrivals": "burst"}}'


def _line(**changes: object) -> str:
    obj = json.loads(GOOD)
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"t": 1, "request_id": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got a list"),
        (_line(horizon=4), "unknown key 'horizon'; did you mean 'horizon_hours'?"),
        (_line(deadline=5), "unknown key 'deadline'; did you mean 'deadline_ms'?"),
        (_line(city=None), "missing key 'city'"),
        (_line(t=None, request_id=None), "missing keys 't', 'request_id'"),
        (_line(t=0.1), "out of order: t=0.1 is before t=0.5 on line 2; lines must be sorted by t"),
        (_line(t="1"), "'t' must be a number, got a string"),
        (_line(t=-1), "'t' must be >= 0"),
        (_line(t=True), "'t' must be a number, got a boolean"),
        (_line(context_hours="48"), "'context_hours' must be an integer, got a string ('48')"),
        (_line(context_hours=48.0), "'context_hours' must be an integer, got a number"),
        (_line(horizon_hours=0), "'horizon_hours' must be >= 1"),
        (_line(use_covariates="yes"), "'use_covariates' must be true or false"),
        (_line(request_id=7), "'request_id' must be a string, got an integer"),
        (_line(model_name=""), "'model_name' must not be empty"),
        (_line(end="2016-12-01T00:30:00"), "'end' must be on the hour"),
        (_line(end="tomorrow"), "'end' must be an ISO 8601 hour"),
        (_line(end="2016-12-01T00:00:00+08:00"), "no UTC offset"),
        (_line(quantile_levels=[0.5, 1.5]), "strictly between 0 and 1"),
        (_line(quantile_levels=[]), "non-empty list"),
        (_line(seed=-1), "'seed' must be >= 0"),
        (_line(deadline_ms=0), "'deadline_ms' must be > 0 and at most 86400000"),
        (_line(deadline_ms=86_400_001), "'deadline_ms' must be > 0 and at most 86400000 (a day), got 86400001"),
        (_line(deadline_ms="150"), "'deadline_ms' must be a number, got a string"),
        (_line(priority=0), "'priority' must be >= 1, got 0"),
        (_line(priority=101), "'priority' must be <= 100 (1 is the highest), got 101"),
        (_line(priority=1.5), "'priority' must be an integer, got a number (1.5)"),
        (_line(priority=2.0), "'priority' must be an integer, got a number (2.0)"),
        (_line(priority="1"), "'priority' must be an integer, got a string ('1')"),
        (_line(priority=True), "'priority' must be an integer, got a boolean"),
        (_line(priorty=1), "unknown key 'priorty'; did you mean 'priority'?"),
        (_line(deadline_class=""), "'deadline_class' must not be empty"),
        (_line(deadline_class=3), "'deadline_class' must be a string, got an integer"),
        (_line(deadline_class="x" * 65), "'deadline_class' is longer than 64 characters"),
        (_line(**{"class": "batch"}), "unknown key 'class'"),
        (_line(known_future_covariates=True), "needs 'use_covariates': true"),
        (_line(request_id="a"), "duplicate request_id 'a' (first on line 2)"),
        (_line(t=float("nan")), "NaN is not valid JSON"),
        (GOOD[:-1] + ', "city": "d"}', "duplicate key 'city'"),
        (META, "a 'meta' line may only be the first line"),
    ],
)
def test_reader_errors_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    first = _line(t=0.5, request_id="a")
    path.write_text(f"{META}\n{first}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert info.value.line == 4
    assert str(info.value).startswith(f"{path}:4: ")
    assert message in info.value.message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "no requests"),
        (META + "\n", None, "no requests"),
        ('{"meta": {}, "t": 0}\n', 1, "the meta line has only the key 'meta'"),
        ('{"meta": [1]}\n', 1, "'meta' must be an object"),
    ],
)
def test_reader_errors_about_the_whole_file(tmp_path, text, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert info.value.line == line and message in info.value.message
    assert isinstance(info.value, ValueError)


def test_reader_refuses_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((GOOD + "\n").encode() + b'{"t": 1, "city": "caf\xe9"}\n')
    with pytest.raises(TraceError, match=r"latin1\.jsonl:2: not UTF-8"):
        read_trace(path)
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "absent.jsonl")


def test_trace_refuses_unsorted_or_duplicate_requests():
    with pytest.raises(ValueError, match="before the previous"):
        Trace((_request(0, 1.0), _request(1, 0.5)))
    with pytest.raises(ValueError, match="duplicate request_id"):
        Trace((_request(0, 0.0), _request(0, 1.0)))


def test_trace_properties():
    trace = Trace(tuple(_request(i, t, model_name=m) for i, (t, m) in enumerate([(0, "a"), (1, "b"), (3, "a")])))
    assert len(trace) == 3 and trace.duration == 3.0
    assert trace.rate == pytest.approx(2 / 3)
    assert trace.gap_cv == pytest.approx(np.std([1, 2]) / 1.5)
    assert trace.models() == {"a": 2, "b": 1} and trace.cities() == {"dongsi": 3}
    assert [r.request_id for r in trace.head(2)] == ["r-0", "r-1"]
    assert "3 requests" in trace.summary() and "classes" not in trace.summary()
    assert trace.classes() == {}
    tagged = Trace(
        tuple(_request(i, 0.0, deadline_class=c) for i, c in enumerate(["b", "a", None, "b"])),
    )
    assert tagged.classes() == {"b": 2, "a": 1}
    assert tagged.summary().endswith("; classes: b 2, a 1")
    burst = Trace((_request(0, 0.0), _request(1, 0.0)))
    assert math.isinf(burst.rate) and math.isnan(burst.gap_cv) and burst.duration == 0.0
    assert math.isnan(Trace((_request(0, 0.0),)).rate)


# ---------------------------------------------------------------------------------------------
# Generator


def test_generation_is_reproducible_from_the_seed(tmp_path):
    one = dumps_trace(generate(200, "poisson", rate=10.0, seed=5))
    assert dumps_trace(generate(200, "poisson", rate=10.0, seed=5)) == one
    assert dumps_trace(generate(200, "poisson", rate=10.0, seed=6)) != one
    # The content and the arrivals come from separate streams: same requests whatever the arrivals.
    burst = generate(200, "burst", seed=5)
    poisson = generate(200, "poisson", rate=10.0, seed=5)
    assert [(r.model_name, r.city, r.end, r.context_hours, r.horizon_hours, r.use_covariates) for r in burst] == [
        (r.model_name, r.city, r.end, r.context_hours, r.horizon_hours, r.use_covariates) for r in poisson
    ]
    assert np.array_equal(retime(burst, "poisson", rate=10.0, seed=5).times(), poisson.times())
    assert np.array_equal(arrival_times(200, "poisson", rate=10.0, seed=5), poisson.times())


def test_generated_requests_follow_the_recipe(store):
    trace = generate(2000, "gamma", rate=50.0, cv=2.0, seed=1)
    assert trace.meta["arrivals"] == "gamma" and trace.meta["rate"] == 50.0 and trace.meta["cv"] == 2.0
    assert trace.meta["created_by"] == "chronoserve trace gen" and trace.meta["n"] == 2000
    assert [r.request_id for r in trace][:2] == ["gamma-0000", "gamma-0001"]
    assert trace.requests[0].t == 0.0
    ids = set(store.ids())
    chronos2 = [r for r in trace if r.model_name == "random/chronos-2"]
    for r in trace:
        assert r.model_name in MODELS and r.city in ids
        assert r.context_hours // 24 in DEFAULT_CONTEXT_DAYS and r.context_hours % 24 == 0
        assert r.horizon_hours in DEFAULT_HORIZONS
        assert r.end is not None
        assert (r.end - DATA_START).total_seconds() / 3600 >= r.context_hours
        assert (DATA_END - r.end).total_seconds() / 3600 >= r.horizon_hours
        assert not r.use_covariates or r.model_name == "random/chronos-2"
        assert not r.known_future_covariates and r.deadline_ms is None
        assert r.priority is None and r.deadline_class is None
    share = sum(r.use_covariates for r in chronos2) / len(chronos2)
    assert share == pytest.approx(0.3, abs=0.08)  # ~400 Chronos-2 requests: sd of the share 0.023
    counts = trace.models()
    for name, weight in zip(MODELS, (0.45, 0.35, 0.2), strict=True):
        assert counts[name] / 2000 == pytest.approx(weight, abs=0.04)
    assert check_trace(trace, store) == []


def test_generator_options():
    trace = generate(
        300,
        "burst",
        seed=2,
        models={"random/chronos-2": 1.0, "random/chronos-bolt-tiny": 0.0},
        series=["Dongsi"],
        context_days=[3],
        horizons=[64],
        covariates_share=1.0,
        end_range=(datetime(2016, 11, 1), datetime(2016, 11, 10)),
        known_future=True,
        deadline_ms=500,
    )
    assert {r.model_name for r in trace} == {"random/chronos-2"} and {r.city for r in trace} == {"dongsi"}
    assert all(r.use_covariates and r.known_future_covariates and r.deadline_ms == 500.0 for r in trace)
    assert all(r.context_hours == 72 and r.horizon_hours == 64 for r in trace)
    assert all(datetime(2016, 11, 4) <= r.end <= datetime(2016, 11, 7, 8) for r in trace if r.end)
    assert trace.duration == 0.0
    assert check_trace(trace) == []


def test_generator_redraws_ends_whose_context_has_no_observation(store):
    # dingling has a 72-hour gap in its PM2.5 readings: 1-day contexts inside it must be redrawn.
    trace = generate(3000, "burst", seed=0, series=["dingling"], context_days=[1], horizons=[4])
    assert check_trace(trace, store) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0, "arrivals": "burst"}, "n"),
        ({"n": 5, "arrivals": "uniform"}, "arrivals"),
        ({"n": 5, "arrivals": "poisson"}, "rate"),
        ({"n": 5, "arrivals": "gamma", "cv": 2.0}, "rate"),
        ({"n": 5, "arrivals": "poisson", "rate": -1.0}, "rate"),
        ({"n": 5, "arrivals": "burst", "rate": 3.0}, "rate"),
        ({"n": 5, "arrivals": "poisson", "rate": 3.0, "cv": 2.0}, "cv"),
        ({"n": 5, "arrivals": "gamma", "rate": 3.0, "cv": 0.0}, "cv"),
        ({"n": 5, "arrivals": "burst", "seed": -1}, "seed"),
        ({"n": 5, "arrivals": "burst", "models": ["nope"]}, "models"),
        ({"n": 5, "arrivals": "burst", "models": []}, "models"),
        ({"n": 5, "arrivals": "burst", "models": {"random/chronos-2": -1.0}}, "weights"),
        ({"n": 5, "arrivals": "burst", "series": ["atlantis"]}, "series"),
        ({"n": 5, "arrivals": "burst", "horizons": [65]}, "horizons"),
        ({"n": 5, "arrivals": "burst", "context_days": [0]}, "context_days"),
        ({"n": 5, "arrivals": "burst", "covariates_share": 1.5}, "covariates_share"),
        ({"n": 5, "arrivals": "burst", "context_days": [200]}, "end_range"),
        ({"n": 5, "arrivals": "burst", "deadline_ms": 0}, "deadline_ms"),
        ({"n": 5, "arrivals": "burst", "deadline_ms": MAX_DEADLINE_MS + 1}, "deadline_ms"),
        ({"n": 5, "arrivals": "burst", "deadline_ms": 100.0, "deadline_classes": CLASSES}, "deadline_classes"),
        ({"n": 5, "arrivals": "onoff"}, "rate"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "cv": 2.0}, "cv"),
        ({"n": 5, "arrivals": "poisson", "rate": 20.0, "burst_factor": 4.0}, "burst_factor"),
        ({"n": 5, "arrivals": "burst", "burst_share": 0.2}, "burst_share"),
        ({"n": 5, "arrivals": "gamma", "rate": 1.0, "burst_seconds": 1.0}, "burst_seconds"),
        ({"n": 5, "arrivals": "poisson", "rate": 1.0, "phase_cv": 0.0}, "phase_cv"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "burst_factor": 0.5}, "burst_factor"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "burst_factor": math.inf}, "burst_factor"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "burst_share": 0.0}, "burst_share"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "burst_share": 1.0}, "burst_share"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "burst_seconds": 0.0}, "burst_seconds"),
        ({"n": 5, "arrivals": "onoff", "rate": 20.0, "phase_cv": -0.5}, "phase_cv"),
    ],
)
def test_generator_errors_name_the_argument(kwargs, field):
    with pytest.raises(InvalidRequest) as info:
        generate(**kwargs)
    assert info.value.field == field


def _measured(times: np.ndarray) -> tuple[float, float]:
    gaps = np.diff(times)
    return (len(times) - 1) / (times[-1] - times[0]), float(gaps.std() / gaps.mean())


@pytest.mark.parametrize(("arrivals", "cv"), [("poisson", 1.0), ("gamma", 0.5)])
def test_long_generated_trace_has_the_requested_rate_and_cv(arrivals, cv):
    trace = generate(20_000, arrivals, rate=20.0, cv=cv, seed=0)
    assert trace.rate == pytest.approx(20.0, rel=RATE_TOLERANCE)
    assert trace.gap_cv == pytest.approx(cv, rel=CV_TOLERANCE)
    assert trace.duration == pytest.approx(19_999 / 20.0, rel=RATE_TOLERANCE)


@pytest.mark.parametrize(
    ("arrivals", "cv", "n"), [("poisson", 1.0, 20_000), ("gamma", 0.5, 20_000), ("gamma", 3.0, 200_000)]
)
def test_arrival_times_have_the_requested_rate_and_cv_for_many_seeds(arrivals, cv, n):
    # The measured rate's relative sd is about cv / sqrt(n): gamma cv 3 needs n = 200,000 for ±3 %.
    for seed in range(10):
        times = arrival_times(n, arrivals, rate=20.0, cv=cv, seed=seed)
        assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
        rate, measured_cv = _measured(times)
        assert rate == pytest.approx(20.0, rel=RATE_TOLERANCE), seed
        assert measured_cv == pytest.approx(cv, rel=CV_TOLERANCE), seed


# ---------------------------------------------------------------------------------------------
# Deadline classes


def _content(trace: Trace) -> list[tuple[object, ...]]:
    return [
        (r.t, r.request_id, r.model_name, r.city, r.end, r.context_hours, r.horizon_hours, r.use_covariates)
        for r in trace
    ]


def test_deadline_classes_are_drawn_by_share_reproducibly():
    n = 20_000
    trace = generate(n, "burst", seed=0, deadline_classes=CLASSES, context_days=[2], horizons=[4])
    counts = trace.classes()
    assert set(counts) == {"interactive", "dashboard", "batch"} and sum(counts.values()) == n
    for name, deadline, share, priority in CLASSES:
        # sd of a share of 20,000 draws: at most 0.0035; ±0.015 is over 4 sd.
        assert counts[name] / n == pytest.approx(share, abs=0.015), name
        members = [r for r in trace if r.deadline_class == name]
        assert {(r.deadline_ms, r.priority) for r in members} == {(deadline, priority)}
    assert trace.meta["deadline_classes"] == [
        {"name": name, "deadline_ms": deadline, "share": share, "priority": priority}
        for name, deadline, share, priority in CLASSES
    ]
    assert trace.meta["deadline_ms"] is None
    again = generate(n, "burst", seed=0, deadline_classes=CLASSES, context_days=[2], horizons=[4])
    assert [r.deadline_class for r in again] == [r.deadline_class for r in trace]
    other = generate(n, "burst", seed=1, deadline_classes=CLASSES, context_days=[2], horizons=[4])
    assert [r.deadline_class for r in other] != [r.deadline_class for r in trace]


def test_deadline_classes_change_nothing_else():
    plain = generate(300, "poisson", rate=10.0, seed=4)
    classed = generate(300, "poisson", rate=10.0, seed=4, deadline_classes=CLASSES)
    assert _content(classed) == _content(plain)
    assert all(r.deadline_class is None and r.priority is None for r in plain)
    assert all(r.deadline_class is not None and r.priority is not None for r in classed)
    meta = dict(classed.meta)
    assert meta.pop("deadline_classes")
    assert meta == plain.meta  # and the meta of a trace without classes has no such key


def test_deadline_class_forms_and_normalised_shares():
    thirds = [("a", 100, 0.333), DeadlineClass("b", 200.0, 0.333, 5), ["c", 300.0, 0.333, 7]]
    trace = generate(600, "burst", seed=0, deadline_classes=thirds)
    classes = trace.meta["deadline_classes"]
    assert [c["name"] for c in classes] == ["a", "b", "c"]
    assert [c["priority"] for c in classes] == [None, 5, 7]
    assert sum(c["share"] for c in classes) == pytest.approx(1.0, abs=1e-5)
    assert {r.priority for r in trace if r.deadline_class == "a"} == {None}
    assert "priority" not in next(r for r in trace if r.deadline_class == "a").to_http_body()


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "must be a non-empty list"),
        ("interactive:150:1", "must be a non-empty list"),
        ([("a", 100.0)], "each class is (name, deadline_ms, share, priority)"),
        ([("a b", 100.0, 1.0, 1)], "a class name is 1 to 64 letters"),
        ([("", 100.0, 1.0, 1)], "a class name is 1 to 64 letters"),
        ([("a:b", 100.0, 1.0, 1)], "a class name is 1 to 64 letters"),
        ([("a", 100.0, 0.5, 1), ("a", 200.0, 0.5, 2)], "class 'a' is given twice"),
        ([("a", 0.0, 1.0, 1)], "class 'a': deadline_ms must be > 0 and at most 86400000"),
        ([("a", MAX_DEADLINE_MS + 1, 1.0, 1)], "class 'a': deadline_ms must be > 0"),
        ([("a", math.nan, 1.0, 1)], "class 'a': deadline_ms must be > 0"),
        ([("a", "150", 1.0, 1)], "class 'a': deadline_ms must be > 0"),
        ([("a", 100.0, 0.0, 1), ("b", 100.0, 1.0, 1)], "class 'a': share must be a number > 0"),
        ([("a", 100.0, 0.5, 1), ("b", 100.0, 0.4, 2)], "the shares must add up to 1, got 0.5 + 0.4 = 0.9"),
        ([("a", 100.0, 1.0, 0)], "class 'a': priority must be an integer from 1 (highest) to 100, got 0"),
        ([("a", 100.0, 1.0, 101)], "priority must be an integer from 1"),
        ([("a", 100.0, 1.0, 1.0)], "priority must be an integer from 1"),
        ([("a", 100.0, 1.0, True)], "priority must be an integer from 1"),
    ],
)
def test_deadline_class_errors(classes, message):
    with pytest.raises(InvalidRequest) as info:
        generate(5, "burst", deadline_classes=classes)
    assert info.value.field == "deadline_classes"
    assert message in info.value.message


# ---------------------------------------------------------------------------------------------
# On-off arrivals


def _in_phases(times: np.ndarray, phases: list[list[float]]) -> np.ndarray:
    inside = np.zeros(times.shape, dtype=bool)
    for start, end in phases:
        inside |= (times >= start) & (times < end)
    return inside


@pytest.mark.parametrize(("phase_cv", "tolerance"), [(1.0, 0.05), (0.0, 0.01)])
def test_onoff_has_the_requested_mean_rate_and_bursts(phase_cv, tolerance):
    # 200,000 requests, ~1,000 calm-burst cycles. Over seeds 0-199 the measured mean rate's
    # relative sd was 1.3 % with exponential phases (phase_cv 1), 0.23 % with fixed ones.
    n, rate = 200_000, 20.0
    calm_rate, burst_rate = 12.5, 50.0  # the defaults: bursts 4x the calm rate, 20 % of the time
    for seed in range(5):
        trace = generate(n, "onoff", rate=rate, seed=seed, phase_cv=phase_cv, context_days=[2], horizons=[4])
        onoff = trace.meta["onoff"]
        assert onoff["calm_rate"] == calm_rate and onoff["burst_rate"] == burst_rate
        assert (onoff["burst_factor"], onoff["burst_share"], onoff["burst_seconds"]) == (4.0, 0.2, 2.0)
        assert trace.meta["cv"] is None and trace.meta["rate"] == rate
        assert trace.rate == pytest.approx(rate, rel=tolerance), seed
        times, bursts = trace.times(), onoff["bursts"]
        assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
        burst_seconds = sum(b - a for a, b in bursts)
        assert burst_seconds / trace.duration == pytest.approx(0.2, rel=2 * tolerance), seed
        assert np.mean([b - a for a, b in bursts[:-1]]) == pytest.approx(2.0, rel=2 * tolerance), seed
        inside = _in_phases(times, bursts)
        assert inside.sum() / burst_seconds == pytest.approx(burst_rate, rel=0.03), seed
        assert (~inside).sum() / (trace.duration - burst_seconds) == pytest.approx(calm_rate, rel=0.03), seed
        assert trace.gap_cv > 1.2  # Poisson: 1; these gaps are over-dispersed (about 1.31)


def test_onoff_fixed_phases_are_a_square_wave():
    times = arrival_times(1000, "onoff", rate=20.0, phase_cv=0.0, burst_seconds=1.0, burst_share=0.25, seed=3)
    trace = retime(
        generate(1000, "burst", seed=3),
        "onoff",
        rate=20.0,
        phase_cv=0.0,
        burst_seconds=1.0,
        burst_share=0.25,
        seed=3,
    )
    assert np.array_equal(trace.times(), times)
    bursts = trace.meta["retimed"]["onoff"]["bursts"]
    # calm 3 s, burst 1 s, calm 3 s, ...: a calm phase first, at t = 0
    assert bursts[:3] == [[3.0, 4.0], [7.0, 8.0], [11.0, 12.0]]
    assert all(a == 4 * k + 3 for k, (a, _) in enumerate(bursts))
    per_second = np.bincount(np.floor(times).astype(np.int64))
    # calm 20/(1 + 0.25*3) = 11.4/s, bursts 45.7/s: every burst second holds more than any calm one
    burst_s = [4 * k + 3 for k in range(len(bursts) - 1)]
    calm_s = [s for s in range(int(times[-1])) if s % 4 != 3]
    assert per_second[burst_s].min() > per_second[calm_s].max()


def test_onoff_is_reproducible_and_a_longer_trace_starts_the_same():
    one = arrival_times(3000, "onoff", rate=20.0, seed=5)
    assert np.array_equal(arrival_times(3000, "onoff", rate=20.0, seed=5), one)
    assert not np.array_equal(arrival_times(3000, "onoff", rate=20.0, seed=6), one)
    assert np.array_equal(arrival_times(10_000, "onoff", rate=20.0, seed=5)[:3000], one)
    trace = generate(3000, "onoff", rate=20.0, seed=5)
    assert np.array_equal(trace.times(), one) and trace.requests[0].request_id == "onoff-0000"
    retimed = retime(generate(3000, "burst", seed=5), "onoff", rate=20.0, seed=5)
    assert np.array_equal(retimed.times(), one) and retimed.meta["retimed"]["onoff"] == trace.meta["onoff"]
    assert len(arrival_times(1, "onoff", rate=20.0)) == 1 and len(arrival_times(0, "onoff", rate=20.0)) == 0


# ---------------------------------------------------------------------------------------------
# Retiming


def test_retime_keeps_the_requests_and_changes_the_times():
    trace = generate(400, "poisson", rate=5.0, seed=3)
    assert retime(trace, "as-recorded") is trace
    burst = retime(trace, "burst")
    assert burst.duration == 0.0 and burst.meta["retimed"]["arrivals"] == "burst"
    fast = retime(trace, "poisson", rate=100.0, seed=1)
    assert fast.rate == pytest.approx(100.0, rel=0.2) and fast.requests[0].t == 0.0
    regular = retime(trace, "gamma", rate=100.0, cv=0.1, seed=1)
    assert regular.gap_cv == pytest.approx(0.1, rel=0.2)
    for other in (burst, fast, regular):
        assert [(r.request_id, r.city, r.end) for r in other] == [(r.request_id, r.city, r.end) for r in trace]
    assert np.array_equal(retime(trace, "poisson", rate=100.0, seed=1).times(), fast.times())
    assert not np.array_equal(retime(trace, "poisson", rate=100.0, seed=2).times(), fast.times())
    with pytest.raises(InvalidRequest) as info:
        retime(trace, "poisson")
    assert info.value.field == "rate"
    with pytest.raises(InvalidRequest) as info:
        retime(trace, "as-recorded", rate=3.0)
    assert info.value.field == "rate"
    with pytest.raises(InvalidRequest) as info:
        retime(trace, "zigzag")
    assert info.value.field == "arrivals"


def test_scale_time_divides_every_t():
    trace = generate(100, "poisson", rate=5.0, seed=3)
    double = scale_time(trace, 2.0)
    assert np.allclose(double.times(), trace.times() / 2, atol=1e-6)
    assert double.rate == pytest.approx(trace.rate * 2, rel=1e-4) and double.meta["speed"] == 2.0
    assert scale_time(double, 0.5).meta["speed"] == 1.0
    assert scale_time(trace, 1) is trace
    for speed in (0, -1.0, math.inf):
        with pytest.raises(InvalidRequest):
            scale_time(trace, speed)


# ---------------------------------------------------------------------------------------------
# check_trace


def test_check_trace_names_what_cannot_be_served(store):
    bad = Trace(
        (
            _request(0, 0.0, use_covariates=True),
            _request(1, 0.0, horizon_hours=100),
            _request(2, 0.0, end=datetime(2017, 3, 1)),
            _request(3, 0.0, city="atlantis"),
            _request(4, 0.0, model_name="no-such-model"),
            _request(5, 0.0, end=datetime(2016, 12, 31, 23), horizon_hours=2),
            _request(6, 0.0, end=datetime(2016, 12, 31, 23), horizon_hours=1),
        )
    )
    problems = check_trace(bad, store)
    assert [p.split(":")[0] for p in problems] == ["r-0", "r-1", "r-2", "r-3", "r-4"]
    assert "use_covariates" in problems[0] and "horizon_hours" in problems[1] and "end" in problems[2]
    assert problems[3].startswith("r-3: city: unknown series 'atlantis'") and "model_name" in problems[4]


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_trace_and_a_summary(tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    argv = ["gen", "--arrivals", "gamma", "--rate", "40", "--cv", "2", "--n", "50", "--seed", "4"]
    assert trace_main([*argv, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"50 requests, duration [\d.]+ s, mean rate [\d.]+/s, gap CV [\d.]+", err)
    trace = read_trace(out)
    assert len(trace) == 50 and trace.meta["cv"] == 2.0
    assert out.read_text(encoding="utf-8") == dumps_trace(generate(50, "gamma", rate=40.0, cv=2.0, seed=4))
    assert trace_main(argv) == 0  # stdout
    assert capsys.readouterr().out == out.read_text(encoding="utf-8")
    argv = ["gen", "--arrivals", "burst", "--n", "20", "--models", "random/chronos-2,random/chronos-bolt-tiny"]
    assert trace_main([*argv, "--weights", "1,0", "--horizons", "4", "--out", str(out)]) == 0
    assert read_trace(out).models() == {"random/chronos-2": 20}


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--arrivals", "poisson"], "--rate"),
        (["--arrivals", "gamma", "--cv", "2"], "--rate"),
        (["--arrivals", "burst", "--rate", "3"], "--rate"),
        (["--arrivals", "poisson", "--rate", "fast"], "--rate"),
        (["--arrivals", "burst", "--n", "-5"], "--n"),
        (["--arrivals", "burst", "--n", "0"], "--n"),
        (["--arrivals", "burst", "--models", "random/chronos-bolt-tiny,chronos-bolt-huge"], "--models"),
        (["--arrivals", "poisson", "--rate", "2", "--cv", "2"], "--cv"),
        (["--arrivals", "sometimes"], "--arrivals"),
        (["--arrivals", "burst", "--models", "random/chronos-2", "--weights", "1,2"], "--weights"),
        (["--arrivals", "burst", "--horizons", "100"], "--horizons"),
        (["--arrivals", "burst", "--series", "atlantis"], "--series"),
        (["--arrivals", "burst", "--seed", "-1"], "--seed"),
        (["--arrivals", "burst", "--deadline-ms", "1e9"], "--deadline-ms"),
        (["--arrivals", "onoff"], "--rate"),
        (["--arrivals", "poisson", "--rate", "2", "--burst-factor", "4"], "--burst-factor"),
        (["--arrivals", "onoff", "--rate", "2", "--burst-factor", "big"], "--burst-factor"),
        (["--arrivals", "onoff", "--rate", "2", "--burst-share", "1.5"], "--burst-share"),
        (["--arrivals", "onoff", "--rate", "2", "--burst-seconds", "0"], "--burst-seconds"),
        (["--arrivals", "onoff", "--rate", "2", "--phase-cv", "-1"], "--phase-cv"),
        (["--arrivals", "burst", "--deadline-classes", "interactive:150"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:fast:1:1"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:150:1:high"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:150:1:1.5"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:150:1:0"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:150:0.5,b:150:0.4"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:150:0.5,a:150:0.5"], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", ","], "--deadline-classes"),
        (["--arrivals", "burst", "--deadline-classes", "a:150:1", "--deadline-ms", "5"], "--deadline-classes"),
    ],
)
def test_cli_errors_name_the_flag(tmp_path, capsys, argv, flag):
    out = tmp_path / "never.jsonl"
    assert trace_main(["gen", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {flag}: " in err, err
    assert "Traceback" not in err and not out.exists()


def test_cli_gen_with_classes_and_onoff_writes_what_generate_writes(tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    argv = ["gen", "--arrivals", "onoff", "--rate", "30", "--burst-factor", "3", "--burst-share", "0.25"]
    argv += ["--burst-seconds", "1", "--phase-cv", "0.5", "--n", "80", "--seed", "2"]
    assert trace_main([*argv, "--deadline-classes", "fast:100:0.25:1, slow:2000:0.75", "--out", str(out)]) == 0
    assert "; classes: " in capsys.readouterr().err
    expected = generate(
        80,
        "onoff",
        rate=30.0,
        burst_factor=3.0,
        burst_share=0.25,
        burst_seconds=1.0,
        phase_cv=0.5,
        seed=2,
        deadline_classes=[("fast", 100.0, 0.25, 1), ("slow", 2000.0, 0.75)],
    )
    assert out.read_text(encoding="utf-8") == dumps_trace(expected)
    trace = read_trace(out)
    assert {(r.deadline_class, r.deadline_ms, r.priority) for r in trace} == {
        ("fast", 100.0, 1),
        ("slow", 2000.0, None),
    }


def test_cli_show_summarises_the_classes_and_the_bursts(tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    argv = ["gen", "--arrivals", "onoff", "--rate", "20", "--phase-cv", "0", "--n", "400", "--seed", "1"]
    assert trace_main([*argv, "--deadline-classes", CLASSES_FLAG, "--out", str(out)]) == 0
    capsys.readouterr()
    assert trace_main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    trace = read_trace(out)
    counts = trace.classes()
    for name, deadline, _, priority in CLASSES:
        share = f"{100 * counts[name] / 400:.1f} %"
        assert re.search(rf"^\s+{name}\s+{counts[name]}\s+{share}\s+{deadline:g}\s+{priority}$", shown, re.M), shown
    rows = [line.split()[0] for line in shown.splitlines() if line.split()[0] in counts]
    assert rows == ["interactive", "dashboard", "batch"]  # by priority
    assert f"{trace.timing()}" in shown
    bursts = trace.meta["onoff"]["bursts"]
    assert bursts == [[8.0, 10.0], [18.0, 20.0]]  # calm 8 s, burst 2 s (the defaults), fixed lengths
    inside = int(_in_phases(trace.times(), bursts).sum())
    assert f"bursts: 2 (8-10, 18-20 s), 4.0 s of 20.4 s: {inside} requests in bursts, {inside / 4:.1f}/s" in shown
    assert "calm 12.5/s, bursts 50/s" in shown
    per_second = np.bincount(np.floor(trace.times()).astype(np.int64))[: int(trace.duration)]
    assert f"max {per_second.max()} (t = {per_second.argmax()}-" in shown
    assert "priority: 1 " in shown and "deadline_ms: 150 " in shown
    assert trace_main(["show", str(ROOT / "traces" / "poisson.jsonl")]) == 0
    shown = capsys.readouterr().out
    assert "deadline classes" not in shown and "deadline_ms: none" in shown and "bursts:" not in shown
    assert "500 requests, duration 23.905 s" in shown
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_line(priority=0) + "\n", encoding="utf-8")
    assert trace_main(["show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: 'priority' must be >= 1" in err and "Traceback" not in err


def test_cli_check(tmp_path, capsys):
    assert trace_main(["check", str(ROOT / "traces" / "burst.jsonl")]) == 0
    assert "500 requests" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    write_trace(Trace((_request(0, 0.0, use_covariates=True),)), bad)
    assert trace_main(["check", str(bad)]) == 1
    assert "r-0: use_covariates" in capsys.readouterr().out
    bad.write_text(GOOD.replace("city", "cty") + "\n", encoding="utf-8")
    assert trace_main(["check", str(bad)]) == 2
    assert f"{bad}:1: unknown key 'cty'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The shipped traces


@pytest.mark.parametrize(("name", "argv"), [("burst", []), ("poisson", ["--rate", "20"])])
def test_shipped_trace_is_what_the_documented_command_writes(tmp_path, capsys, name, argv):
    shipped = ROOT / "traces" / f"{name}.jsonl"
    command = f"chronoserve trace gen --arrivals {name} {' '.join(argv)} --n 500 --seed 0 --out traces/{name}.jsonl"
    assert command.replace("  ", " ") in (ROOT / "docs" / "traces.md").read_text(encoding="utf-8")
    out = tmp_path / f"{name}.jsonl"
    assert trace_main(["gen", "--arrivals", name, *argv, "--n", "500", "--seed", "0", "--out", str(out)]) == 0
    fresh, kept = out.read_text(encoding="utf-8").splitlines(), shipped.read_text(encoding="utf-8").splitlines()
    fresh_meta, kept_meta = json.loads(fresh[0])["meta"], json.loads(kept[0])["meta"]
    fresh_meta.pop("version"), kept_meta.pop("version")
    assert fresh_meta == kept_meta
    assert fresh[1:] == kept[1:]


@pytest.mark.parametrize("name", ["burst", "poisson"])
def test_shipped_trace_is_servable_from_the_embedded_data(store, name):
    trace = read_trace(ROOT / "traces" / f"{name}.jsonl")
    assert len(trace) == 500
    assert trace.meta["arrivals"] == name and trace.meta["seed"] == 0 and trace.meta["n"] == 500
    assert trace.meta["rate"] == (20.0 if name == "poisson" else None)
    assert set(trace.models()) == set(MODELS)
    assert {r.context_hours for r in trace} == {24 * d for d in (2, 4, 8, 10, 14)}
    assert {r.horizon_hours for r in trace} == {4, 8, 12, 24, 48}
    assert {r.use_covariates for r in trace if r.model_name == "random/chronos-2"} == {True, False}
    for r in trace:
        entry = find_entry(r.model_name)
        assert entry is not None
        assert r.horizon_hours <= entry.max_horizon
        if entry.family == "chronos-bolt":
            assert r.horizon_hours <= 64 and not r.use_covariates
        window = store.window(
            r.city, horizon=r.horizon_hours, context=r.context_hours, end=r.end, covariates=r.use_covariates
        )
        assert window.context_length == r.context_hours
        assert window.actual is not None and not np.all(np.isnan(window.actual))
        assert not np.all(np.isnan(window.target))
    assert check_trace(trace, store) == []
    if name == "poisson":
        assert trace.rate == pytest.approx(20.0, rel=0.1)  # 500 requests: sd of the measured rate 4.5 %


def test_shipped_deadline_trace_is_what_the_documented_command_writes(tmp_path, capsys):
    for doc in ("docs/traces.md", "traces/README.md"):
        assert DEADLINES_COMMAND in (ROOT / doc).read_text(encoding="utf-8"), doc
    shipped = ROOT / "traces" / "deadlines.jsonl"
    assert shipped.stat().st_size < 200_000
    out = tmp_path / "deadlines.jsonl"
    assert trace_main(["gen", *DEADLINES_ARGV, "--out", str(out)]) == 0
    fresh, kept = out.read_text(encoding="utf-8").splitlines(), shipped.read_text(encoding="utf-8").splitlines()
    fresh_meta, kept_meta = json.loads(fresh[0])["meta"], json.loads(kept[0])["meta"]
    fresh_meta.pop("version"), kept_meta.pop("version")
    assert fresh_meta == kept_meta
    assert fresh[1:] == kept[1:]


def test_shipped_deadline_trace_has_bursts_classes_and_is_servable(store):
    trace = read_trace(ROOT / "traces" / "deadlines.jsonl")
    assert len(trace) == 600 and trace.meta["arrivals"] == "onoff" and trace.meta["rate"] == 20.0
    assert trace.rate == pytest.approx(20.0, rel=0.1)
    assert set(trace.models()) == set(MODELS)
    assert {r.context_hours for r in trace} == {24 * d for d in (2, 4, 8, 10, 14)}
    assert {r.horizon_hours for r in trace} == {4, 8, 12, 24, 48}
    assert set(trace.classes()) == {c[0] for c in CLASSES}
    by_name = {name: (deadline, priority) for name, deadline, _, priority in CLASSES}
    assert all((r.deadline_ms, r.priority) == by_name[r.deadline_class] for r in trace if r.deadline_class)
    bursts = trace.meta["onoff"]["bursts"]
    assert bursts[:2] == [[8.0, 10.0], [18.0, 20.0]]
    times = trace.times()
    inside = _in_phases(times, bursts)
    burst_rate = inside.sum() / sum(b - a for a, b in bursts)
    calm_rate = (~inside).sum() / (trace.duration - sum(b - a for a, b in bursts))
    assert burst_rate > 3 * calm_rate  # 50/s against 12.5/s asked
    assert check_trace(trace, store) == []


def test_docs_python_block_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "traces.md").read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/traces.md", "exec"), {"__name__": "doc_traces"})
