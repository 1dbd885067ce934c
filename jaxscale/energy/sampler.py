"""A host-side power sampler synchronised to step boundaries.

A thread reads the meter `hz` times a second; `mark()` (after the step's outputs are ready) and the
window calls take a reading on the caller's thread, so every interval has real endpoint readings.
The energy of an interval is, per device, the counter's difference when the device has a counter,
else the trapezoidal integral of its power trace. The thread reads power only (counters are read
at boundaries, except RAPL's, which is its only source). State is a running integral, not the trace,
so memory stays constant however long the run; the trace is streamed to power.csv.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from jaxscale.energy.meters import Meter

log = logging.getLogger(__name__)
CSV_COLUMNS = ("time_s", "device", "power_w", "counter_j")
# Shortest interval a power is derived from a counter over (RAPL updates about every millisecond, so
# a mark read microseconds after a sample would give a meaningless, spiky rate).
MIN_RATE_S = 0.01


@dataclass(frozen=True)
class WindowEnergy:
    name: str  # "steps" (the sum of all mark intervals), or a window such as "compile", "eval"
    energy_j: float | None
    duration_s: float
    count: int


@dataclass(frozen=True)
class EnergySummary:
    energy_j: float | None  # start() to stop(), all devices
    power_mean_w: float | None  # energy_j / duration_s
    power_peak_w: float | None  # highest sum over devices of one reading
    duration_s: float
    sample_hz: float | None  # achieved by the thread; None when there is nothing to sample
    energy_source: str  # "counter" | "sampled power" | "unavailable"
    energy_reason: str  # why unavailable, else ""
    meter: str  # "nvml" | "rapl" | "none"
    devices: tuple[str, ...]  # e.g. "gpu0[counter,instant,average]": what each device supports
    windows: tuple[WindowEnergy, ...] = ()
    idle_power_w: float | None = None
    energy_above_idle_j: float | None = None
    read_errors: int = 0

    def window(self, name: str) -> WindowEnergy | None:
        return next((w for w in self.windows if w.name == name), None)

    def as_row(self) -> dict:
        """Flat scalar columns for results.csv; unavailable values are None, never 0."""
        row = {k: getattr(self, k) for k in (
            "energy_j", "power_mean_w", "power_peak_w", "duration_s", "sample_hz", "energy_source",
            "energy_reason", "idle_power_w", "energy_above_idle_j")}
        row["energy_meter"] = self.meter
        for w in self.windows:
            row[f"{w.name}_energy_j"] = w.energy_j
            row[f"{w.name}_s"] = w.duration_s
        return row


@dataclass
class _Track:
    """Running state of one device: its last reading and cumulative trapezoid energy."""

    t_power: float = 0.0
    power_w: float | None = None
    t_counter: float = 0.0
    counter_j: float | None = None
    trapz_j: float = 0.0


@dataclass(frozen=True)
class _Point:
    """A boundary (start, mark, window edge): time and each device's (trapz_j, counter_j, power read here)."""

    t: float
    cumulative: tuple[tuple[float, float | None, bool], ...]


@dataclass
class _Total:
    energy_j: float | None = 0.0
    duration_s: float = 0.0
    count: int = 0

    def add(self, energy_j: float | None, duration_s: float) -> None:
        self.energy_j = None if energy_j is None or self.energy_j is None else self.energy_j + energy_j
        self.duration_s += duration_s
        self.count += 1


