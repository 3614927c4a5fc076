"""The evaluation's plots: accuracy against normalized cost per rule (`accuracy_cost.png`) and
the escalation rate by step (`escalation_by_step.png`), each labelled with the data's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["finish_plot", "plot_rule_curves", "write_plots"]


def plot_rule_curves(ax, points: pd.DataFrame, **style) -> None:
    """One accuracy-vs-cost curve per rule (a lone point for a rule with one operating point)."""
    for rule, group in points.groupby("rule", sort=False):
        group = group.sort_values("cost_normalized")
        marker = "o" if len(group) == 1 else "o-"
        ax.plot(group.cost_normalized, group.accuracy, marker, label=rule, markersize=4, **style)


def write_plots(points: pd.DataFrame, results: pd.DataFrame, folder: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    plot_rule_curves(ax, points)
    finish_plot(
        fig,
        ax,
        "cost / large-only cost",
        "accuracy",
        f"Accuracy vs cost — {label}",
        folder / "accuracy_cost.png",
    )

    fig, ax = plt.subplots(figsize=(7, 4))
    routed = results[~results.rule.isin(["small_only", "large_only"])]
    for rule, group in routed.groupby("rule", sort=False):
        steps = group.steps.to_numpy()
        width = int(steps.max()) if len(steps) else 0
        escalated, total = np.zeros(width), np.zeros(width)
        for n, marked in zip(group.steps, group.escalated_steps, strict=True):
            total[:n] += 1
            escalated[list(marked)] += 1
        rate = np.divide(escalated, total, out=np.zeros(width), where=total > 0)
        ax.plot(np.arange(width), rate, "o-", label=rule, markersize=3)
    finish_plot(
        fig,
        ax,
        "step index",
        "escalation rate (all operating points)",
        f"Escalation by step — {label}",
        folder / "escalation_by_step.png",
    )


def finish_plot(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
