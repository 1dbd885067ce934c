"""A scripted stand-in for the pynvml module: GPUs whose power is a function of time.

`open_meter("nvml", nvml=ScriptedNVML([ScriptedGPU(sine(200, 80, 1.5))]))` drives the real meter and
sampler without a GPU (tests, benchmarks, dry runs). Only the NVML boundary is scripted: the counter
is the analytic integral of the power profile (in mJ, as NVML reports it), average power is the
mean over the last second (as on recent GPUs), and instant power is the profile's value now.
Every reading is logged with its thread and time so tests can check the numbers built on them.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

COUNTER_OFFSET_MJ = 987_654_321  # "since the driver loaded": only differences mean anything


@dataclass(frozen=True)
class Profile:
    power_w: Callable[[float], float]  # W at t seconds after the stand-in was created
    energy_j: Callable[[float], float]  # its integral from 0 to t


def constant(watts: float) -> Profile:
    return Profile(lambda t: watts, lambda t: watts * t)


def step(before_w: float, after_w: float, at_s: float) -> Profile:
    return Profile(lambda t: before_w if t < at_s else after_w,
                   lambda t: before_w * min(t, at_s) + after_w * max(0.0, t - at_s))


def ramp(from_w: float, to_w: float, over_s: float) -> Profile:
    """Linear from from_w at 0 to to_w at over_s, constant after."""
    slope = (to_w - from_w) / over_s
    return Profile(lambda t: from_w + slope * min(t, over_s),
                   lambda t: from_w * t + slope * min(t, over_s) ** 2 / 2 + slope * over_s * max(0.0, t - over_s))


def sine(mean_w: float, amplitude_w: float, hz: float) -> Profile:
    w = 2 * math.pi * hz
    return Profile(lambda t: mean_w + amplitude_w * math.sin(w * t),
                   lambda t: mean_w * t + amplitude_w * (1 - math.cos(w * t)) / w)


@dataclass(frozen=True)
class ScriptedGPU:
    profile: Profile
    counter: bool = True  # nvmlDeviceGetTotalEnergyConsumption (Volta and newer)
    instant: bool = True  # NVML_FI_DEV_POWER_INSTANT
    average: bool = True  # nvmlDeviceGetPowerUsage
    bus_id: str = ""  # PCI bus id (default: one per position, in PCI order)
    uuid: str = ""
    speed: int = 0  # CUDA's default order lists the fastest first (ties in PCI order)


class NVMLError(Exception):
    def __init__(self, value: int = 999):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found"}.get(
            self.value, f"NVML error {self.value}")


class NVMLError_NotSupported(NVMLError):
    def __init__(self):
        super().__init__(3)


class NVMLError_DriverNotLoaded(NVMLError):
    def __init__(self):
        super().__init__(9)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self):
        super().__init__(12)


class ScriptedNVML:
    NVML_SUCCESS = 0
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_FI_DEV_POWER_INSTANT = 186
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound

    def __init__(self, gpus: list[ScriptedGPU], library_found: bool = True):
        self.gpus = list(gpus)
        self.library_found = library_found
        self.t0 = time.monotonic()
        self.initialised = 0  # nvmlInit calls minus nvmlShutdown calls
        self.log: list[tuple[int, str, int, float, float]] = []  # (thread id, call, gpu, t, value)

    def seconds(self, t_monotonic: float) -> float:
        """A time.monotonic value as the profiles' time."""
        return t_monotonic - self.t0

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _record(self, call: str, gpu: int, t: float, value: float) -> None:
        self.log.append((threading.get_ident(), call, gpu, t, value))

    def nvmlInit(self) -> None:
        if not self.library_found:
            raise NVMLError_LibraryNotFound()
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise NVMLError(2)  # invalid argument
        return index

    def bus_id(self, index: int) -> str:
        return self.gpus[index].bus_id or f"00000000:{0x10 + index:02X}:00.0"

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> int:
        wanted = _normalise_bus_id(bus_id)
        for i in range(len(self.gpus)):
            if _normalise_bus_id(self.bus_id(i)) == wanted:
                return i
        raise NVMLError(6)  # not found

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        for i, gpu in enumerate(self.gpus):
            if (gpu.uuid or f"GPU-scripted-{i}") == uuid:
                return i
        raise NVMLError(6)

    def cuda_pci_bus_id(self, ordinal: int) -> str:
        """What the CUDA driver answers for `ordinal` in this process: CUDA enumerates GPUs fastest first
        (PCI order with CUDA_DEVICE_ORDER=PCI_BUS_ID), then CUDA_VISIBLE_DEVICES picks and orders them."""
        order = list(range(len(self.gpus)))
        if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            order.sort(key=lambda i: -self.gpus[i].speed)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            order = [order[int(v)] for v in visible.split(",") if v.strip()]
        if not 0 <= ordinal < len(order):
            raise OSError(f"CUDA driver error 101 asking for the PCI bus id of device {ordinal}")
        return self.bus_id(order[ordinal])[4:]  # CUDA writes a 4-digit domain, NVML an 8-digit one

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        gpu = self.gpus[handle]
        if not gpu.counter:
            raise NVMLError_NotSupported()
        t = self._now()
        mj = COUNTER_OFFSET_MJ + int(gpu.profile.energy_j(t) * 1000)
        self._record("counter", handle, t, mj)
        return mj

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        gpu = self.gpus[handle]
        if not gpu.average:
            raise NVMLError_NotSupported()
        t = self._now()
        span = min(1.0, t)
        energy = gpu.profile.energy_j(t) - gpu.profile.energy_j(t - span)
        mw = round(1000 * (energy / span if span > 0 else gpu.profile.power_w(t)))
        self._record("average", handle, t, mw)
        return mw

    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: list[int]) -> list[SimpleNamespace]:
        gpu, t, values = self.gpus[handle], self._now(), []
        for field_id in field_ids:
            if field_id == self.NVML_FI_DEV_POWER_INSTANT and gpu.instant:
                mw = round(1000 * gpu.profile.power_w(t))
                self._record("instant", handle, t, mw)
                values.append(SimpleNamespace(fieldId=field_id, nvmlReturn=0, valueType=1,
                                              value=SimpleNamespace(uiVal=mw)))
            else:
                values.append(SimpleNamespace(fieldId=field_id, nvmlReturn=3, valueType=1,
                                              value=SimpleNamespace(uiVal=0)))
        return values


def _normalise_bus_id(bus_id: str) -> str:
    domain, rest = bus_id.upper().split(":", 1)
    return f"{int(domain, 16):08X}:{rest}"
