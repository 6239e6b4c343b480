"""Temperature, clock frequency, throttling and energy: read from what the machine exposes.

Every reading is a number or None. None means "this machine does not expose it (here, to
this user)", never zero. The sources, probed once, in order of preference (the reasons are
in ``docs/edge.md`` and the edge notes, part A2):

- ``temp_c``: Raspberry Pi ``vcgencmd measure_temp`` (the Pi documentation calls it
  accurate and instantaneous, the Linux readings possibly inaccurate); else a
  ``/sys/class/thermal/thermal_zone*/temp`` (millidegrees C) of a CPU zone; else
  ``psutil.sensors_temperatures()`` (hwmon first, then thermal zones).
- ``freq_mhz``: ``vcgencmd measure_clock arm`` (the real ARM clock); else the mean of
  ``cpufreq/policy*/cpuinfo_cur_freq`` (read from hardware, often root-only); else of
  ``scaling_cur_freq`` (the last *requested* frequency); else ``psutil.cpu_freq()``
  (on x86 without cpufreq: ``/proc/cpuinfo``'s "cpu MHz", which may be nominal).
- ``throttled``: the ``vcgencmd get_throttled`` bitmask (bits 0-3 now, 16-19 since boot).
- ``energy_uj``: the sum of the RAPL package counters
  ``/sys/class/powercap/intel-rapl:N/energy_uj``, wrap-corrected with
  ``max_energy_range_uj``, as microjoules since the first reading. Root-only on Linux since
  ~5.10 (CVE-2020-8694), so usually None unless access was granted. Without RAPL, on a
  Raspberry Pi 5: the PMIC's rails (``vcgencmd pmic_read_adc``: current and voltage per rail,
  power = the sum of current x voltage) integrated between readings (trapezoids), so its
  accuracy depends on how often it is read (the samplers read it every interval); the rails
  are the board's own supplies, not what USB devices draw.

:attr:`Sensors.sources` says which source each field uses, for the run's metadata.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: The fields :meth:`Sensors.read` returns, in CSV column order.
SENSOR_FIELDS: tuple[str, ...] = ("temp_c", "freq_mhz", "throttled", "energy_uj")

#: Thermal zone types that measure the CPU (Raspberry Pi, Intel, common ARM SoCs), best first.
CPU_ZONE_TYPES: tuple[str, ...] = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "soc-thermal", "cpu")
#: psutil sensor names that measure the CPU, best first.
CPU_SENSOR_NAMES: tuple[str, ...] = ("cpu_thermal", "coretemp", "k10temp", "zenpower", "cpu-thermal", "soc_thermal")

CommandRunner = Callable[[Sequence[str]], "str | None"]


def run_command(argv: Sequence[str], timeout: float = 2.0) -> str | None:
    """stdout of ``argv``, or None if it is missing, fails or times out."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


_PMIC_CURRENT = re.compile(r"(\S+)_A current\(\d+\)=([-\d.]+)A")
_PMIC_VOLT = re.compile(r"(\S+)_V volt\(\d+\)=([-\d.]+)V")


def parse_pmic_power(text: str) -> float | None:
    """Watts from ``vcgencmd pmic_read_adc``: current x voltage summed over the rails that report both."""
    currents = {name: float(value) for name, value in _PMIC_CURRENT.findall(text)}
    volts = {name: float(value) for name, value in _PMIC_VOLT.findall(text)}
    rails = currents.keys() & volts.keys()
    return sum(currents[r] * volts[r] for r in rails) if rails else None


def parse_vcgencmd_temp(text: str) -> float | None:
    """``temp=48.3'C`` -> 48.3."""
    match = re.search(r"temp=([-\d.]+)", text)
    return float(match.group(1)) if match else None


def parse_vcgencmd_clock(text: str) -> float | None:
    """``frequency(48)=1500398464`` (Hz) -> 1500.398464 MHz; None for 0 (the clock is off)."""
    match = re.search(r"=\s*(\d+)", text)
    if not match or int(match.group(1)) == 0:
        return None
    return int(match.group(1)) / 1e6


