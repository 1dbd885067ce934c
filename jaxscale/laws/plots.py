"""Figures for the sweep report. Uses matplotlib's object API with the Agg canvas: no pyplot, no global backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxscale.files import replacing
from jaxscale.laws.frontier import Envelope, Frontier, PowerLaw
from jaxscale.laws.law import ChinchillaLaw


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # two workers finishing a sweep together may both draw it
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    return path


def _log_axis(axis, values) -> None:
    """Log scale whose labels stay readable when the data spans less than a couple of decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    span = np.log10(np.nanmax(values) / np.nanmin(values))
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(_short_exponent))
    axis.set_minor_formatter(NullFormatter())


def _short_exponent(value, _position=None) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _colors(count: int):
    from matplotlib import colormaps

    return colormaps["viridis"](np.linspace(0.0, 0.9, max(count, 1)))


def loss_vs_compute(path, models: dict[str, tuple], frontier: Frontier, env: Envelope, envelope_law: PowerLaw | None,
                    law: ChinchillaLaw | None = None):
    """models: name -> (flops, loss) arrays, sorted by flops; drawn in the given order."""
    fig = Figure(figsize=(8, 5.2))
    ax = fig.add_subplot()
    ax.plot(env.flops, env.loss, "-", color="0.75", lw=7, solid_capstyle="round", zorder=0,
            label="envelope (interpolated)")
    for color, (name, (flops, loss)) in zip(_colors(len(models)), models.items()):
        ax.plot(flops, loss, "o-", color=color, ms=4, lw=1.2, label=name)
    ax.plot(frontier.flops, frontier.loss, "*", color="crimson", ms=11, zorder=3, label="frontier runs")
    grid = np.geomspace(env.flops.min(), env.flops.max(), 100)
    if envelope_law is not None:
        ax.plot(grid, envelope_law(grid), "--", color="crimson",
                label=f"envelope fit L ∝ C^{envelope_law.exponent:.3f}")
    if law is not None:
        ax.plot(grid, law.loss(*law.compute_optimal(grid)), ":", color="black", lw=1.8,
                label="fitted law at N_opt(C), D_opt(C)")
    ax.set(xscale="log", xlabel="training compute C = 6·N·D (FLOPs)", ylabel="loss (nats/token)",
           title="Loss vs compute per model, with the compute frontier")
    _log_axis(ax.xaxis, env.flops)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, Path(path))


def compute_optimal_allocation(path, optimal: Frontier, n_law: PowerLaw | None, d_law: PowerLaw | None):
    """optimal: the envelope's compute-optimal points."""
    fig = Figure(figsize=(10, 4.2))
    for ax, values, law, label, symbol in (
        (fig.add_subplot(1, 2, 1), optimal.params, n_law, "parameters N", "N_opt"),
        (fig.add_subplot(1, 2, 2), optimal.tokens, d_law, "training tokens D", "D_opt"),
    ):
        ax.plot(optimal.flops, values, "o", color="crimson", label="envelope optimum per compute level")
        if law is not None:
            grid = np.geomspace(optimal.flops.min(), optimal.flops.max(), 100)
            lo, hi = law.exponent_ci
            ci = "" if np.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
            ax.plot(grid, law(grid), "-", color="0.2", label=f"{symbol} ∝ C^{law.exponent:.3f}{ci}")
        ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel=label,
               title=f"{symbol} vs compute")
        _log_axis(ax.xaxis, optimal.flops)
        _log_axis(ax.yaxis, values)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, Path(path))


def loss_vs_params_and_tokens(path, params, tokens, loss, law: ChinchillaLaw):
    fig = Figure(figsize=(13, 4.8))
    for i, (x, group, x_label, group_label) in enumerate(
        ((params, tokens, "parameters N", "D"), (tokens, params, "training tokens D", "N"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        levels = np.unique(group)
        grid = np.geomspace(x.min(), x.max(), 100)
        for color, level in zip(_colors(len(levels)), levels):
            mine = group == level
            ax.plot(x[mine], loss[mine], "o", color=color, ms=4)
            curve = law.loss(grid, level) if group_label == "D" else law.loss(level, grid)
            ax.plot(grid, curve, "-", color=color, lw=1, label=f"{group_label} = {level:.3g}")
        ax.set(xscale="log", xlabel=x_label, ylabel="loss (nats/token)",
               title=f"Loss vs {x_label.split()[-1]} (points: runs; lines: fitted law)")
        _log_axis(ax.xaxis, x)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.subplots_adjust(wspace=0.45)
    return _save(fig, Path(path))


def inference_optimum(path, demand_ratio, param_ratio, token_ratio, flops_ratio, loss: float, law_source: str):
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    ax.plot(demand_ratio, param_ratio, "-", label="parameters")
    ax.plot(demand_ratio, token_ratio, "-", label="training tokens")
    ax.plot(demand_ratio, flops_ratio, "-", label="lifetime FLOPs")
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="lifetime inference tokens / Chinchilla-optimal training tokens",
           ylabel="inference-aware optimum / Chinchilla-style model",
           title=f"Inference-aware optimum at loss {loss:.4g} ({law_source})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def repeated_runs(path, budgets, panels: dict[str, list[np.ndarray] | str], title: str):
    """panels: label -> per-budget samples, or a short string saying why the quantity is unavailable."""
    fig = Figure(figsize=(3.6 * len(panels), 3.8))
    positions = np.arange(len(budgets))
    for i, (label, samples) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.set_title(label, fontsize=9)
        if isinstance(samples, str):
            ax.text(0.5, 0.5, samples, ha="center", va="center", transform=ax.transAxes, color="0.35")
            ax.set_yticks([])
        else:
            ax.boxplot(samples, positions=positions, widths=0.5, showfliers=False)
            for p, values in zip(positions, samples):
                jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
                ax.plot(p + jitter, values, ".", color="steelblue", alpha=0.6)
            ax.grid(True, axis="y", alpha=0.3)
        ax.set_xlim(-0.6, len(budgets) - 0.4)
        ax.set_xticks(positions, [f"{b:.3g}" for b in budgets])
        ax.set_xlabel("token budget")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(path))
