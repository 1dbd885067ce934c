"""Energy measurement: meters (NVML, RAPL, none) and a sampler synchronised to step boundaries.

In a run:

    meter = open_meter(cfg.energy.meter)                      # once (per sweep or per run)
    idle_w = measure_idle(meter, cfg.energy.idle_s)           # None when idle_s is 0 or no meter
    with Sampler(meter, cfg.energy.hz, run_dir / "power.csv", idle_w) as sampler:
        with sampler.window("compile"):
            ...                                               # compile, block_until_ready
        for step in steps:
            state, metrics = train_step(state, batch)
            jax.block_until_ready(metrics)
            metrics["energy_j"] = sampler.mark()              # J since the previous mark; None if unavailable
            if evaluating:
                with sampler.window("eval"):
                    ...                                       # evaluate, block_until_ready
    summary = sampler.summary                                 # EnergySummary; .as_row() for results.csv
    meter.close()
"""
from jaxscale.energy.meters import KINDS, Device, Meter, NoMeter, NvmlMeter, RaplMeter, open_meter
from jaxscale.energy.sampler import CSV_COLUMNS, EnergySummary, Sampler, WindowEnergy, measure_idle

__all__ = [
    "KINDS", "CSV_COLUMNS", "Device", "Meter", "NoMeter", "NvmlMeter", "RaplMeter", "open_meter",
    "EnergySummary", "Sampler", "WindowEnergy", "measure_idle",
]
