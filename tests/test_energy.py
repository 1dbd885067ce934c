"""Energy meters and the step-synchronised sampler.

The NVML tests install a scripted stand-in at the pynvml boundary (jaxscale.testing.scripted_nvml):
everything above it — probing, the meter, the sampler thread, integration, summaries — is the real code.
"""
import csv
import math
import os
import threading
import time

import pytest

from jaxscale.energy import CSV_COLUMNS, Sampler, measure_idle, open_meter
from jaxscale.testing.scripted_nvml import ScriptedGPU, ScriptedNVML, constant, ramp, sine, step


def main_thread_log(nvml, call):
    """(t, value) of the readings the test's own thread took since the log was cleared (after the
    meter's probe): start, marks, window edges, stop."""
    me = threading.get_ident()
    return [(t, v) for tid, c, _, t, v in nvml.log if tid == me and c == call]


def sampler_threads():
    return [t for t in threading.enumerate() if t.name == "jaxscale-energy"]


# (profile, window in s). The trapezoid misses up to ΔP·Δt/2 at a step: 1 J at 50 Hz, 0.4% of a 1.2 s
# window, so one sample ~5 ms late at the step on a busy machine breaches 0.5%. A 3 s window (windows of seconds
# are what the README advises) leaves room for a ~60 ms gap at the step.
PROFILES = {
    "step": (step(150.0, 250.0, at_s=1.5), 3.0),
    "ramp": (ramp(60.0, 400.0, over_s=0.9), 1.2),
    "sine": (sine(200.0, 80.0, hz=1.7), 1.2),
}


@pytest.mark.parametrize("name", PROFILES)
def test_sampled_power_integral_within_half_percent_of_analytic(name):
    profile, window_s = PROFILES[name]
    nvml = ScriptedNVML([ScriptedGPU(profile, counter=False)])
    meter = open_meter("nvml", nvml=nvml)
    nvml.log.clear()
    with Sampler(meter, hz=50) as sampler:
        time.sleep(window_s)
        energy = sampler.mark()
    (t_begin, _), (t_mark, _), _ = main_thread_log(nvml, "instant")
    exact = profile.energy_j(t_mark) - profile.energy_j(t_begin)
    assert energy == pytest.approx(exact, rel=0.005)
    assert sampler.summary.energy_source == "sampled power"
    assert sampler.summary.sample_hz == pytest.approx(50, rel=0.3)
    meter.close()
    assert nvml.initialised == 0


def test_counter_energy_is_exactly_the_counters_difference():
    nvml = ScriptedNVML([ScriptedGPU(sine(250.0, 100.0, hz=3.0)), ScriptedGPU(constant(90.0))])
    meter = open_meter("nvml", nvml=nvml)
    nvml.log.clear()
    with Sampler(meter, hz=100) as sampler:
        marks = []
        for _ in range(4):
            time.sleep(0.05)
            marks.append(sampler.mark())
    counters = {}
    for tid, call, gpu, t, mj in nvml.log:
        if tid == threading.get_ident() and call == "counter":
            counters.setdefault(gpu, []).append(mj / 1000.0)
    # Readings on this thread: start, 4 marks, stop; each mark is the sum over GPUs of the difference.
    for i, energy in enumerate(marks):
        assert energy == sum(c[i + 1] - c[i] for c in counters.values())
    s = sampler.summary
    assert s.energy_j == sum(c[-1] - c[0] for c in counters.values())
    assert s.energy_source == "counter"
    assert s.devices == ("gpu0[counter,instant,average]", "gpu1[counter,instant,average]")
    assert s.window("steps").count == 4 and s.window("steps").energy_j == pytest.approx(sum(marks))
    assert s.power_peak_w >= s.power_mean_w > 0


def test_gpu_without_counter_falls_back_to_sampled_power_and_says_so():
    nvml = ScriptedNVML([ScriptedGPU(constant(120.0), counter=False),
                         ScriptedGPU(constant(80.0), counter=False, instant=False)])
    meter = open_meter("nvml", nvml=nvml)
    assert [d.supports for d in meter.devices] == [("instant", "average"), ("average",)]
    with Sampler(meter, hz=50) as sampler:
        time.sleep(0.3)
    s = sampler.summary
    assert s.energy_source == "sampled power" and s.energy_reason == ""
    assert s.power_mean_w == pytest.approx(200.0, rel=1e-3)
    assert s.energy_j == pytest.approx(200.0 * s.duration_s, rel=1e-3)
    # One GPU with the counter and one without: the total is only as good as the sampled part.
    mixed = open_meter("nvml", nvml=ScriptedNVML([ScriptedGPU(constant(1.0)), ScriptedGPU(constant(1.0), counter=False)]))
    with Sampler(mixed) as sampler:
        pass
    assert sampler.summary.energy_source == "sampled power"


