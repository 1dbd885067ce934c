"""Energy meters behind one interface: NVML (GPUs), RAPL (CPU packages), or none.

A meter reads every device it covers at once and returns, per device, (power W, counter J); either
may be None. Counters are cumulative and only their differences mean anything. A meter that cannot
measure says why in `reason` and has no devices: energy is then unavailable, never zero.
"""
from __future__ import annotations

import ctypes
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

KINDS = ("auto", "nvml", "rapl", "none")
# NVML field values carry their value in a C union; which member depends on the driver.
_NVML_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


@dataclass(frozen=True)
class Device:
    name: str  # e.g. "gpu0", "package-0"
    supports: tuple[str, ...]  # subset of ("counter", "instant", "average"), probed once

    @property
    def has_counter(self) -> bool:
        return "counter" in self.supports

    def __str__(self) -> str:
        return f"{self.name}[{','.join(self.supports) or 'nothing'}]"


Reading = tuple[float | None, float | None]  # (power_w, counter_j) of one device


class Meter(Protocol):
    kind: str  # "nvml" | "rapl" | "none"
    devices: tuple[Device, ...]
    reason: str  # why energy is unavailable; "" when it is available

    def read(self, counters: bool = True) -> list[Reading]:
        """counters=False may skip counters where a power reading exists (cheaper: the sampler
        thread needs power; counters are needed at step and window boundaries)."""
    def close(self) -> None: ...


class NoMeter:
    kind = "none"
    devices: tuple[Device, ...] = ()

    def __init__(self, reason: str):
        self.reason = reason

    def read(self, counters: bool = True) -> list[Reading]:
        return []

    def close(self) -> None:
        pass


class NvmlMeter:
    """One reading per GPU: the total-energy counter (mJ) and instant or else average power (mW).

    `nvml` is the pynvml module, or a stand-in with the same functions (tests, benchmarks).
    Raises nvml.NVMLError when NVML cannot start; `open_meter` turns that into a NoMeter.
    """

    kind = "nvml"
    reason = ""

    def __init__(self, nvml, gpus: Sequence[int | str] | None = None):
        self.nvml = nvml
        nvml.nvmlInit()
        try:
            ids = list(gpus) if gpus is not None else _visible_gpus(nvml.nvmlDeviceGetCount())
            self.handles = [_nvml_handle(nvml, i) for i in ids]
            devices = tuple(Device(f"gpu{i}" if isinstance(i, int) else i, _probe_gpu(nvml, h)) for i, h in zip(ids, self.handles))
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self.devices = devices
        self.power_kinds = [next((k for k in ("instant", "average") if k in d.supports), None) for d in devices]
        self.errors = 0  # failed reads after probing (counted, the value reads as None)

    def read(self, counters: bool = True) -> list[Reading]:
        return [(self._power_w(h, kind), self._counter_j(h, d) if counters or kind is None else None)
                for h, d, kind in zip(self.handles, self.devices, self.power_kinds)]

    def _counter_j(self, handle, device: Device) -> float | None:
        if not device.has_counter:
            return None
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
        except self.nvml.NVMLError:
            self.errors += 1
            return None

    def _power_w(self, handle, kind: str | None) -> float | None:
        try:
            if kind == "instant":
                return _instant_mw(self.nvml, handle) / 1000.0
            if kind == "average":
                return self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except self.nvml.NVMLError:
            self.errors += 1
        return None

    def close(self) -> None:
        self.nvml.nvmlShutdown()


