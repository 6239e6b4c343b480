"""A quiet library: no third-party progress bars or warnings unless asked, and a request's load time
is its model's load, not the engine's one-time imports (reported apart)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chronoserve import ForecastRequest
from chronoserve.models.base import ModelSpec
from chronoserve.pool import ModelPool
from chronoserve.residency import Loaded
from chronoserve.testing import FakeClock, FakeLoader, fake_engine, fake_spec

LOAD = """
from chronoserve.models.loader import ChronosLoader
loader = ChronosLoader(cache_dir={cache!r}, fastload=False)  # from_pretrained, as hub ids load
loader.load(loader.resolve("random/tiny-chronos-bolt"))  # materialised (written) and read
print("loaded")
"""


@pytest.mark.torch
@pytest.mark.slow
def test_loading_prints_no_third_party_progress_bars_or_warnings_unless_asked(tmp_path: Path) -> None:
    def run(cache: Path, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, "-W", "default", "-c", LOAD.format(cache=str(cache))],
            capture_output=True,
            text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_DISABLE")}, **env},
            timeout=300,
        )
        assert done.returncode == 0 and "loaded" in done.stdout, done.stderr
        return done.stderr

    quiet = run(tmp_path / "a")
    assert "Loading weights" not in quiet and "Writing model shards" not in quiet and "Warning" not in quiet, quiet
    asked = run(tmp_path / "b", CHRONOSERVE_THIRD_PARTY_OUTPUT="1")
    assert "Loading weights" in asked  # the same run, asked: transformers' bars are there to be hidden


class SlowImports(FakeLoader):
    """Imports that take 5 s and loads that take 1 s, on the engine's fake clock."""

    clock: FakeClock | None = None

    def import_modules(self) -> None:
        assert self.clock is not None
        self.clock.advance(5.0)

    def load(self, spec: ModelSpec, host=None):  # type: ignore[no-untyped-def]
        assert self.clock is not None
        self.clock.advance(1.0)
        return super().load(spec, host)


async def test_a_requests_load_time_is_the_load_and_the_imports_are_reported_apart() -> None:
    clock = FakeClock(autojump=True)
    loader = SlowImports.with_models("m")
    loader.clock = clock
    async with fake_engine("batched", loader=loader, clock=clock, policy_options={"max_wait": 0.0}) as engine:
        result = await engine.forecast(ForecastRequest(model="m", target=[1.0, 2.0], horizon=2))
        stats = engine.stats()
        resident = engine.resident()
    assert result.cold_start and result.timings.load == pytest.approx(1.0)
    assert stats.import_seconds == pytest.approx(5.0)
    assert resident["m"].load_seconds == pytest.approx(1.0)


def test_a_load_that_waited_for_the_imports_is_timed_from_when_it_ran() -> None:
    # Decided at 0, the imports until 5, the load from 5 to 6: requests waited on the load from 5.
    pool = ModelPool()
    spec = fake_spec("m")
    pool.begin_load(spec, now=0.0)
    pool.finish_load("m", Loaded(FakeLoader.with_models("m").load(spec), "disk", 5.0, 6.0), now=6.0)
    record = pool.last_load["m"]
    assert (record.started, record.finished, record.seconds) == (5.0, 6.0, 1.0)
