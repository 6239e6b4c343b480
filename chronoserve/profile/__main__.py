"""``python -m chronoserve.profile WORK.json``: one profile process (``chronoserve profile`` runs
:func:`main` in a worker process of :mod:`chronoserve.forkserver`, one per model x workers x threads)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Set torch's threads to the work's, then run it (:func:`chronoserve.profile.runner.main`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1:
        from ..edge.pinning import set_torch_threads

        # Explicitly: in a process forked from the fork server, torch was imported there, before
        # OMP_NUM_THREADS or MKL_NUM_THREADS could size its pools.
        set_torch_threads(int(json.loads(Path(args[0]).read_text(encoding="utf-8"))["torch_threads"]))
    from .runner import main as run

    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
