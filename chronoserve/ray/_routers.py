"""The request router of each engine deployment in this process, by (application, deployment).

Apart from :mod:`.router` because Ray pickles the router class by value (its functions' globals
with it), and a registry of live objects does not pickle: the class reaches this module by name.
"""

from __future__ import annotations

import weakref
from typing import Any

ROUTERS: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()
