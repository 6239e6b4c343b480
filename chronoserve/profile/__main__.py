"""``python -m chronoserve.profile WORK.json``: one profile process (``chronoserve profile`` starts them)."""

from __future__ import annotations

from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