def test_windows_are_measured_apart_from_steps():
    nvml = ScriptedNVML([ScriptedGPU(ramp(50.0, 300.0, over_s=1.0))])
    meter = open_meter("nvml", nvml=nvml)
    nvml.log.clear()
    with Sampler(meter, hz=20) as sampler:
        time.sleep(0.05)
        step1 = sampler.mark()
        with sampler.window("eval"):
            time.sleep(0.1)
        time.sleep(0.05)
        step2 = sampler.mark()
    c = [mj / 1000.0 for _, mj in main_thread_log(nvml, "counter")]  # start, mark, begin, end, mark, stop
    assert step1 == c[1] - c[0]
    assert sampler.summary.window("eval").energy_j == c[3] - c[2]
    assert step2 == c[4] - c[3]  # measured from the window's end, not from the previous mark
    row = sampler.summary.as_row()
    assert row["eval_energy_j"] == c[3] - c[2] and row["steps_energy_j"] == pytest.approx(step1 + step2)
    assert row["eval_s"] == pytest.approx(0.1, abs=0.05)
    sampler.start()  # a sampler runs again for the next run; a window left open ends at stop()
    sampler.begin_window("compile")
    assert sampler.stop().window("compile").count == 1
    with pytest.raises(ValueError):
        with sampler:
            sampler.begin_window("not a name")


def test_power_csv_trace_at_100_hz(tmp_path):
    nvml = ScriptedNVML([ScriptedGPU(constant(300.0)), ScriptedGPU(constant(100.0), counter=False)])
    meter = open_meter("nvml", nvml=nvml)
    path = tmp_path / "power.csv"
    with Sampler(meter, hz=100, power_csv=path) as sampler:
        time.sleep(0.5)
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sampler.summary.sample_hz > 70  # at least 100 Hz asked; a loaded 2-core machine may lag
    gpu0 = [r for r in rows if r["device"] == "gpu0"]
    gpu1 = [r for r in rows if r["device"] == "gpu1"]
    assert len(gpu0) == len(gpu1) >= 35
    assert all(r["counter_j"] == "" for r in gpu1)
    # The counter is read at boundaries (start, stop here); the thread reads power only.
    assert gpu0[0]["counter_j"] and gpu0[-1]["counter_j"] and not any(r["counter_j"] for r in gpu0[1:-1])
    times = [float(r["time_s"]) for r in gpu0]
    assert times == sorted(times) and float(gpu1[0]["power_w"]) == 100.0


def test_thread_is_stopped_when_the_run_raises(tmp_path):
    meter = open_meter("nvml", nvml=ScriptedNVML([ScriptedGPU(constant(100.0))]))
    sampler = Sampler(meter, hz=100, power_csv=tmp_path / "power.csv")
    with pytest.raises(ZeroDivisionError):
        with sampler:
            with sampler.window("eval"):
                1 / 0
    assert not sampler_threads()
    assert sampler.summary.window("eval").count == 1
    with pytest.raises(RuntimeError):
        sampler.mark()


def test_idle_baseline_gives_energy_above_idle():
    nvml = ScriptedNVML([ScriptedGPU(step(70.0, 250.0, at_s=0.5))])
    meter = open_meter("nvml", nvml=nvml)
    idle_w = measure_idle(meter, 0.3, hz=20)
    assert idle_w == pytest.approx(70.0, rel=0.005)
    time.sleep(max(0.0, 0.5 - nvml.seconds(time.monotonic())))
    with Sampler(meter, hz=20, idle_power_w=idle_w) as sampler:
        time.sleep(0.2)
    s = sampler.summary
    assert s.idle_power_w == idle_w
    assert s.energy_above_idle_j == pytest.approx(s.energy_j - idle_w * s.duration_s)
    assert s.energy_above_idle_j == pytest.approx(180.0 * s.duration_s, rel=0.01)
    assert measure_idle(meter, 0) is None and measure_idle(open_meter("none"), 1.0) is None


def write_uj(path, value):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)  # atomic, so the sampler thread never reads half a file