def _visible_gpus(count: int) -> list[int | str]:
    """The GPUs this process uses: CUDA_VISIBLE_DEVICES (indices or UUIDs) if set, else all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    return [int(v) if v.isdigit() else v for v in ids]


PCI_BUS_ID = re.compile(r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-9a-fA-F]")


def _nvml_handle(nvml, gpu: int | str):
    """An NVML index (PCI order), a PCI bus id (domain:bus:device.function) or a UUID."""
    if isinstance(gpu, int):
        return nvml.nvmlDeviceGetHandleByIndex(gpu)
    if PCI_BUS_ID.fullmatch(gpu):
        return nvml.nvmlDeviceGetHandleByPciBusId(gpu)
    return nvml.nvmlDeviceGetHandleByUUID(gpu)


def cuda_pci_bus_id(ordinal: int) -> str:
    """The PCI bus id of CUDA device `ordinal` as this process numbers its GPUs (CUDA_VISIBLE_DEVICES and
    CUDA_DEVICE_ORDER applied), from the CUDA driver. NVML numbers GPUs in PCI order, CUDA fastest first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID: only the bus id names the same GPU in both. Raises OSError without a driver."""
    lib = ctypes.CDLL("libcuda.so.1")
    device, bus_id = ctypes.c_int(), ctypes.create_string_buffer(32)
    for status in (lib.cuInit(0), lib.cuDeviceGet(ctypes.byref(device), ordinal),
                   lib.cuDeviceGetPCIBusId(bus_id, len(bus_id), device)):
        if status:
            raise OSError(f"CUDA driver error {status} asking for the PCI bus id of device {ordinal}")
    return bus_id.value.decode()


def gpus_of(ordinals: Sequence[int], bus_id=cuda_pci_bus_id) -> list[str] | None:
    """PCI bus ids for the CUDA ordinals of a process's JAX devices; None (meter by CUDA_VISIBLE_DEVICES) where
    the driver cannot say."""
    try:
        return [bus_id(i) for i in ordinals]
    except OSError as err:
        warnings.warn(f"GPUs metered by CUDA_VISIBLE_DEVICES, which names NVML's GPUs only with "
                      f"CUDA_DEVICE_ORDER=PCI_BUS_ID: {err}", stacklevel=2)
        return None


def _instant_mw(nvml, handle) -> float:
    field = nvml.nvmlDeviceGetFieldValues(handle, [nvml.NVML_FI_DEV_POWER_INSTANT])[0]
    if field.nvmlReturn != nvml.NVML_SUCCESS:
        raise nvml.NVMLError(field.nvmlReturn)
    return float(getattr(field.value, _NVML_VALUE_MEMBERS.get(field.valueType, "uiVal")))


def _probe_gpu(nvml, handle) -> tuple[str, ...]:
    probes = {
        "counter": lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "instant": lambda: _instant_mw(nvml, handle),
        "average": lambda: nvml.nvmlDeviceGetPowerUsage(handle),
    }
    supported = []
    for name, probe in probes.items():
        try:
            probe()
            supported.append(name)
        except nvml.NVMLError:
            pass
    return tuple(supported)


class RaplMeter:
    """CPU package (and DRAM) energy counters from Linux powercap, unwrapped at max_energy_range_uj.

    Power is not read: the sampler derives it from counter differences. RAPL counts the whole
    package, including other processes. Raises OSError when no zone can be read.
    """

    kind = "rapl"
    reason = ""

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        self.zones = _rapl_zones(Path(root))
        if not self.zones:
            raise FileNotFoundError(f"no intel-rapl zones under {root}")
        self.devices = tuple(Device(name, ("counter",)) for name, _ in self.zones)
        self.ranges_uj = [int((path / "max_energy_range_uj").read_text()) for _, path in self.zones]
        self.last_uj = [self._raw_uj(path) for _, path in self.zones]
        self.total_uj = [0] * len(self.zones)

    @staticmethod
    def _raw_uj(path: Path) -> int:
        return int((path / "energy_uj").read_text())

    def read(self, counters: bool = True) -> list[Reading]:
        readings: list[Reading] = []
        for i, (_, path) in enumerate(self.zones):
            raw = self._raw_uj(path)
            delta = raw - self.last_uj[i]
            if delta < 0:  # the counter wrapped (assumes reads closer together than one full range)
                delta += self.ranges_uj[i]
            self.last_uj[i] = raw
            self.total_uj[i] += delta
            readings.append((None, self.total_uj[i] / 1e6))
        return readings

    def close(self) -> None:
        pass


def _rapl_zones(root: Path) -> list[tuple[str, Path]]:
    """Top-level package zones plus their DRAM subzones (core/uncore are inside the package; psys
    overlaps the packages; intel-rapl-mmio duplicates them)."""
    zones = []
    for package in sorted(root.glob("intel-rapl:*")):
        if not re.fullmatch(r"intel-rapl:\d+", package.name):
            continue
        name = _zone_name(package)
        if name == "psys":
            continue
        zones.append((name, package))
        for sub in sorted(package.glob(f"{package.name}:*")):
            if _zone_name(sub) == "dram":
                zones.append((f"{name}/dram", sub))
    return zones


def _zone_name(path: Path) -> str:
    try:
        return (path / "name").read_text().strip()
    except OSError:
        return path.name


def open_meter(kind: str = "auto", *, nvml=None, gpus: Sequence[int | str] | None = None,
               rapl_root: str | Path = "/sys/class/powercap") -> Meter:
    """The meter for `kind` (auto | nvml | rapl | none); auto tries NVML, then RAPL.

    Never raises for a missing sensor: returns a NoMeter whose `reason` says what was tried and why it
    failed (a warning too when NVML or RAPL was asked for by name).
    """
    if kind not in KINDS:
        raise ValueError(f"energy.meter must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "none":
        return NoMeter("energy measurement disabled (energy.meter = none)")
    reasons = []
    if kind in ("auto", "nvml"):
        meter = _try(lambda: _open_nvml(nvml, gpus), "NVML", reasons)
        if meter is not None:
            return meter
    if kind in ("auto", "rapl"):
        meter = _try(lambda: RaplMeter(rapl_root), "RAPL", reasons)
        if meter is not None:
            return meter
    reason = "; ".join(reasons)
    if kind != "auto":
        warnings.warn(f"energy.meter = {kind} is unavailable: {reason}", stacklevel=2)
    return NoMeter(reason)


def _try(make, label: str, reasons: list[str]):
    try:
        return make()
    except _Unavailable as e:
        reasons.append(f"{label}: {e}")
    except PermissionError as e:
        reasons.append(f"{label}: permission denied reading {e.filename} (energy_uj is root-only on most kernels)")
    except OSError as e:
        reasons.append(f"{label}: {e}")
    return None


class _Unavailable(Exception):
    pass


def _open_nvml(nvml, gpus) -> NvmlMeter:
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            raise _Unavailable("pynvml (nvidia-ml-py) is not installed") from None
    try:
        meter = NvmlMeter(nvml, gpus)
    except getattr(nvml, "NVMLError_LibraryNotFound", ()) as e:
        raise _Unavailable("NVML library not found (no NVIDIA driver on this machine)") from e
    except getattr(nvml, "NVMLError_DriverNotLoaded", ()) as e:
        raise _Unavailable("NVIDIA driver not loaded") from e
    except nvml.NVMLError as e:
        raise _Unavailable(f"NVML failed to start: {e}") from e
    usable = [d for d in meter.devices if d.supports]
    if not usable:
        meter.close()
        what = ", ".join(map(str, meter.devices)) or "no GPU visible (CUDA_VISIBLE_DEVICES or count 0)"
        raise _Unavailable(f"no GPU reports energy or power: {what}")
    if len(usable) < len(meter.devices):
        meter.close()
        bad = ", ".join(d.name for d in meter.devices if not d.supports)
        raise _Unavailable(f"{bad} report neither energy nor power, so a total would be partial")
    return meter
