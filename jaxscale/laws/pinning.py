"""Plain-words warnings for a Chinchilla fit that its runs cannot pin down: bootstrap intervals that span orders of
magnitude, and optima the law puts outside the model sizes and token budgets that were trained."""

from __future__ import annotations

import numpy as np

MAX_SPAN = 100.0  # an interval whose upper end exceeds this multiple of its lower end does not pin a constant
CONSTANTS = ("E", "A", "B", "alpha", "beta")
# An optimum this close beyond the trained range is the usual corner of a good grid, not a warning sign.
MARGIN = 2.0


def wide_intervals(ci: dict | None, max_span: float = MAX_SPAN) -> dict[str, tuple[float, float]]:
    """The constants whose 95% interval spans more than `max_span`× (or reaches 0 or below)."""
    wide = {}
    for key in CONSTANTS:
        if ci and key in ci:
            low, high = ci[key]
            if not (low > 0 and high / low <= max_span):
                wide[key] = (low, high)
    return wide


def interval_warning(ci: dict | None) -> str | None:
    wide = wide_intervals(ci)
    if not wide:
        return None
    spans = ", ".join(f"{k} in [{low:.3g}, {high:.3g}]" for k, (low, high) in wide.items())
    return (f"These runs cannot pin the law: the 95% intervals of {', '.join(wide)} span more than a factor of "
            f"{MAX_SPAN:g} ({spans}). Treat the fitted constants, and the optima computed from them, as unreliable; "
            "more model sizes and token budgets (wider apart) would pin them.")


def range_warning(what: str, params, tokens, trained_params, trained_tokens) -> str | None:
    """A warning when any of `params` / `tokens` lies more than MARGIN× outside the trained range of N / D."""
    outside = []
    for name, values, trained in (("N", params, trained_params), ("D", tokens, trained_tokens)):
        values, trained = np.atleast_1d(np.asarray(values, float)), np.asarray(trained, float)
        low, high = trained.min(), trained.max()
        if not np.all((values >= low / MARGIN) & (values <= high * MARGIN)):
            shown = ", ".join(f"{v:.3g}" for v in values)
            outside.append(f"{name} = {shown} outside the trained {low:.3g} to {high:.3g}")
    if not outside:
        return None
    return (f"{what} lies outside what was trained ({'; '.join(outside)}): the law is extrapolated there, "
            "not measured.")
