"""chronoserve.perf: the per-batch CSV logger, the system sampler, sensors, the batch recorder.

psutil and sysfs are replaced by fakes, so every value asserted here is known in advance.
"""

from __future__ import annotations

import csv
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chronoserve import ForecastRequest
from chronoserve.perf import (
    BASE_FIELDS,
    BATCH_FIELDS,
    SENSOR_FIELDS,
    BatchRecorder,
    CsvMetricsLogger,
    Sensors,
    SystemSampler,
    read_rows,
)
from chronoserve.perf.sensors import (
    parse_vcgencmd_clock,
    parse_vcgencmd_temp,
    parse_vcgencmd_throttled,
    wrap_delta,
)
from chronoserve.testing import FakeLoader, fake_engine

# -- a psutil stand-in ---------------------------------------------------------------------------


class FakeProcess:
    def __init__(self, owner: FakePsutil) -> None:
        self.owner = owner
        self.cpu_calls = 0
        self.rss = [100, 300, 200, 250]

    def cpu_percent(self, interval: float | None = None) -> float:
        self.cpu_calls += 1
        return 0.0 if self.cpu_calls == 1 else 75.0  # psutil's meaningless first reading, then real ones

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=self.rss[min(self.cpu_calls - 2, len(self.rss) - 1)])


class FakePsutil:
    """First call of every "since the last call" counter returns 0.0, as psutil does; later ones fixed values."""

    def __init__(self, cores: int = 2, temperatures: dict[str, Any] | None = None) -> None:
        self.cores = cores
        self.calls: Counter[str] = Counter()
        self.threads: set[int | None] = set()
        self.process = FakeProcess(self)
        self.temperatures = temperatures or {}

    def _first(self, name: str) -> bool:
        self.threads.add(threading.get_ident())
        self.calls[name] += 1
        return self.calls[name] == 1

    def cpu_percent(self, interval: float | None = None, percpu: bool = False) -> Any:
        if percpu:
            return [0.0] * self.cores if self._first("percpu") else [10.0 * (i + 1) for i in range(self.cores)]
        return 0.0 if self._first("cpu") else 50.0

    def cpu_times_percent(self, interval: float | None = None) -> SimpleNamespace:
        if self._first("times"):
            return SimpleNamespace(user=0.0, system=0.0, idle=0.0)
        return SimpleNamespace(user=40.0, system=10.0, idle=50.0)

    def virtual_memory(self) -> SimpleNamespace:
        return SimpleNamespace(used=1_000, available=2_000)

    def cpu_count(self, logical: bool = True) -> int:
        return self.cores

    def Process(self, pid: int) -> FakeProcess:  # psutil spells it so
        return self.process

    def sensors_temperatures(self) -> dict[str, Any]:
        return self.temperatures

    def cpu_freq(self) -> None:
        return None


def no_sensors() -> Sensors:
    """Sensors of a machine that exposes nothing: no vcgencmd, an empty sysfs, no psutil sensors."""
    return Sensors(root="/nonexistent-sysfs-root", run=lambda argv: None, psutil_module=FakePsutil())


# -- CsvMetricsLogger ----------------------------------------------------------------------------


def test_logger_writes_the_documented_header_and_each_row_at_once(tmp_path):
    path = tmp_path / "sub" / "batches.csv"
    ticks = iter([10.0, 10.5])
    logger = CsvMetricsLogger(path, extra_fields=("phase",), clock=lambda: next(ticks))
    assert logger.fields == ("time_s", *BATCH_FIELDS, "phase")
    logger.log(
        series="dongsi",
        model="chronos-2-pm25",
        context_hours=240,
        horizon_hours=24,
        latency_s=0.031,
        batch_size=8,
        stride=4,
        phase="eval",
    )
    rows = read_rows(path)  # before close: flushed per row
    assert list(rows[0]) == ["time_s", *BATCH_FIELDS, "phase"]
    assert rows[0]["time_s"] == "0.5" and rows[0]["series"] == "dongsi" and rows[0]["batch_size"] == "8"
    assert logger.rows[0]["latency_s"] == 0.031
    logger.close()
    logger.close()  # idempotent
    assert BATCH_FIELDS == ("series", "model", "context_hours", "horizon_hours", "latency_s", "batch_size", "stride")


