"""The Chinchilla parametric loss L(N, D) = E + A / N^alpha + B / D^beta and its compute-optimal allocation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ChinchillaLaw:
    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.336
    beta: float = 0.283

    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def loss(self, params, tokens):
        params, tokens = np.asarray(params, float), np.asarray(tokens, float)
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def compute_optimal(self, flops):
        """(N_opt, D_opt) minimising L at training compute C = 6·N·D."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        per_six = np.asarray(flops, float) / 6.0
        return g * per_six**self.a, per_six**self.b / g

    def chinchilla_for_loss(self, loss: float) -> tuple[float, float]:
        """(N, D) of the compute-optimal (Chinchilla-style) model that reaches `loss`."""
        excess = self.excess_loss(loss)
        params = (self.A * (1.0 + self.alpha / self.beta) / excess) ** (1.0 / self.alpha)
        tokens = (self.B * (1.0 + self.beta / self.alpha) / excess) ** (1.0 / self.beta)
        return float(params), float(tokens)

    def params_for_loss(self, loss: float, tokens):
        """N such that L(N, tokens) = loss (nan where the tokens alone cannot reach it)."""
        room = self.excess_loss(loss) - self.B / np.asarray(tokens, float) ** self.beta
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(room > 0, (self.A / np.where(room > 0, room, 1.0)) ** (1.0 / self.alpha), np.nan)

    def excess_loss(self, loss: float) -> float:
        if not loss > self.E:
            raise ValueError(f"target loss {loss} must exceed the irreducible loss E = {self.E}")
        return loss - self.E

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


HOFFMANN = ChinchillaLaw()
