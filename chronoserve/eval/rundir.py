"""Where a sweep keeps its results, and how it shows its progress.

:class:`RunDir` is ``OUT``: ``settings.json`` and one ``configs/<key>.json`` per finished
configuration, written atomically, so an interrupted sweep resumes without recomputing them;
:class:`SweepProgress` writes the progress lines on stderr.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from chronoserve._files import write_atomic
from chronoserve.eval.grid import (
    Config,
    SettingsMismatch,
    SweepSettings,
)

# ---------------------------------------------------------------------------------------------
# Results and the run directory


@dataclass
class ConfigResult:
    """One finished configuration: its scored windows and, per series, what was skipped."""

    config: Config
    rows: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    """Per series: ``windows`` (generated), ``scored``, ``skipped_target_nan``, ``skipped_context_nan``."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "counts": self.counts, "seconds": self.seconds, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigResult:
        return cls(
            config=Config.from_dict(data["config"]),
            rows=list(data["rows"]),
            counts={k: dict(v) for k, v in data["counts"].items()},
            seconds=float(data["seconds"]),
        )


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunDir:
    """``OUT``: ``settings.json``, and one ``configs/<key>.json`` per finished configuration."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.configs = path / "configs"

    def open_for(self, settings: SweepSettings, *, overwrite: bool) -> None:
        """Create it, or check that it holds the same settings (see :class:`SettingsMismatch`)."""
        settings_file = self.path / "settings.json"
        wanted = settings.to_dict()
        if settings_file.is_file():
            try:
                found = json.loads(settings_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
            if found != wanted:
                if not overwrite:
                    raise SettingsMismatch("--out", _mismatch_message(self.path, found, wanted))
                shutil.rmtree(self.configs, ignore_errors=True)
        self.configs.mkdir(parents=True, exist_ok=True)
        _write_atomic(settings_file, json.dumps(wanted, indent=2) + "\n")

    def file(self, config: Config) -> Path:
        return self.configs / f"{config.key}.json"

    def done(self, config: Config) -> bool:
        return self.file(config).is_file()

    def save(self, result: ConfigResult) -> None:
        _write_atomic(self.file(result.config), json.dumps(result.to_dict()))

    def load(self, config: Config) -> ConfigResult:
        return ConfigResult.from_dict(json.loads(self.file(config).read_text(encoding="utf-8")))


def _mismatch_message(path: Path, found: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str:
    if not isinstance(found, Mapping):
        return f"{path} holds an unreadable settings.json; pass --overwrite to replace it, or choose another --out"
    diffs = [
        f"{key} {found.get(key)!r} there, {wanted.get(key)!r} now"
        for key in sorted(set(found) | set(wanted))
        if found.get(key) != wanted.get(key)
    ]
    return (
        f"{path} holds a sweep with other settings ({'; '.join(diffs)}); "
        "re-run with the same settings to resume it, pass --overwrite to replace it, or choose another --out"
    )


# ---------------------------------------------------------------------------------------------
# Progress


class SweepProgress:
    """Progress on a stream (stderr): configurations and windows done, elapsed time and ETA.

    On a terminal the status line is rewritten in place; otherwise a plain line is printed
    every ``every`` seconds and at each finished configuration.
    """

    def __init__(
        self,
        total_configs: int,
        total_windows: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.every = every if every is not None else (0.5 if self.tty else 5.0)
        self.clock = clock
        self.total_configs, self.total_windows = total_configs, total_windows
        self.configs_done = self.windows_done = 0
        self.skipped_configs = self.skipped_windows = 0
        self.started = clock()
        self.last = -math.inf

    def resumed(self, configs: int, windows: int, out: Path) -> None:
        """``configs`` configurations (``windows`` windows) were already done in ``out``."""
        self.skipped_configs += configs
        self.skipped_windows += windows
        self.configs_done += configs
        self.windows_done += windows
        if configs:
            self._print(
                f"resuming: {configs} of {self.total_configs} configurations already done in {out}; skipping them"
            )

    def windows(self, n: int) -> None:
        self.windows_done += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._status()

    def config_done(self, config: Config, scored: int, seconds: float) -> None:
        self.configs_done += 1
        self._print(
            f"[{self.configs_done}/{self.total_configs}] {config.describe()}: {scored} windows in {seconds:.1f} s"
        )
        if self.tty:
            self._status()

    def status_line(self) -> str:
        elapsed = self.clock() - self.started
        done = self.windows_done - self.skipped_windows
        todo = self.total_windows - self.windows_done
        eta = "?" if done <= 0 else _duration(elapsed / done * todo)
        pct = 100.0 * self.windows_done / self.total_windows if self.total_windows else 100.0
        return (
            f"  eval: {self.configs_done}/{self.total_configs} configurations, "
            f"{self.windows_done}/{self.total_windows} windows ({pct:.0f} %), "
            f"elapsed {_duration(elapsed)}, ETA {eta}"
        )

    def _status(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            print("\r" + self.status_line() + "\033[K", end="", file=self.stream, flush=True)
        else:
            print(self.status_line(), file=self.stream, flush=True)

    def _print(self, line: str) -> None:
        if not self.enabled:
            return
        prefix = "\r\033[K" if self.tty else ""
        print(prefix + line, file=self.stream, flush=True)

    def finish(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
