from __future__ import annotations

import os
import tempfile

import pytest

# Materialised test checkpoints go to one temporary cache per test session, never the user's.
_CACHE = tempfile.mkdtemp(prefix="chronoserve-test-cache-")
os.environ["CHRONOSERVE_CACHE"] = _CACHE
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_cache() -> str:
    """The session's model cache directory (``CHRONOSERVE_CACHE``)."""
    return _CACHE
