from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

# Materialised test checkpoints go to one temporary cache per test session, never the user's.
_CACHE = tempfile.mkdtemp(prefix="chronoserve-test-cache-")
os.environ["CHRONOSERVE_CACHE"] = _CACHE
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray (the tests marked `ray`) on loopback only: with this unset (read when ray is imported, so
# here, before any test module imports it) a Ray node binds the machine's first network address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# The garbage collector, sized for a test session. The suite's heap is large (torch, transformers,
# pandas, hypothesis, schemathesis: millions of objects), and with CPython's default thresholds
# (700, 10, 10) the full collections that walk all of it ran ~100 times, 28 s of a 120 s run on
# 2 cores (measured with gc.callbacks). Young collections every 10,000 allocations and a full one
# after 100 of the middle ones (about 10 a session) leave ~4 s; cycles are still collected.
gc.set_threshold(10_000, 10, 100)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Once every test module is imported: what the imports built lives as long as the session,
    so it moves out of the collector's sight (``gc.freeze``) instead of being walked again."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def model_cache() -> str:
    """The session's model cache directory (``CHRONOSERVE_CACHE``)."""
    return _CACHE


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """The Ray tests' cluster: two nodes on 127.0.0.1 and Serve's proxy (``tests/ray_cluster.py``),
    started once for all of them (they run in one xdist worker: the group ``ray``)."""
    from ray_cluster import two_nodes

    with two_nodes() as cluster:
        yield cluster
