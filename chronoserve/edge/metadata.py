"""What a benchmark result must say about the machine and the software that produced it.

MLPerf Tiny makes replicability mandatory; a latency from an unknown governor, kernel or
torch build cannot be compared with anything. Everything here is read, never guessed:
what cannot be read is None.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from chronoserve.perf.sensors import run_command


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def cpu_model() -> str | None:
    """``model name`` (x86) or ``Model`` (Raspberry Pi: "Raspberry Pi 4 Model B Rev 1.4") of
    ``/proc/cpuinfo``, else the device-tree model, else :func:`platform.processor`."""
    text = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    tree = _read("/proc/device-tree/model")
    if tree:
        return tree.rstrip("\x00")
    return platform.processor() or None


def governors() -> dict[str, str]:
    """``scaling_governor`` of every cpufreq policy (``{"policy0": "ondemand"}``); empty without cpufreq."""
    out: dict[str, str] = {}
    for policy in sorted(Path("/sys/devices/system/cpu/cpufreq").glob("policy*")):
        value = _read(str(policy / "scaling_governor"))
        if value:
            out[policy.name] = value
    return out


def _one_or_all(values: dict[str, str]) -> str | dict[str, str] | None:
    """One value if every policy agrees, all of them if not, None if there are none."""
    distinct = set(values.values())
    if not distinct:
        return None
    return distinct.pop() if len(distinct) == 1 else values


def os_release() -> str | None:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The machine: CPU model, cores, kernel, OS, governor, Python; Raspberry Pi firmware if present."""
    allowed = sorted(os.sched_getaffinity(0))
    governor = governors()
    firmware = run_command(["vcgencmd", "version"])
    return {
        "cpu_model": cpu_model(),
        "architecture": platform.machine(),
        "cpu_count": os.cpu_count(),
        "allowed_cores": allowed,
        "kernel": platform.release(),
        "os": os_release(),
        "governor": _one_or_all(governor),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "vcgencmd_version": " ".join(firmware.split()) if firmware else None,
    }


def software_info() -> dict[str, Any]:
    """Versions of what ran the model (torch only if it was imported)."""
    torch = sys.modules.get("torch")
    return {
        "chronoserve": package_version("chronoserve"),
        "torch": getattr(torch, "__version__", None) if torch is not None else package_version("torch"),
        "chronos_forecasting": package_version("chronos-forecasting"),
        "transformers": package_version("transformers"),
        "numpy": package_version("numpy"),
        "psutil": package_version("psutil"),
    }
