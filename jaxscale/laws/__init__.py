"""Scaling laws: Chinchilla fits, the compute frontier, inference-aware optima, efficiency and statistics."""

from jaxscale.laws.chinchilla import ChinchillaFit, bootstrap_intervals, fit_chinchilla, start_grid
from jaxscale.laws.law import HOFFMANN, ChinchillaLaw

__all__ = ["HOFFMANN", "ChinchillaFit", "ChinchillaLaw", "bootstrap_intervals", "fit_chinchilla", "start_grid"]