def test_logger_leaves_missing_fields_empty_and_refuses_unknown_ones(tmp_path):
    with CsvMetricsLogger(tmp_path / "b.csv") as logger:
        logger.log(model="m", latency_s=0.1, time_s=3.0)
        with pytest.raises(ValueError, match="latncy_s"):
            logger.log(latncy_s=0.1)
    rows = read_rows(tmp_path / "b.csv")
    assert len(rows) == 1 and rows[0]["series"] == "" and rows[0]["time_s"] == "3.0"
    assert logger.rows[0]["series"] is None
    with pytest.raises(ValueError, match="model"):
        CsvMetricsLogger(None, extra_fields=("model",))


def test_logger_is_thread_safe(tmp_path):
    logger = CsvMetricsLogger(tmp_path / "b.csv")

    def worker(n: int) -> None:
        for i in range(200):
            logger.log(series=f"s{n}", latency_s=float(i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.close()
    rows = read_rows(tmp_path / "b.csv")
    assert len(rows) == len(logger.rows) == 800
    assert Counter(r["series"] for r in rows) == {f"s{n}": 200 for n in range(4)}


def test_logger_without_a_path_keeps_rows_in_memory():
    logger = CsvMetricsLogger(None)
    logger.log(model="m")
    logger.close()
    assert logger.path is None and len(logger.rows) == 1


# -- SystemSampler -------------------------------------------------------------------------------


def test_sampler_drops_the_first_meaningless_reading():
    ps = FakePsutil()
    ticks = iter(float(i) for i in range(100))
    sampler = SystemSampler(None, per_core=True, psutil_module=ps, clock=lambda: next(ticks))
    sampler.prime()
    first = sampler.sample()
    second = sampler.sample()
    # The primed 0.0 readings never reach a sample: every sample has the fake's real values.
    for row in (first, second):
        assert row["cpu_percent"] == 50.0
        assert (row["cpu_user_percent"], row["cpu_system_percent"]) == (40.0, 10.0)
        assert row["proc_cpu_percent"] == 75.0
        assert (row["cpu0_percent"], row["cpu1_percent"]) == (10.0, 20.0)
    assert ps.calls["cpu"] == 3 and ps.calls["percpu"] == 3  # one primed (dropped) + two kept
    assert [s["time_s"] for s in sampler.samples] == [1.0, 2.0]
    assert first["mem_used_bytes"] == 1_000 and first["mem_available_bytes"] == 2_000


def test_sampler_refuses_to_sample_before_priming():
    sampler = SystemSampler(None, psutil_module=FakePsutil())
    with pytest.raises(RuntimeError, match="prime"):
        sampler.sample()


def test_sampler_thread_primes_on_its_own_thread_and_writes_the_csv(tmp_path):
    ps = FakePsutil()
    path = tmp_path / "samples.csv"
    sampler = SystemSampler(path, interval_s=0.1, per_core=True, sensors=no_sensors(), psutil_module=ps)
    with sampler:
        deadline = time.monotonic() + 30
        while len(sampler.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    sampler.stop()  # idempotent
    assert sampler.error is None
    assert len(sampler.samples) >= 2
    assert all(s["cpu_percent"] == 50.0 and s["proc_cpu_percent"] == 75.0 for s in sampler.samples)
    # psutil keeps "since the last call" state per thread: priming and sampling share one thread.
    assert len(ps.threads) == 1 and threading.get_ident() not in ps.threads
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header = [*BASE_FIELDS, "cpu0_percent", "cpu1_percent", *SENSOR_FIELDS]
    assert rows[0] == header
    assert len(rows) == len(sampler.samples) + 1
    for row in rows[1:]:
        cells = dict(zip(header, row, strict=True))
        # Unavailable sensors are empty cells, never 0.
        assert [cells[f] for f in SENSOR_FIELDS] == ["", "", "", ""]
        assert cells["cpu_percent"] == "50.0"
    assert all(sampler.samples[0][f] is None for f in SENSOR_FIELDS)


def test_peak_rss_is_the_largest_sample():
    ps = FakePsutil()
    sampler = SystemSampler(None, psutil_module=ps, clock=iter(float(i) for i in range(100)).__next__)
    assert sampler.peak_rss_bytes is None
    sampler.prime()
    for _ in range(3):
        sampler.sample()
    assert sampler.column("proc_rss_bytes") == [100, 300, 200]
    assert sampler.peak_rss_bytes == 300
    with pytest.raises(KeyError, match="temp_c"):
        sampler.column("temp_c")  # sensors were not asked for


def test_sampler_rejects_a_too_short_interval():
    with pytest.raises(ValueError, match="interval_s"):
        SystemSampler(None, interval_s=0.01, psutil_module=FakePsutil())


# -- sensors -------------------------------------------------------------------------------------


def test_vcgencmd_outputs_parse():
    assert parse_vcgencmd_temp("temp=48.3'C\n") == 48.3
    assert parse_vcgencmd_clock("frequency(48)=1500398464\n") == pytest.approx(1500.398464)
    assert parse_vcgencmd_clock("frequency(48)=0\n") is None
    assert parse_vcgencmd_throttled("throttled=0x50005\n") == 0x50005
    assert parse_vcgencmd_throttled("garbage") is None


def test_a_machine_that_exposes_nothing_reads_none_not_zero():
    sensors = no_sensors()
    assert sensors.read() == dict.fromkeys(SENSOR_FIELDS)
    assert sensors.sources == dict.fromkeys(SENSOR_FIELDS)


def test_raspberry_pi_readings_come_from_vcgencmd():
    answers = {
        "measure_temp": "temp=61.2'C",
        "measure_clock": "frequency(48)=1800000000",
        "get_throttled": "throttled=0x20002",
    }
    sensors = Sensors(root="/nonexistent", run=lambda argv: answers.get(argv[1]), psutil_module=FakePsutil())
    assert sensors.read() == {"temp_c": 61.2, "freq_mhz": 1800.0, "throttled": 0x20002, "energy_uj": None}
    assert sensors.sources["throttled"] == "vcgencmd get_throttled"


#: ``vcgencmd pmic_read_adc`` on a Raspberry Pi 5 (abridged: two rails, and a voltage without a current).
PMIC = """\
     3V3_SYS_A current(1)=0.05000000A
    VDD_CORE_A current(7)=2.00000000A
     3V3_SYS_V volt(9)=3.30000000V
    VDD_CORE_V volt(15)=0.80000000V
     EXT5V_V volt(24)=5.10000000V
"""


def test_a_raspberry_pi_5s_energy_integrates_its_pmic_rails_between_readings():
    from chronoserve.perf.sensors import parse_pmic_power

    assert parse_pmic_power(PMIC) == pytest.approx(0.05 * 3.3 + 2.0 * 0.8)  # EXT5V has no current: left out
    assert parse_pmic_power("no rails here") is None
    now = [100.0]
    text = [PMIC]
    sensors = Sensors(
        root="/nonexistent",
        run=lambda argv: text[0] if argv[1] == "pmic_read_adc" else None,
        psutil_module=FakePsutil(),
        clock=lambda: now[0],
    )
    assert "PMIC" in str(sensors.sources["energy_uj"])
    now[0] = 102.0  # 2 s at 1.765 W
    first = sensors.read()["energy_uj"]
    assert first == pytest.approx(2 * 1.765 * 1e6, rel=1e-6)
    text[0] = PMIC.replace("2.00000000A", "4.00000000A")  # the core draws 3.365 W now: a trapezoid
    now[0] = 103.0
    assert sensors.read()["energy_uj"] - first == pytest.approx((1.765 + 3.365) / 2 * 1e6, rel=1e-6)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_thermal_zone_prefers_the_cpu_zone_and_converts_millidegrees(tmp_path):
    _write(tmp_path / "sys/class/thermal/thermal_zone0/type", "acpitz\n")
    _write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "27800\n")
    _write(tmp_path / "sys/class/thermal/thermal_zone1/type", "x86_pkg_temp\n")
    _write(tmp_path / "sys/class/thermal/thermal_zone1/temp", "45500\n")
    _write(tmp_path / "sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq", "1200000\n")
    _write(tmp_path / "sys/devices/system/cpu/cpufreq/policy1/scaling_cur_freq", "1400000\n")
    sensors = Sensors(root=tmp_path, run=lambda argv: None, psutil_module=FakePsutil())
    reading = sensors.read()
    assert reading["temp_c"] == 45.5
    assert reading["freq_mhz"] == 1300.0
    assert "x86_pkg_temp" in str(sensors.sources["temp_c"])


def test_psutil_temperatures_are_the_last_resort():
    entry = SimpleNamespace(label="Tctl", current=55.0)
    sensors = Sensors(
        root="/nonexistent", run=lambda argv: None, psutil_module=FakePsutil(temperatures={"k10temp": [entry]})
    )
    assert sensors.read()["temp_c"] == 55.0


def test_rapl_energy_is_wrap_corrected_and_unreadable_counters_are_unavailable(tmp_path):
    domain = tmp_path / "sys/class/powercap/intel-rapl:0"
    _write(domain / "name", "package-0\n")
    _write(domain / "max_energy_range_uj", "1000\n")
    _write(domain / "energy_uj", "900\n")
    _write(tmp_path / "sys/class/powercap/intel-rapl:0:0/name", "core\n")  # a subdomain: not added again
    _write(tmp_path / "sys/class/powercap/intel-rapl:0:0/energy_uj", "5\n")
    sensors = Sensors(root=tmp_path, run=lambda argv: None, psutil_module=FakePsutil())
    assert sensors.read()["energy_uj"] == 0
    _write(domain / "energy_uj", "950\n")
    assert sensors.read()["energy_uj"] == 50
    _write(domain / "energy_uj", "30\n")  # wrapped at 1000: 50 + 30 more
    assert sensors.read()["energy_uj"] == 130
    assert wrap_delta(900, 30, 1000) == 130 and wrap_delta(10, 30, 1000) == 20 and wrap_delta(900, 30, None) == 0

    (domain / "energy_uj").unlink()  # as if root-only: the counter is unavailable, not 0
    assert Sensors(root=tmp_path, run=lambda argv: None, psutil_module=FakePsutil()).read()["energy_uj"] is None


# -- BatchRecorder -------------------------------------------------------------------------------


async def test_batch_recorder_writes_one_row_per_engine_batch(tmp_path):
    logger = CsvMetricsLogger(tmp_path / "batches.csv", extra_fields=("phase",))
    labels = {"series": "dongsi", "context_hours": 3, "horizon_hours": 4, "stride": 1, "phase": "test"}
    recorder = BatchRecorder(logger, labels=lambda model: labels)
    loader = FakeLoader.with_models("m")
    options = {"max_batch": 4, "max_wait": 0.05}
    async with fake_engine("batched", loader=loader, policy_options=options, observers=[recorder]) as engine:
        requests = [ForecastRequest(model="m", target=[0.0, 1.0, float(i)], horizon=4) for i in range(10)]
        await engine.forecast_many(requests)
    logger.close()
    sizes = loader.batch_sizes("m")
    assert sum(sizes) == 10 and len(sizes) >= 3
    rows = read_rows(tmp_path / "batches.csv")
    assert [int(r["batch_size"]) for r in rows] == sizes
    assert all(r["model"] == "m" and r["series"] == "dongsi" and r["phase"] == "test" for r in rows)
    assert all(r["horizon_hours"] == "4" and r["latency_s"] != "" for r in rows)
    assert recorder.batches == len(sizes) and recorder.failed_batches == 0


async def test_batch_recorder_counts_failed_batches_without_logging_them():
    logger = CsvMetricsLogger(None)
    recorder = BatchRecorder(logger)
    loader = FakeLoader.with_models("bad")
    loader.fail_predict.add("bad")
    async with fake_engine("lru", loader=loader, observers=[recorder]) as engine:
        results = await engine.forecast_many(
            [ForecastRequest(model="bad", target=[1.0, 2.0], horizon=2)], return_exceptions=True
        )
    assert isinstance(results[0], Exception)
    assert recorder.failed_batches == 1 and logger.rows == []


# -- replay --system-stats -----------------------------------------------------------------------


async def test_replay_with_system_stats_writes_batches_and_samples(tmp_path):
    from chronoserve.replay import InProcessTarget, replay
    from chronoserve.testing import fake_spec

    model = "random/chronos-bolt-tiny"
    loader = FakeLoader(specs={model: fake_spec(model, family="chronos-bolt", max_horizon=64)})

    class Req:
        def __init__(self, t: float, i: int) -> None:
            self.t, self.i = t, i

        def to_http_body(self) -> dict[str, Any]:
            return {"model_name": model, "city": "dongsi", "horizon_hours": 4, "request_id": f"r{self.i}"}

    target = InProcessTarget("batched", loader=loader, policy_options={"max_wait": 0.001})
    requests = [Req(0.0, i) for i in range(6)]
    result = await replay(requests, target, out=tmp_path, progress=False, plots=False, system_stats=True)
    assert result.summary.ok == 6
    names = {p.name for p in result.files}
    assert {"batches.csv", "system_stats.csv", "requests.csv"} <= names
    batches = read_rows(tmp_path / "batches.csv")
    assert sum(int(r["batch_size"]) for r in batches) == 6 and all(r["model"] == model for r in batches)
    with (tmp_path / "system_stats.csv").open() as handle:
        header = handle.readline().strip().split(",")
    assert header[: len(BASE_FIELDS)] == list(BASE_FIELDS) and "cpu0_percent" in header
