"""``python -m chronoserve.edge CONFIG.json``: one pinned edge-bench run, in its own process.

``chronoserve edge-bench`` starts one of these per core count and batch size. Affinity and torch's thread counts are
process-wide, and ``torch.set_num_interop_threads`` works once per process, so every
configuration gets a fresh process. The order here matters: pin, then import torch and set
its threads, then build the engine, load the model, and check what actually holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m chronoserve.edge CONFIG.json (written by `chronoserve edge-bench`)", file=sys.stderr)
        return 2
    config_path = Path(args[0])
    data = json.loads(config_path.read_text(encoding="utf-8"))

    from .pinning import pin, set_torch_threads

    threads_at_pin = pin(data["cores"])  # first: before torch, numpy's BLAS or the engine create a thread
    threads = set_torch_threads(len(data["cores"]))

    from chronoserve.errors import ChronoserveError

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
    result["pinning"]["threads_at_pin"] = threads_at_pin
    result["pinning"]["torch_threads_set"] = threads
    result["software"] = software_info()
    out = Path(config.out) / "result.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
