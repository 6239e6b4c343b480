"""Query classes: the shapes of work a profile measures (OASIS's query types, for forecasts).

OASIS splits queries by input and output size (small/large input x small/large output); for a
forecast the analogues are the context length, the output patches (the horizon) and the
covariate rows. A class names one such shape; ``--classes`` takes them as
``name:context:horizon[:covariates]``, e.g. ``short:64:16,long:512:64,long-cov:512:64:2``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..limits import MAX_COVARIATES, MAX_HORIZON, MAX_SERIES_POINTS
from ..models.base import ModelSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$")


@dataclass(frozen=True)
class QueryClass:
    """One shape of request: ``context`` points of history, ``horizon`` steps, ``covariates`` known-future covariates.

    Covariates are Chronos-2's: each is sent with its past values (over the context) and its
    future values (over the horizon), so it adds one row to the batch.
    """

    name: str
    context: int
    horizon: int
    covariates: int = 0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"class name {self.name!r}: letters, digits and _.+- only, at most 40")
        if not 1 <= self.context <= MAX_SERIES_POINTS:
            raise ValueError(f"class {self.name}: context must be 1..{MAX_SERIES_POINTS}, got {self.context}")
        if not 1 <= self.horizon <= MAX_HORIZON:
            raise ValueError(f"class {self.name}: horizon must be 1..{MAX_HORIZON}, got {self.horizon}")
        if not 0 <= self.covariates <= MAX_COVARIATES:
            raise ValueError(f"class {self.name}: covariates must be 0..{MAX_COVARIATES}, got {self.covariates}")

    def fits(self, spec: ModelSpec) -> str | None:
        """Why ``spec`` cannot run this class (None when it can)."""
        if self.covariates and not spec.supports_covariates:
            return f"{spec.family} takes no covariates"
        if self.horizon > spec.max_horizon:
            return f"horizon {self.horizon} exceeds {spec.name}'s {spec.max_horizon}"
        return None

    def output_steps(self, spec: ModelSpec) -> int:
        """Decoding work per series: output patches for the patch models, steps for Chronos-T5."""
        if spec.family == "chronos-t5":
            return self.horizon
        return math.ceil(self.horizon / (spec.batch_patch or 16))

    def spec_text(self) -> str:
        tail = f":{self.covariates}" if self.covariates else ""
        return f"{self.name}:{self.context}:{self.horizon}{tail}"


#: Short and long context x one and four output patches, and the long ones with two covariates
#: (run only on models that take covariates).
DEFAULT_CLASSES: tuple[QueryClass, ...] = (
    QueryClass("short-few", 64, 16),
    QueryClass("short-many", 64, 64),
    QueryClass("long-few", 512, 16),
    QueryClass("long-many", 512, 64),
    QueryClass("short-cov", 64, 16, 2),
    QueryClass("long-cov", 512, 64, 2),
)
#: ``--quick``: the two corners.
QUICK_CLASSES: tuple[QueryClass, ...] = (QueryClass("short-few", 64, 16), QueryClass("long-many", 512, 64))


def parse_classes(text: str) -> tuple[QueryClass, ...]:
    """``name:context:horizon[:covariates]``, comma-separated; ValueError naming what is wrong."""
    classes: list[QueryClass] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        fields = part.split(":")
        if len(fields) not in (3, 4):
            raise ValueError(f"{part!r}: expected name:context:horizon[:covariates]")
        try:
            numbers = [int(f) for f in fields[1:]]
        except ValueError:
            raise ValueError(f"{part!r}: context, horizon and covariates must be whole numbers") from None
        classes.append(QueryClass(fields[0], *numbers))
    if not classes:
        raise ValueError("no class given")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {names}")
    return tuple(classes)
