"""The log lines of a server process: chronoserve's and uvicorn's, as text or as one JSON object per line.

``text`` (the default) is uvicorn's style (``INFO:     message``, with the process's role when the
server runs in several: ``[engine]``, ``[http-0]``). ``json`` writes every record of chronoserve's
loggers and uvicorn's as one JSON object per line: ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``message``, ``process`` (the role), and for the access log (:mod:`.access`) the
request's fields (``request_id``, ``status``, ``model``, ``queue_ms``, ...) at the top level, as log
collectors (Loki, Elasticsearch, CloudWatch) index them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

#: ``--log-format`` choices.
LOG_FORMATS = ("text", "json")
#: The loggers configured here: chronoserve's own, and uvicorn's (its access log is replaced by ours).
_LOGGERS = ("chronoserve", "uvicorn", "uvicorn.error")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring)."""

    def __init__(self, role: str | None = None) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.role:
            out["process"] = self.role
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(log_level: str, role: str | None = None, log_format: str = "text") -> None:
    """chronoserve's log lines (ready, draining, load failures, the access log) and uvicorn's, in
    ``log_format``; ``role`` names the process in every line when the server runs in several."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(role)
    else:
        who = f"[{role}] " if role else ""
        formatter = logging.Formatter(f"%(levelname)s:     {who}%(message)s")
    for name in _LOGGERS:
        target = logging.getLogger(name)
        for handler in [h for h in target.handlers if getattr(h, "_chronoserve", False)]:
            target.removeHandler(handler)
        handler = logging.StreamHandler()
        handler._chronoserve = True  # type: ignore[attr-defined]  # ours, replaced when configured again
        handler.setFormatter(formatter)
        target.addHandler(handler)
        target.propagate = False
    logging.getLogger("chronoserve").setLevel(log_level.upper())
    logging.getLogger("uvicorn").setLevel(log_level.upper())
