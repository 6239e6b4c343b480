"""``chronoserve profile``: a cost table of what work costs on this machine (OASIS phase 1).

- :mod:`.classes`: the query classes measured (context x output patches x covariates);
- :mod:`.runner`: one profile process (a model on W workers x T threads), measuring through the
  serving engine; :mod:`.msrr`: the maximum-serviceable-rate search;
- :mod:`.report`: ``profile.csv``, ``profile.json`` and :func:`load_profile`, what ``serve
  --profile`` and ``replay --profile`` load to seed the engine's cost model;
- :mod:`.plots`: the PNGs.

Importing this package imports neither torch nor matplotlib.
"""

from __future__ import annotations

from .classes import DEFAULT_CLASSES, QUICK_CLASSES, QueryClass, parse_classes
from .report import Profile, load_profile

__all__ = ["DEFAULT_CLASSES", "QUICK_CLASSES", "Profile", "QueryClass", "load_profile", "parse_classes"]