def make_zone(path, name, energy_uj, max_uj):
    path.mkdir()
    (path / "name").write_text(name + "\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    write_uj(path / "energy_uj", energy_uj)


def test_rapl_on_a_fake_powercap_tree_with_a_counter_wrap(tmp_path):
    max_uj = 2**32
    package = tmp_path / "intel-rapl:0"
    make_zone(package, "package-0", max_uj - 1_000_000, max_uj)  # 1 J before the wrap
    make_zone(package / "intel-rapl:0:0", "core", 5, max_uj)  # inside the package: not counted again
    make_zone(package / "intel-rapl:0:1", "dram", 5_000_000, max_uj)
    make_zone(tmp_path / "intel-rapl:1", "psys", 7, max_uj)  # overlaps the packages: skipped
    meter = open_meter("rapl", rapl_root=tmp_path)
    assert [d.name for d in meter.devices] == ["package-0", "package-0/dram"]
    with Sampler(meter, hz=50) as sampler:
        time.sleep(0.05)
        write_uj(package / "energy_uj", 2_000_000)  # wrapped: 1 J to the top, then 2 J
        write_uj(package / "intel-rapl:0:1" / "energy_uj", 5_500_000)
        time.sleep(0.05)
        energy = sampler.mark()
    assert energy == pytest.approx(3.5, abs=1e-9)
    s = sampler.summary
    assert s.energy_j == pytest.approx(3.5, abs=1e-9) and s.energy_source == "counter"
    assert s.meter == "rapl" and s.power_peak_w > 0  # power derived from the counter


def test_rapl_without_zones_is_unavailable(tmp_path):
    with pytest.warns(UserWarning, match="no intel-rapl zones"):
        meter = open_meter("rapl", rapl_root=tmp_path)
    assert meter.kind == "none" and "RAPL: no intel-rapl zones" in meter.reason


def test_nvml_library_not_found_is_unavailable_with_the_reason():
    with pytest.warns(UserWarning):
        meter = open_meter("nvml", nvml=ScriptedNVML([], library_found=False))
    assert meter.reason == "NVML: NVML library not found (no NVIDIA driver on this machine)"
    with pytest.raises(ValueError, match="auto, nvml, rapl, none"):
        open_meter("joulemeter")


def test_this_machine_reports_energy_unavailable_and_every_other_figure(tmp_path):
    meter = open_meter("auto")
    if meter.kind != "none":
        pytest.skip(f"this machine has a {meter.kind} meter")
    assert "NVML" in meter.reason and "RAPL" in meter.reason
    with Sampler(meter, hz=100, power_csv=tmp_path / "power.csv", idle_power_w=measure_idle(meter, 1.0)) as sampler:
        time.sleep(0.02)
        assert sampler.mark() is None
        with sampler.window("compile"):
            pass
    s = sampler.summary
    assert s.energy_source == "unavailable" and s.energy_reason == meter.reason
    assert s.duration_s > 0.02 and s.window("steps").duration_s > 0.02
    row = s.as_row()
    for key in ("energy_j", "power_mean_w", "power_peak_w", "sample_hz", "idle_power_w",
                "energy_above_idle_j", "steps_energy_j", "compile_energy_j"):
        assert row[key] is None, key
    assert (tmp_path / "power.csv").read_text().strip() == ",".join(CSV_COLUMNS)
    assert not sampler_threads()
    assert not math.isnan(row["duration_s"])


def test_a_snapshot_is_the_segment_so_far_and_sampling_goes_on(tmp_path):
    nvml = ScriptedNVML([ScriptedGPU(constant(200.0))])  # counter: 200 J per second, exactly
    meter = open_meter("nvml", nvml=nvml)
    path = tmp_path / "power.csv"
    with Sampler(meter, hz=50, power_csv=path) as sampler:
        with sampler.window("compile"):
            time.sleep(0.1)
        time.sleep(0.2)
        sampler.mark()
        snap = sampler.snapshot()
        rows_at_snapshot = len(path.read_text().splitlines())  # flushed: what a kill now would leave
        time.sleep(0.2)
        sampler.mark()
    steps, compile_ = snap.window("steps"), snap.window("compile")
    assert steps.energy_j == pytest.approx(200.0 * steps.duration_s, rel=1e-3)
    assert compile_.energy_j == pytest.approx(200.0 * compile_.duration_s, rel=1e-3) and compile_.duration_s >= 0.1
    assert snap.energy_j == pytest.approx(200.0 * snap.duration_s, rel=1e-3) and snap.duration_s < 0.45
    assert rows_at_snapshot >= 10
    final = sampler.summary
    assert final.window("steps").count == 2 and final.window("steps").duration_s > steps.duration_s + 0.15
    assert final.energy_j > snap.energy_j + 0.15 * 200


class FailingNVML(ScriptedNVML):
    """Every reading fails once `failing` is set (after the meter has probed the GPU): NVML's "GPU is lost"."""

    failing = False

    def _fail(self):
        if self.failing:
            raise self.NVMLError(15)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self._fail()
        return super().nvmlDeviceGetTotalEnergyConsumption(handle)

    def nvmlDeviceGetFieldValues(self, handle, ids):
        self._fail()
        return super().nvmlDeviceGetFieldValues(handle, ids)

    def nvmlDeviceGetPowerUsage(self, handle):
        self._fail()
        return super().nvmlDeviceGetPowerUsage(handle)


@pytest.mark.parametrize("counter", [True, False])
def test_failed_readings_make_energy_unavailable_never_zero(counter):
    nvml = FailingNVML([ScriptedGPU(constant(200.0), counter=counter)])
    meter = open_meter("nvml", nvml=nvml)
    with Sampler(meter, hz=50) as sampler:
        started = time.monotonic()
        time.sleep(0.2)
        before = sampler.mark()  # 200 W over the interval, read while the GPU answers
        interval = time.monotonic() - started
        nvml.failing = True
        time.sleep(0.2)
        after = sampler.mark()
        with sampler.window("eval"):
            time.sleep(0.05)
    summary = sampler.summary
    assert before == pytest.approx(200.0 * interval, rel=0.1)
    assert after is None and summary.window("eval").energy_j is None and summary.window("steps").energy_j is None
    assert summary.energy_j is None and summary.power_mean_w is None and summary.energy_source == "unavailable"
    assert "failed reads" in summary.energy_reason and summary.read_errors > 0


def test_a_snapshot_inside_a_reopened_window_adds_its_earlier_time():
    meter = open_meter("nvml", nvml=ScriptedNVML([ScriptedGPU(constant(100.0))]))  # exact counter
    with Sampler(meter, hz=50) as sampler:
        with sampler.window("eval"):
            time.sleep(0.1)
        sampler.begin_window("eval")
        time.sleep(0.1)
        snap = sampler.snapshot().window("eval")
        sampler.end_window("eval")
    assert snap.count == 2 and snap.duration_s >= 0.2
    assert snap.energy_j == pytest.approx(100.0 * snap.duration_s, rel=1e-3)
    assert sampler.summary.window("eval").energy_j >= snap.energy_j


def test_without_a_meter_no_window_reads_zero_joules():
    with Sampler(open_meter("none"), hz=10) as sampler:
        with sampler.window("eval"):
            pass
    row = sampler.summary.as_row()
    assert row["steps_energy_j"] is None and row["eval_energy_j"] is None and row["energy_j"] is None


def test_a_run_whose_segments_did_not_all_measure_says_which():
    from jaxscale.train import combine_energy
    measured = {"energy_j": 100.0, "duration_s": 10.0, "power_peak_w": 30.0, "steps_energy_j": 80.0, "steps_s": 8.0,
                "energy_source": "counter", "energy_reason": ""}
    unmeasured = {"energy_j": None, "duration_s": 4.0, "power_peak_w": None, "steps_energy_j": None, "steps_s": 3.0,
                  "energy_source": "unavailable", "energy_reason": "no NVML here"}
    combined = combine_energy([unmeasured, measured])
    assert combined["energy_j"] is None and combined["steps_energy_j"] is None and combined["steps_s"] == 11.0
    assert combined["energy_source"] == "unavailable"
    assert combined["energy_reason"] == "segment 1 of 2 measured no energy: no NVML here"


def test_on_gpus_auto_meters_the_gpus_or_nothing(monkeypatch):
    """A GPU run whose NVML fails must not report the CPU package's energy (RAPL) as the run's."""
    from jaxscale import train
    from jaxscale.energy.meters import NoMeter

    asked = []
    monkeypatch.setattr(train, "open_meter", lambda kind, gpus=None: asked.append((kind, gpus)) or NoMeter("-"))
    monkeypatch.setattr(train, "gpus_of", lambda ordinals: [f"bus{i}" for i in ordinals])
    monkeypatch.setattr(train, "local_gpu_ordinals", lambda: [0])
    train.open_process_meter("auto")
    train.open_process_meter("rapl")  # asked for by name: as asked
    monkeypatch.setattr(train, "local_gpu_ordinals", lambda: None)  # off GPUs
    train.open_process_meter("auto")
    assert asked == [("nvml", ["bus0"]), ("rapl", ["bus0"]), ("auto", None)]
