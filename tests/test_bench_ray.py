"""bench/ray.py's pure parts: who used the CPU, the report's tables and verdicts, refused sections.
(Its sections start Ray clusters and servers for minutes: they run by hand, not in the suite.)"""

from __future__ import annotations

import pytest
from benches import load_bench

bench = load_bench("ray")


@pytest.mark.parametrize(
    ("cmdline", "group"),
    [
        ("ray::ServeReplica:bench:chronoserve-engine\0", "engine replicas"),
        ("ray::ServeReplica:bench:Ingress\0", "ingress"),
        ("ray::ProxyActor\0", "Serve proxy"),
        ("wrk\0-t1\0-c64\0", "wrk"),
        ("/venv/bin/python\0-m\0chronoserve\0serve\0--port\08000\0", "chronoserve serve"),
        ("/venv/bin/python\0-m\0chronoserve\0serve\0--ray\0", "front end (driver)"),
        ("/venv/bin/python\0-B\0-c\0from multiprocessing.forkserver import main\0", "chronoserve serve"),
        ("/venv/lib/ray/core/src/ray/gcs/gcs_server\0", "Ray's own"),
        ("/usr/bin/bash\0", None),
    ],
)
def test_processes_are_grouped_by_what_they_are(cmdline: str, group: str | None) -> None:
    assert bench._group(cmdline) == group


def test_cpu_used_is_the_growth_of_each_group() -> None:
    assert bench.used({"wrk": 1.0, "ingress": 2.0}, {"wrk": 3.5, "ingress": 2.0, "Serve proxy": 0.25}) == {
        "Serve proxy": 0.25,
        "wrk": 2.5,
    }


def test_the_report_says_each_goal_met_or_not_with_its_numbers() -> None:
    row = {"requests_per_s": 900.0, "p50_ms": 60.0, "p99_ms": 120.0, "errors": 0, "cpu_seconds": {"wrk": 1.5}}
    results = {
        "overhead": {
            "model": "m",
            "connections": 64,
            "rows": {"serve": row},
            "ratio": 0.8,
            "split_ratio": 0.9,
            "proxy_ratio": 0.1,
            "met": False,
        },
        "affinity": {
            "trace": "traces/zipf-models.jsonl",
            "models": 16,
            "model_bytes": 9e8,
            "memory_budget_per_replica": 3e8,
            "rows": {"readiness": {"requests": 10, "ok": 10, "hit_ratio": 0.95, "p50_ms": 5.0, "p99_ms": 9.0}},
            "met": True,
        },
        "scaling": {"model": "m", "connections": 64, "rows": {"1": row, "2": row}, "ratio": 1.0, "met": False},
    }
    text = bench.report(results)
    assert "Ray / serve: 0.80x (goal >= 0.85x; the same split without Ray, --http-workers 1: 0.90x; " in text
    assert "through Serve's proxy 0.10x): NOT met" in text
    assert "hits placed by readiness (goal >= 90%): met" in text
    assert "2 replicas / 1: 1.00x (goal >= 1.5x): NOT met" in text
    assert "| serve | 900.0 | 60.0 | 120.0 | 0 | wrk 1.5 |" in text


def test_an_unknown_section_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.main(["--sections", "overhead,nope"])
    assert exited.value.code == 2
    assert "--sections: unknown nope" in capsys.readouterr().err
