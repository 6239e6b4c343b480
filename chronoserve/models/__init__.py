"""Chronos models for chronoserve: the model seam, the catalog, random checkpoints, the loader.

Importing this package imports neither torch, transformers nor chronos; the loader imports
them when it loads a model, and :mod:`chronoserve.models.chronos` (the torch backends) is
imported only then.
"""

from __future__ import annotations

from chronoserve.models.base import (
    CHRONOS_2,
    CHRONOS_BOLT,
    CHRONOS_T5,
    BackendForecast,
    ModelBackend,
    ModelLoader,
    ModelSpec,
    PreparedRequest,
)
from chronoserve.models.catalog import CATALOG, CatalogEntry, catalog_entry
from chronoserve.models.loader import ChronosLoader
from chronoserve.models.materialize import cache_dir, is_materialized, materialize, random_checkpoint_dir

__all__ = [
    "CATALOG",
    "CHRONOS_2",
    "CHRONOS_BOLT",
    "CHRONOS_T5",
    "CatalogEntry",
    "ChronosLoader",
    "BackendForecast",
    "ModelBackend",
    "ModelLoader",
    "ModelSpec",
    "PreparedRequest",
    "cache_dir",
    "catalog_entry",
    "is_materialized",
    "materialize",
    "random_checkpoint_dir",
]
