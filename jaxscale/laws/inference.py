"""Inference-aware optima (Sardana et al., "Beyond Chinchilla-Optimal"): the cheapest (N, D_tr) that reaches a loss.

Minimise 6·N·D_tr + 2·N·T subject to L(N, D_tr) = loss. The Lagrange conditions give one equation in D:
    (beta·B/alpha + B)·D^-beta + (beta·B·T / (3·alpha))·D^(-beta-1) + E - loss = 0,
then N = (A / (loss - E - B·D^-beta))^(1/alpha). The left side falls monotonically in D, so the root is bracketed and
found by Brent's method in log D. The cost version is the same problem with T replaced by the inference tokens
weighted by their price relative to a training FLOP (prefill and decode at their own MFU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq

from jaxscale.laws.law import ChinchillaLaw

TRAIN_FLOPS_PER_PARAM_TOKEN = 6.0
INFERENCE_FLOPS_PER_PARAM_TOKEN = 2.0

# Dense peak FLOP/s (no sparsity) by GPU and dtype, from NVIDIA's datasheets (H100 and H200: the SXM parts).
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "A100": {"bf16": 312e12, "fp16": 312e12, "int8": 624e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "int8": 1979e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp8": 1513e12, "int8": 1513e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "int8": 1979e12},
}


@dataclass(frozen=True)
class Allocation:
    params: float
    train_tokens: float
    total_flops: float  # training plus inference
    total_cost: float | None = None  # dollars, when priced

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def lifetime_flops(params: float, train_tokens: float, inference_tokens: float) -> float:
    return params * (TRAIN_FLOPS_PER_PARAM_TOKEN * train_tokens + INFERENCE_FLOPS_PER_PARAM_TOKEN * inference_tokens)


def optimal_train_tokens(law: ChinchillaLaw, loss: float, inference_tokens: float) -> float:
    """D_tr minimising 6·N·D_tr + 2·N·T at L(N, D_tr) = loss."""
    if inference_tokens < 0:
        raise ValueError(f"inference tokens must be >= 0, got {inference_tokens}")
    excess = law.excess_loss(loss)
    # Scaled so that the root solves c1·e^(-beta·u) + c2·e^(-(beta+1)·u) = 1 with u = log D.
    log_c1 = np.log(law.B * (law.beta / law.alpha + 1.0) / excess)
    chinchilla_u = log_c1 / law.beta
    if inference_tokens == 0:
        return float(np.exp(chinchilla_u))
    log_c2 = np.log(law.beta * law.B * inference_tokens / (3.0 * law.alpha) / excess)

    def excess_gradient(u: float) -> float:
        return np.exp(log_c1 - law.beta * u) + np.exp(log_c2 - (law.beta + 1.0) * u) - 1.0

    # At the Chinchilla point the first term alone is 1, so the equation is positive; step up until it turns negative.
    lower, upper = chinchilla_u, chinchilla_u + 1.0
    while excess_gradient(upper) > 0:
        lower, upper = upper, upper + 2.0 * (upper - chinchilla_u)
    return float(np.exp(brentq(excess_gradient, lower, upper, xtol=1e-13, rtol=4 * np.finfo(float).eps, maxiter=500)))


def inference_optimal(law: ChinchillaLaw, loss: float, inference_tokens: float) -> Allocation:
    """The model with the least lifetime compute that reaches `loss` and then serves `inference_tokens`."""
    tokens = optimal_train_tokens(law, loss, inference_tokens)
    params = float(law.params_for_loss(loss, tokens))
    return Allocation(params, tokens, lifetime_flops(params, tokens, inference_tokens))


def chinchilla_style(law: ChinchillaLaw, loss: float, inference_tokens: float) -> Allocation:
    """The training-compute-optimal model of the same loss, serving the same inference."""
    params, tokens = law.chinchilla_for_loss(loss)
    return Allocation(params, tokens, lifetime_flops(params, tokens, inference_tokens))


@dataclass(frozen=True)
class Hardware:
    gpu: str
    dtype: str
    dollars_per_hour: float

    def __post_init__(self):
        if self.gpu not in GPU_PEAK_FLOPS:
            raise ValueError(f"unknown GPU {self.gpu!r}; allowed: {', '.join(GPU_PEAK_FLOPS)}")
        if self.dtype not in GPU_PEAK_FLOPS[self.gpu]:
            allowed = ", ".join(GPU_PEAK_FLOPS[self.gpu])
            raise ValueError(f"dtype {self.dtype!r} has no peak listed for {self.gpu}; allowed: {allowed}")
        if not self.dollars_per_hour > 0:
            raise ValueError(f"dollars per hour must be > 0, got {self.dollars_per_hour}")

    @property
    def peak_flops(self) -> float:
        return GPU_PEAK_FLOPS[self.gpu][self.dtype]

    @property
    def dollars_per_flop(self) -> float:
        """At 100% utilisation; divide by MFU for the real price."""
        return self.dollars_per_hour / (3600.0 * self.peak_flops)


@dataclass(frozen=True)
class CostModel:
    train: Hardware
    inference: Hardware
    train_mfu: float
    prefill_mfu: float
    decode_mfu: float

    def __post_init__(self):
        for name in ("train_mfu", "prefill_mfu", "decode_mfu"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name.replace('_', ' ')} must be in (0, 1], got {value}")

    def cost(self, params: float, train_tokens: float, input_tokens: float, output_tokens: float) -> float:
        per_param = (
            TRAIN_FLOPS_PER_PARAM_TOKEN * train_tokens * self.train.dollars_per_flop / self.train_mfu
            + INFERENCE_FLOPS_PER_PARAM_TOKEN * input_tokens * self.inference.dollars_per_flop / self.prefill_mfu
            + INFERENCE_FLOPS_PER_PARAM_TOKEN * output_tokens * self.inference.dollars_per_flop / self.decode_mfu
        )
        return params * per_param

    def training_equivalent_tokens(self, input_tokens: float, output_tokens: float) -> float:
        """Inference tokens re-expressed as tokens whose 2N FLOPs cost what training FLOPs cost."""
        train_price = self.train.dollars_per_flop / self.train_mfu
        per_flop = self.inference.dollars_per_flop
        inference_price = per_flop * (input_tokens / self.prefill_mfu + output_tokens / self.decode_mfu)
        return inference_price / train_price


@dataclass(frozen=True)
class InferenceDemand:
    requests: float
    input_tokens_per_request: float
    output_tokens_per_request: float

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not 0 <= value < math.inf:
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number >= 0, got {value}")

    @property
    def input_tokens(self) -> float:
        return self.requests * self.input_tokens_per_request

    @property
    def output_tokens(self) -> float:
        return self.requests * self.output_tokens_per_request


def _priced(law, loss, params, tokens, demand: InferenceDemand, prices: CostModel) -> Allocation:
    inference_tokens = demand.input_tokens + demand.output_tokens
    cost = prices.cost(params, tokens, demand.input_tokens, demand.output_tokens)
    return Allocation(params, tokens, lifetime_flops(params, tokens, inference_tokens), cost)


def cost_optimal(law: ChinchillaLaw, loss: float, demand: InferenceDemand, prices: CostModel) -> Allocation:
    """The model with the least lifetime dollar cost that reaches `loss` and serves `demand`."""
    equivalent = prices.training_equivalent_tokens(demand.input_tokens, demand.output_tokens)
    tokens = optimal_train_tokens(law, loss, equivalent)
    return _priced(law, loss, float(law.params_for_loss(loss, tokens)), tokens, demand, prices)


def chinchilla_style_cost(law: ChinchillaLaw, loss: float, demand: InferenceDemand, prices: CostModel) -> Allocation:
    params, tokens = law.chinchilla_for_loss(loss)
    return _priced(law, loss, params, tokens, demand, prices)