class Sampler:
    """Usage: `with Sampler(meter, hz, power_csv) as s: ...; s.mark() ...` then `s.summary`;
    or start() ... stop() in try/finally. The meter is not closed here (it may be shared)."""

    def __init__(self, meter: Meter, hz: float = 10.0, power_csv: str | Path | None = None,
                 idle_power_w: float | None = None):
        if not hz > 0:
            raise ValueError(f"energy.hz must be > 0; got {hz}")
        self.meter, self.hz, self.power_csv, self.idle_power_w = meter, float(hz), power_csv, idle_power_w
        self.summary: EnergySummary | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- run lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self.summary = None
        self._tracks = [_Track() for _ in self.meter.devices]
        self._peak_w: float | None = None
        self._thread_reads = self._errors = 0
        self._meter_errors_at_start = getattr(self.meter, "errors", 0)  # the meter may be shared
        self._totals: dict[str, _Total] = {"steps": _Total()}
        self._open: dict[str, _Point] = {}
        self._csv_file = open(self.power_csv, "w", newline="") if self.power_csv else None
        try:
            self._csv = csv.writer(self._csv_file) if self._csv_file else None
            if self._csv:
                self._csv.writerow(CSV_COLUMNS)
            self._stopping = False
            self._t0 = time.monotonic()
            self._first = self._last_mark = self._read_point()
            self._thread = threading.Thread(target=self._run, name="jaxscale-energy", daemon=True)
            if self.meter.devices:
                self._thread.start()
        except BaseException:
            self._close_csv()
            self._thread = None
            raise

    def stop(self) -> EnergySummary:
        """Stops the thread, closes power.csv and returns (and keeps in `.summary`) the run's figures."""
        if self._thread is None:
            raise RuntimeError("sampler not started")
        try:
            self._stopping = True
            if self._thread.is_alive():
                self._thread.join()
            last = self._read_point()
        finally:
            self._close_csv()
            self._thread = None
        for name, begin in self._open.items():  # a window never ended ends here
            self._totals.setdefault(name, _Total()).add(self._energy(begin, last), last.t - begin.t)
        self._open.clear()
        self.summary = self._summarise(last, self._totals)
        return self.summary

    def snapshot(self) -> EnergySummary:
        """The figures so far, as stop() would give them now, without stopping; power.csv is flushed. Taken with
        a checkpoint, it is what a run killed later keeps of this segment."""
        self._require_started()
        point = self._read_point()
        with self._lock:
            if self._csv_file:
                self._csv_file.flush()
        totals = {name: dataclasses.replace(total) for name, total in self._totals.items()}  # copies: stop() adds
        for name, begin in self._open.items():
            totals.setdefault(name, _Total()).add(self._energy(begin, point), point.t - begin.t)
        return self._summarise(point, totals)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self.stop()

    # --- boundaries ---------------------------------------------------------------------------
    def mark(self) -> float | None:
        """Energy (J) since the previous mark, start() or end_window(); call after block_until_ready."""
        self._require_started()
        point = self._read_point()
        energy = self._energy(self._last_mark, point)
        self._totals["steps"].add(energy, point.t - self._last_mark.t)
        self._last_mark = point
        return energy

    def skip(self) -> None:
        """The next mark measures from now: what happened since the previous boundary belongs to no window (it
        stays in the segment's total)."""
        self._require_started()
        self._last_mark = self._read_point()

    def begin_window(self, name: str) -> None:
        """Start a separately measured phase (compile, eval); its energy is not in the next mark's."""
        self._require_started()
        if not name.isidentifier() or name == "steps":
            raise ValueError(f"window name must be an identifier other than 'steps'; got {name!r}")
        if name in self._open:
            raise RuntimeError(f"window {name!r} is already open")
        self._open[name] = self._read_point()

    def end_window(self, name: str) -> float | None:
        """Energy (J) of the window; the next mark measures from here. Synchronise before calling."""
        self._require_started()
        begin = self._open.pop(name, None)
        if begin is None:
            raise RuntimeError(f"window {name!r} is not open")
        point = self._read_point()
        energy = self._energy(begin, point)
        self._totals.setdefault(name, _Total()).add(energy, point.t - begin.t)
        self._last_mark = point
        return energy

    @contextlib.contextmanager
    def window(self, name: str):
        """`with sampler.window("eval"): ...` — the body must block_until_ready its own outputs."""
        self.begin_window(name)
        try:
            yield
        finally:
            self.end_window(name)

    # --- internals ----------------------------------------------------------------------------
    def _require_started(self) -> None:
        if self._thread is None:
            raise RuntimeError("sampler not started: call start() first")

    def _run(self) -> None:
        period = 1.0 / self.hz
        deadline = time.monotonic() + period
        while not self._stopping:
            # time.sleep wakes more cheaply than Event.wait; slices of <= 0.1 s keep stop() prompt
            remaining = deadline - time.monotonic()
            if remaining > 0:
                time.sleep(min(remaining, 0.1))
                continue
            try:
                self._read_point(from_thread=True)
            except Exception:  # a failed read must not end the sampling; it is counted
                with self._lock:
                    self._errors += 1
                log.warning("energy sampler read failed", exc_info=True)
            deadline += period
            now = time.monotonic()
            if deadline < now:  # fell behind (a stall): skip ahead rather than read in a burst
                deadline = now + period

    def _read_point(self, from_thread: bool = False) -> _Point | None:
        """Read the meter and advance every device's running state. The thread skips counters where a
        power reading exists (they are only needed at boundaries); a boundary returns its _Point."""
        with self._lock:
            before = time.monotonic()
            readings = self.meter.read(counters=not from_thread)
            t = (before + time.monotonic()) / 2
            total_w: float | None = 0.0 if readings else None
            cumulative = []
            for i, (power_w, counter_j) in enumerate(readings):
                track = self._tracks[i]
                power_w = self._update(track, t, power_w, counter_j)
                total_w = None if power_w is None or total_w is None else total_w + power_w
                cumulative.append((track.trapz_j, counter_j, power_w is not None))  # this reading's, not stale ones
                if self._csv:
                    self._csv.writerow((f"{t - self._t0:.6f}", self.meter.devices[i].name,
                                        _fmt(power_w), _fmt(counter_j)))
            if total_w is not None and (self._peak_w is None or total_w > self._peak_w):
                self._peak_w = total_w
            if from_thread:
                self._thread_reads += 1
                return None
            return _Point(t, tuple(cumulative))

    @staticmethod
    def _update(track: _Track, t: float, power_w: float | None, counter_j: float | None) -> float | None:
        """Advance one device's running integral; returns the power used: the reading, or the
        counter's rate since its last reading when there is no power reading (RAPL). A failed read
        (None) is skipped, so the integral bridges it."""
        if power_w is None and counter_j is not None and track.counter_j is not None:
            if t - track.t_counter < MIN_RATE_S:
                return None  # too soon after the last reading for a rate; keep the older reference
            power_w = (counter_j - track.counter_j) / (t - track.t_counter)
        if power_w is not None:
            if track.power_w is not None:
                track.trapz_j += 0.5 * (power_w + track.power_w) * (t - track.t_power)
            track.t_power, track.power_w = t, power_w
        if counter_j is not None:
            track.t_counter, track.counter_j = t, counter_j
        return power_w

    def _energy(self, a: _Point, b: _Point) -> float | None:
        """Energy between two boundaries, all devices; None where a device's reading failed at either one (its
        energy there is unknown, not 0)."""
        if not self.meter.devices:
            return None
        total = 0.0
        for device, (trapz_a, counter_a, read_a), (trapz_b, counter_b, read_b) in zip(
                self.meter.devices, a.cumulative, b.cumulative):
            if device.has_counter and counter_a is not None and counter_b is not None:
                total += counter_b - counter_a
            elif read_a and read_b:
                total += trapz_b - trapz_a
            else:
                return None
        return total

    def _summarise(self, last: _Point, totals: dict[str, _Total]) -> EnergySummary:
        duration = last.t - self._first.t
        energy = self._energy(self._first, last)
        available = energy is not None
        measured = bool(self.meter.devices)  # (a window with no interval in it is 0 J only where there is a meter)
        windows = tuple(WindowEnergy(name, t.energy_j if measured else None, t.duration_s, t.count)
                        for name, t in totals.items())
        idle = self.idle_power_w if available else None
        read_errors = self._errors + getattr(self.meter, "errors", 0) - self._meter_errors_at_start
        return EnergySummary(
            energy_j=energy,
            power_mean_w=energy / duration if available and duration > 0 else None,
            power_peak_w=self._peak_w,
            duration_s=duration,
            sample_hz=self._thread_reads / duration if available and duration > 0 else None,
            energy_source=_source(self.meter) if available else "unavailable",
            energy_reason="" if available else self.meter.reason or (
                f"a meter reading failed at the start or the end ({read_errors} failed reads)"),
            meter=self.meter.kind,
            devices=tuple(str(d) for d in self.meter.devices),
            windows=windows,
            idle_power_w=idle,
            energy_above_idle_j=energy - idle * duration if idle is not None else None,
            read_errors=read_errors,
        )

    def _close_csv(self) -> None:
        if self._csv_file:
            self._csv_file.close()
        self._csv_file = self._csv = None


def _source(meter: Meter) -> str:
    if not meter.devices:
        return "unavailable"
    return "counter" if all(d.has_counter for d in meter.devices) else "sampled power"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def measure_idle(meter: Meter, seconds: float, hz: float = 10.0) -> float | None:
    """Mean power (W) over `seconds` of doing nothing; None when unavailable or seconds <= 0."""
    if seconds <= 0 or not meter.devices:
        return None
    with Sampler(meter, hz) as sampler:
        time.sleep(seconds)
    return sampler.summary.power_mean_w