def parse_vcgencmd_throttled(text: str) -> int | None:
    """``throttled=0x50005`` -> 0x50005."""
    match = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    return int(match.group(1), 0) if match else None


def wrap_delta(previous: int, current: int, max_range: int | None) -> int:
    """Energy used between two readings of a counter that wraps back to 0 after ``max_range``."""
    if current >= previous:
        return current - previous
    if max_range is None or max_range <= 0:
        return 0  # wrapped, and we cannot tell by how much: count nothing rather than guess
    return max_range - previous + current


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


class Sensors:
    """Reads :data:`SENSOR_FIELDS` from the first source that works, probed once at creation.

    ``root`` is the filesystem root (a fake sysfs tree in tests), ``run`` runs ``vcgencmd``,
    ``psutil_module`` stands in for psutil (None: the real one) and ``clock`` is what the PMIC's
    power is integrated over.
    """

    def __init__(
        self,
        *,
        root: str | Path = "/",
        run: CommandRunner = run_command,
        psutil_module: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self._run = run
        self._clock = clock
        self._pmic_last: tuple[float, float] | None = None
        if psutil_module is None:
            psutil_module = importlib.import_module("psutil")  # no type stubs: used as Any
        self._psutil = psutil_module
        self.sources: dict[str, str | None] = dict.fromkeys(SENSOR_FIELDS)
        self._readers: dict[str, Callable[[], float | int | None]] = {}
        self._rapl: list[tuple[Path, int | None]] = []
        self._energy_last: list[int] = []
        self._energy_total = 0
        self._probe()

    # -- probing -------------------------------------------------------------------------------

    def _probe(self) -> None:
        self._probe_vcgencmd()
        if "temp_c" not in self._readers:
            self._probe_thermal_zone()
        if "temp_c" not in self._readers:
            self._probe_psutil_temp()
        if "freq_mhz" not in self._readers:
            self._probe_cpufreq()
        if "freq_mhz" not in self._readers:
            self._probe_psutil_freq()
        self._probe_rapl()
        if "energy_uj" not in self._readers:
            self._probe_pmic()
        # Keep only sources whose first reading works: a source that exists but cannot be read
        # (a root-only file) is "unavailable", not a column of Nones with a source named.
        for name in list(self._readers):
            if self._readers[name]() is None:
                del self._readers[name]
                self.sources[name] = None

    def _add(self, name: str, source: str, reader: Callable[[], float | int | None]) -> None:
        self._readers[name] = reader
        self.sources[name] = source

    def _probe_vcgencmd(self) -> None:
        for name, argv, parse in (
            ("temp_c", ("vcgencmd", "measure_temp"), parse_vcgencmd_temp),
            ("freq_mhz", ("vcgencmd", "measure_clock", "arm"), parse_vcgencmd_clock),
            ("throttled", ("vcgencmd", "get_throttled"), parse_vcgencmd_throttled),
        ):
            text = self._run(argv)
            if text is not None and parse(text) is not None:
                self._add(name, " ".join(argv), self._vcgencmd_reader(argv, parse))

    def _vcgencmd_reader(
        self, argv: Sequence[str], parse: Callable[[str], float | int | None]
    ) -> Callable[[], float | int | None]:
        def read() -> float | int | None:
            text = self._run(argv)
            return parse(text) if text is not None else None

        return read

    def _probe_thermal_zone(self) -> None:
        zones = sorted((self.root / "sys/class/thermal").glob("thermal_zone*"))
        typed = [(_read_text(z / "type") or "", z) for z in zones if (z / "temp").exists()]
        ranked = sorted(
            typed, key=lambda tz: CPU_ZONE_TYPES.index(tz[0]) if tz[0] in CPU_ZONE_TYPES else len(CPU_ZONE_TYPES)
        )
        if ranked:
            kind, zone = ranked[0]
            path = zone / "temp"

            def read() -> float | None:
                value = _read_int(path)
                return value / 1000.0 if value is not None else None

            self._add("temp_c", f"{path} ({kind or 'untyped'})", read)

    def _probe_psutil_temp(self) -> None:
        reader = getattr(self._psutil, "sensors_temperatures", None)
        if reader is None:
            return
        try:
            found = reader() or {}
        except Exception:
            return
        names = [n for n in CPU_SENSOR_NAMES if found.get(n)] + [n for n in found if found[n]]
        if not names:
            return
        name = names[0]

        def read() -> float | None:
            try:
                entries = (reader() or {}).get(name) or []
            except Exception:
                return None
            return float(entries[0].current) if entries else None

        self._add("temp_c", f"psutil.sensors_temperatures()[{name!r}]", read)

    def _probe_cpufreq(self) -> None:
        policies = sorted((self.root / "sys/devices/system/cpu/cpufreq").glob("policy*"))
        for filename in ("cpuinfo_cur_freq", "scaling_cur_freq"):
            paths = [p / filename for p in policies if (p / filename).exists()]
            if paths:

                def read(paths: list[Path] = paths) -> float | None:
                    values = [v for v in (_read_int(p) for p in paths) if v is not None]
                    return sum(values) / len(values) / 1000.0 if values else None  # kHz -> MHz

                self._add("freq_mhz", f"mean of cpufreq/policy*/{filename}", read)
                if read() is not None:
                    return

    def _probe_psutil_freq(self) -> None:
        reader = getattr(self._psutil, "cpu_freq", None)
        if reader is None:
            return

        def read() -> float | None:
            try:
                freq = reader()
            except Exception:
                return None
            return float(freq.current) if freq is not None and freq.current else None

        self._add("freq_mhz", "psutil.cpu_freq() (may be nominal without cpufreq)", read)

    def _probe_rapl(self) -> None:
        for domain in sorted((self.root / "sys/class/powercap").glob("intel-rapl:*")):
            if domain.name.count(":") != 1:
                continue  # a subdomain (core, uncore, dram): the package counter already includes core
            name = _read_text(domain / "name") or ""
            if not name.startswith("package"):
                continue
            if _read_int(domain / "energy_uj") is None:
                continue  # unreadable (root-only) or absent
            self._rapl.append((domain / "energy_uj", _read_int(domain / "max_energy_range_uj")))
        if self._rapl:
            self._energy_last = [_read_int(p) or 0 for p, _ in self._rapl]
            domains = ", ".join(str(p) for p, _ in self._rapl)
            self._add("energy_uj", f"RAPL {domains} (wrap-corrected, µJ since start)", self._read_energy)

    def _probe_pmic(self) -> None:
        text = self._run(("vcgencmd", "pmic_read_adc"))
        power = parse_pmic_power(text) if text is not None else None
        if power is None:
            return
        self._pmic_last = (self._clock(), power)
        self._energy_total = 0
        source = "Raspberry Pi PMIC (vcgencmd pmic_read_adc: rail power integrated between readings, µJ since start)"
        self._add("energy_uj", source, self._read_pmic_energy)

    def _read_pmic_energy(self) -> int | None:
        text = self._run(("vcgencmd", "pmic_read_adc"))
        power = parse_pmic_power(text) if text is not None else None
        if power is None or self._pmic_last is None:
            return None
        now = self._clock()
        then, before = self._pmic_last
        self._energy_total += int((power + before) / 2.0 * max(0.0, now - then) * 1e6)
        self._pmic_last = (now, power)
        return self._energy_total

    def _read_energy(self) -> int | None:
        readings = [_read_int(p) for p, _ in self._rapl]
        if any(r is None for r in readings):
            return None
        for i, (current, (_, max_range)) in enumerate(zip(readings, self._rapl, strict=True)):
            assert current is not None
            self._energy_total += wrap_delta(self._energy_last[i], current, max_range)
            self._energy_last[i] = current
        return self._energy_total

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> dict[str, float | int | None]:
        """One reading of every field; None where the machine does not expose it."""
        out: dict[str, float | int | None] = dict.fromkeys(SENSOR_FIELDS)
        for name, reader in self._readers.items():
            try:
                out[name] = reader()
            except Exception:
                out[name] = None
        return out
