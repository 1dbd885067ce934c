"""`python tests/scripted_gpus_train.py ARGS...`: jaxscale.train with GPUs scripted at the lowest layers — the
pynvml module (jaxscale.testing.scripted_nvml) and the CUDA driver's answer to "which PCI bus id is ordinal i" —
for a process whose JAX devices are CPU devices standing in for its CUDA ordinals 0..n-1.

$SCRIPTED_GPUS is a JSON list of {"watts": W, "speed": S} in PCI order; CUDA_VISIBLE_DEVICES and
CUDA_DEVICE_ORDER mean what they mean to CUDA."""
import functools
import json
import os
import sys

import jax

from jaxscale import train
from jaxscale.energy import meters
from jaxscale.testing.scripted_nvml import ScriptedGPU, ScriptedNVML, constant

nvml = ScriptedNVML([ScriptedGPU(constant(g["watts"]), speed=g["speed"]) for g in json.loads(os.environ["SCRIPTED_GPUS"])])
sys.modules["pynvml"] = nvml
train.gpus_of = functools.partial(meters.gpus_of, bus_id=nvml.cuda_pci_bus_id)
train.local_gpu_ordinals = lambda: list(range(len(jax.local_devices())))
sys.exit(train.main(sys.argv[1:]))
