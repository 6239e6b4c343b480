"""Run again the shell examples of a doc against a real server, and write what they print back into it.

    python bench/transcript.py docs/http.md "## Examples" -- chronoserve serve
    python bench/transcript.py docs/operations.md "## The transcript" --script /tmp/ops/run.sh

The first form starts the server command (after ``--``), waits for ``/readyz``, runs every
``$ `` line of the first fenced block under the heading with bash (in this directory) and puts
its output under it, replacing what was there; then stops the server with SIGTERM. The second
runs a script that prints its own transcript (it starts what it needs) and puts the output in a
new fenced block under the heading. The doc says when and on what it ran.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

FENCE = "```"


def _ready(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}: not ready in {timeout:.0f} s")


def _block(lines: list[str], heading: str) -> tuple[int, int]:
    """The first fenced block after ``heading``: its opening and closing fence lines."""
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        raise SystemExit(f"no heading {heading!r}")
    opening = next(i for i in range(start, len(lines)) if lines[i].startswith(FENCE))
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith(FENCE))
    return opening, closing


def _run(command: str) -> str:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    return (done.stdout + done.stderr).rstrip("\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("doc", type=Path)
    parser.add_argument("heading")
    parser.add_argument("--script", help="a script that prints its own transcript")
    parser.add_argument("--url", default="http://127.0.0.1:8000/readyz")
    argv = sys.argv[1:]
    server = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    lines = args.doc.read_text().splitlines()
    stamp = (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node() or 'this machine'}, {os.cpu_count()} cores"
    )
    if args.script:
        print(f"running {args.script}", file=sys.stderr)
        output = _run(f"bash {args.script}")
        start = next(i for i, line in enumerate(lines) if line.strip() == args.heading)
        body = [f"`bash {args.script}` ({stamp}):", "", FENCE, *output.splitlines(), FENCE]
        lines = lines[: start + 1] + ["", *body]
    else:
        if not server:
            raise SystemExit("give the server command after --, or --script")
        running = subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _ready(args.url)
            opening, closing = _block(lines, args.heading)
            new: list[str] = []
            for line in lines[opening + 1 : closing]:
                if line.startswith("$ "):
                    print(line, file=sys.stderr)
                    new += [line, *_run(line[2:]).splitlines(), ""]
            lines = lines[: opening + 1] + new[:-1] + lines[closing:]
        finally:
            running.send_signal(signal.SIGTERM)
            running.wait(timeout=120)
    args.doc.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.doc} ({stamp})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
