"""A Python client for the chronoserve HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

Both have the same methods (``forecast``, ``forecast_batch``, ``predict_df``, ``models``,
``series``, ``health``, ``ready``, ``metrics``), like ``httpx.Client`` and ``httpx.AsyncClient``::

    with Client("http://127.0.0.1:8000") as client:
        fc = client.forecast(city="dongsi", horizon_hours=24)
        print(fc.timestamps[0], fc.median[:3], fc.quantiles.shape)

    async with AsyncClient("http://127.0.0.1:8000") as client:
        frame = await client.predict_df(df, prediction_length=48)

Each method is written once, as a generator that yields the HTTP calls and the pauses it
needs (a "sans-I/O" flow); the two classes only differ in how they carry them out. Bodies,
parsing, errors, the retry settings and the DataFrame assembly are plain functions:

- :mod:`.bodies`: what is sent (:func:`forecast_body`, batches split in chunks);
- :mod:`.answers`: what comes back (:class:`Forecast`, :class:`ChronoserveHTTPError`, parsing);
- :mod:`.flows`: the call settings (retries) and the flows both clients carry out;
- :mod:`.frames`: ``predict_df``'s pandas frames (planning the bodies, assembling the answer);
- :mod:`.sync_client`, :mod:`.async_client`: :class:`Client` and :class:`AsyncClient`.

Errors: an answer other than 2xx raises :class:`ChronoserveHTTPError` (``status``,
``detail``, ``field``). A 429 (queue full), and a 503 that carries ``Retry-After``, are
retried up to ``retries`` times after the ``Retry-After`` seconds (at most
``max_retry_after``). Connection errors and timeouts propagate as httpx exceptions.

Importing this package does not import pandas; :meth:`Client.predict_df` does.
"""

from __future__ import annotations

from .answers import ChronoserveHTTPError, Forecast
from .async_client import AsyncClient
from .bodies import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from .bodies import DEFAULT_QUANTILES as DEFAULT_QUANTILES
from .bodies import MAX_BATCH_ITEMS, forecast_body
from .bodies import ArrayLike as ArrayLike
from .flows import DEFAULT_BASE_URL
from .frames import DF_QUANTILES as DF_QUANTILES
from .sync_client import Client

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BATCH_ITEMS",
    "AsyncClient",
    "ChronoserveHTTPError",
    "Client",
    "Forecast",
    "forecast_body",
]
