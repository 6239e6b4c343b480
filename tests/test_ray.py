"""chronoserve on Ray Serve (the ``ray`` extra), on a local Ray on 127.0.0.1: engine replicas,
requests placed by readiness, the engine's errors as themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import partial

import pytest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

from ray import serve  # noqa: E402

from chronoserve import ForecastRequest  # noqa: E402
from chronoserve.errors import InvalidRequest  # noqa: E402
from chronoserve.ray.handle import RayEngines  # noqa: E402
from chronoserve.ray.replica import engine_deployment  # noqa: E402
from chronoserve.settings import EngineSettings  # noqa: E402
from chronoserve.testing import FakeLoader, fake_spec  # noqa: E402

MODELS = ("a", "b")
SERIES = [float(i % 24) for i in range(48)]
#: Seconds a pair of requests may take to find their places (Ray polls the replicas every 0.2 s).
SETTLE_SECONDS = 120.0


#: Each replica's loader: two fake models whose loads take 0.2 s (placing one where it is not costs).
#: A partial of a class the replicas can import (a function of this module would not unpickle there).
fake_loader = partial(FakeLoader, specs={m: fake_spec(m) for m in MODELS}, load_seconds=0.2)


@pytest.fixture(scope="module")
def engines() -> Iterator[RayEngines]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        settings = EngineSettings(policy="batched", policy_options={"max_wait": 0.001, "max_resident": 1}, workers=1)
        app = engine_deployment(settings, replicas=2, loader=fake_loader, stats_period=0.2)
        handle = serve.run(app, name="chronoserve-test", route_prefix=None)
        yield RayEngines(handle, fake_loader())
    finally:
        serve.shutdown()
        ray.shutdown()


def request(model: str) -> ForecastRequest:
    return ForecastRequest(model=model, target=SERIES, horizon=4)


async def test_each_model_settles_on_its_own_replica_and_stays_there(engines: RayEngines) -> None:
    # One model per replica fits (max_resident 1): once the readiness polls show where each model
    # is, every request for it goes there, and neither replica thrashes between the two.
    deadline = time.monotonic() + SETTLE_SECONDS
    where: tuple[str, str] | None = None
    streak = 0
    while streak < 3:
        assert time.monotonic() < deadline, "the models never settled on one replica each"
        (ra, answer_a), (rb, answer_b) = [await engines.served(request(m)) for m in MODELS]
        assert (answer_a.model, answer_b.model) == MODELS
        streak = streak + 1 if ra != rb and (ra, rb) == where else int(ra != rb)
        where = (ra, rb)
        await asyncio.sleep(0.05)  # pacing only: what is waited for is the streak above
    assert where is not None
    served = [await engines.served(request(m)) for m in MODELS * 4]
    assert [replica for replica, _ in served] == list(where) * 4
    assert list(served[0][1].median) == [SERIES[-1]] * 4  # the fake model's answer, through Ray


async def test_an_engine_error_crosses_as_itself(engines: RayEngines) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await engines.forecast(ForecastRequest(model="a", target=SERIES, horizon=0))
    assert caught.value.field == "horizon"
