"""``python -m chronoserve.edge CONFIG.json``: one pinned edge-bench run, in its own process.

``chronoserve edge-bench`` runs :func:`main` in one worker process per core count and batch
size (forked from the fork server of :mod:`chronoserve.forkserver`, or spawned). Affinity and
torch's thread counts are process-wide, and ``torch.set_num_interop_threads`` works once per
process, so every configuration gets a fresh process. The order here matters: pin, then set
torch's threads, then build the engine, load the model, and check what actually holds. A
spawned process imports torch only after pinning; a forked one has torch imported already,
but in a fork server that ran no torch work, so no thread pool exists before the pinning and
``torch.set_num_threads`` still sizes the pools (environment variables such as
``OMP_NUM_THREADS`` were read at import, in the fork server: the run records how the process
started and what they were then, under ``pinning.process_start``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the configuration ``argv[0]`` names; the exit status (0, 1 on an error, 2 on bad usage)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m chronoserve.edge CONFIG.json (written by `chronoserve edge-bench`)", file=sys.stderr)
        return 2
    config_path = Path(args[0])
    data = json.loads(config_path.read_text(encoding="utf-8"))

    from .pinning import THREAD_ENV, pin, set_torch_threads

    k = len(data["cores"])
    for name in THREAD_ENV:  # OpenMP / BLAS pools sized to k from their first thread (where not imported yet)
        os.environ[name] = str(k)
    threads_at_pin = pin(data["cores"])  # first: before torch, numpy's BLAS or the engine create a thread
    threads = set_torch_threads(k)

    from chronoserve.errors import ChronoserveError
    from chronoserve.forkserver import started

    from .metadata import software_info
    from .runner import BenchConfig, run_benchmark

    config = BenchConfig.from_dict(data)
    try:
        result = run_benchmark(config)
    except ChronoserveError as exc:
        print(f"chronoserve edge-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    start = started()
    result["pinning"]["threads_at_pin"] = threads_at_pin
    result["pinning"]["torch_threads_set"] = threads
    result["pinning"]["process_start"] = start.to_dict() if start is not None else {"method": "command"}
    result["software"] = software_info()
    out = Path(config.out) / "result.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
