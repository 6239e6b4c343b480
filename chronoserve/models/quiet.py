"""Quiet third parties: the libraries that load and run models say nothing unless asked.

transformers draws a ``Loading weights`` progress bar for every checkpoint it reads and a
``Writing model shards`` bar for every one it writes; huggingface_hub one per download; they and
the model code warn about deprecations a user of chronoserve cannot act on. chronoserve says what
it is doing itself (its own log lines), so :func:`quiet_third_parties` turns those off, unless
``CHRONOSERVE_THIRD_PARTY_OUTPUT=1``. Errors still surface: as exceptions, and at ERROR level.
"""

from __future__ import annotations

import contextlib
import os
import warnings

#: Set to 1 for the progress bars and warnings of transformers, huggingface_hub and the model code.
THIRD_PARTY_OUTPUT = "CHRONOSERVE_THIRD_PARTY_OUTPUT"
_THIRD_PARTIES = r"(transformers|huggingface_hub|chronos|torch|onnxruntime|onnxscript|onnx)(\.|$)"


def quiet_third_parties() -> None:
    """No progress bars and no warnings from the libraries that load and run models (transformers'
    ``Loading weights`` bars, huggingface_hub's downloads, their deprecation warnings), unless
    :data:`THIRD_PARTY_OUTPUT` asks for them: chronoserve says what it is doing itself. Errors still
    surface (as exceptions, and at ERROR level)."""
    if os.environ.get(THIRD_PARTY_OUTPUT, "").strip() in ("1", "true", "yes"):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", module=_THIRD_PARTIES)
    with contextlib.suppress(ImportError):  # both come with chronos-forecasting
        from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]

        disable_progress_bars()
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
