"""Figures for the chapters: brevity penalty, training curves, score bars. Each returns a matplotlib Figure."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import matplotlib.patches
from matplotlib.figure import Figure

from .errors import DataError


def brevity_penalty_curve(points: Sequence[tuple[float, str]] = ()) -> Figure:
    """BLEU's brevity penalty against the length ratio c/r, with optional marked points ``(ratio, label)``."""
    ratio = np.linspace(0.05, 1.5, 300)
    bp = np.where(ratio >= 1, 1.0, np.exp(1 - 1 / ratio))
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.plot(ratio, bp, color="C0")
    for r, label in points:
        y = 1.0 if r >= 1 else math.exp(1 - 1 / r)
        ax.plot([r], [y], "o", color="C3")
        ax.annotate(f"{label}\nBP = {y:.3f}", (r, y), textcoords="offset points", xytext=(8, -24), fontsize=8)
    ax.set_xlabel("output length / reference length (c / r)")
    ax.set_ylabel("brevity penalty")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def log_history_frame(log_history: Sequence[dict]) -> pd.DataFrame:
    """A Trainer's ``state.log_history`` (list of dicts) as a DataFrame of the training-step rows."""
    df = pd.DataFrame(list(log_history))
    if df.empty or "step" not in df:
        raise DataError("the training log is empty: no step was logged (is logging_steps larger than num_steps?)")
    return df


def training_curves(log_history: Sequence[dict] | pd.DataFrame, columns: Sequence[str],
                    title: str = "", ncols: int = 2) -> Figure:
    """One small panel per logged quantity (``loss``, ``reward``, ``rewards/bleu_reward/mean`` ...) against the step.

    Columns the log does not hold are left out; a log holding none of them raises DataError.
    """
    df = log_history if isinstance(log_history, pd.DataFrame) else log_history_frame(log_history)
    present = [c for c in columns if c in df and df[c].notna().any()]
    if not present:
        raise DataError(f"the training log has none of {list(columns)}; it has {sorted(df.columns)}")
    ncols = min(ncols, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows))
    for i, col in enumerate(present):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        rows = df[["step", col]].dropna()
        ax.plot(rows["step"], rows[col], marker="o" if len(rows) < 30 else None, ms=3)
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def score_bars(table: pd.DataFrame, metrics: Sequence[str] = ("bleu", "chrf", "rougeL"),
               system: str = "system", group: str | None = "split") -> Figure:
    """Grouped bars: one panel per metric, one bar per system (and per ``group`` value, e.g. test set)."""
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    if table.empty or not metrics:
        raise DataError("no scores to plot: the table is empty or has none of the metric columns")
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    groups = list(dict.fromkeys(table[group])) if group and group in table else [None]
    systems = list(dict.fromkeys(table[system]))
    width = 0.8 / len(systems)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        x = np.arange(len(groups))
        for j, name in enumerate(systems):
            vals = []
            for g in groups:
                rows = table[(table[system] == name) & ((table[group] == g) if g is not None else True)]
                vals.append(float(rows[metric].iloc[-1]) if len(rows) else np.nan)
            bars = ax.bar(x + (j - (len(systems) - 1) / 2) * width, vals, width, label=str(name))
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(x, [str(g) if g is not None else "" for g in groups], rotation=15, fontsize=8)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def speedup_bars(table: pd.DataFrame) -> Figure:
    """Fast recipe's throughput as a multiple of the seed recipe's, per stage (log scale)."""
    rows = table.dropna(subset=["vs_seed"])
    if rows.empty:
        raise DataError("the benchmark table has no recipe to compare with the seed recipe")
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot()
    labels = [f"{s}\n{r} ({b})" for s, r, b in zip(rows.stage, rows.recipe, rows.batch)]
    bars = ax.barh(labels, rows.vs_seed, color=[f"C{i}" for i in range(len(rows))])
    ax.bar_label(bars, labels=[f"{v:g}x" for v in rows.vs_seed], padding=3, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("throughput relative to the seed recipe (log scale)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def path_times(table: pd.DataFrame, target: float | None = None) -> Figure:
    """Seconds to translate 1,000 sentences per decoding path (``process``, ``decoder``, ``batch`` columns),
    coloured by process, with the target as a dashed line."""
    if table.empty:
        raise DataError("no translation paths to plot")
    processes = list(dict.fromkeys(table.process))
    fig = Figure(figsize=(7.5, 0.32 * len(table) + 1.2))
    ax = fig.add_subplot()
    runs = table["run"] if "run" in table else [""] * len(table)
    labels = [f"{r + ': ' if r else ''}{d} (batch {b})" for r, d, b in zip(runs, table.decoder, table.batch)]
    colors = [f"C{processes.index(p)}" for p in table.process]
    bars = ax.barh(range(len(table)), table.seconds_1000, color=colors)
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    ax.bar_label(bars, labels=[f"{v:g} s" for v in table.seconds_1000], padding=3, fontsize=8)
    if target is not None:
        ax.axvline(target, color="black", ls="--", lw=1)
        ax.text(target, -0.9, f" target {target:g} s", fontsize=8, va="bottom")
    handles = [matplotlib.patches.Patch(color=f"C{i}", label=p) for i, p in enumerate(processes)]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_xlabel("seconds for 1,000 sentences x 64 new tokens")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def step_phases(phases: pd.DataFrame) -> Figure:
    """Stacked bars of seconds per training step by phase, one bar per row (``bench.grpo_phases``)."""
    parts = [c for c in phases.columns if c not in ("seconds_per_step", "completions_per_s")]
    if phases.empty or not parts:
        raise DataError("no step phases to plot")
    fig = Figure(figsize=(8, 0.5 * len(phases) + 1.5))
    ax = fig.add_subplot()
    left = np.zeros(len(phases))
    for i, col in enumerate(parts):
        values = phases[col].to_numpy(dtype=float)
        bars = ax.barh(range(len(phases)), values, left=left, color=f"C{i}", label=col)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], label_type="center", fontsize=8)
        left += values
    ax.set_yticks(range(len(phases)), [f"batch {s}" for s in phases.index], fontsize=8)
    ax.set_xlabel("seconds per GRPO step")
    ax.legend(fontsize=8, ncols=len(parts), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
