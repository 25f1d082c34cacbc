"""Figures for the chapters: brevity penalty, training curves, score bars, GPU benchmarks. Each returns a
matplotlib Figure sized for the book's page.

A chapter shows a figure at most about 700 px wide (``chapter.show_figures``: 110 dpi, scaled down to the
page). Figures here are at most ``PAGE_WIDTH`` inches wide, so they are shown at about their natural
size, and no text is smaller than ``MIN_FONT`` points; a figure of several panels has one panel a row, each
the page's width. Titles and axis labels are words, not log keys (:func:`log_label` translates TRL's keys).

Every figure carries a caption and an alt text (:func:`describe`, read back by :func:`caption_of` and
:func:`alt_text`): the functions here write both from what they drew; a figure made elsewhere gets an alt text
derived from its titles and axis labels. ``chapter.show_figures`` puts them into the notebook output's metadata,
and the book runner turns them into the page's ``<img alt>`` and figure caption.
"""
from __future__ import annotations

import functools
import math
import re
import textwrap
from typing import Sequence

import matplotlib
import matplotlib.lines
import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from .errors import DataError

PAGE_WIDTH = 7.0   # inches: the widest figure, shown at ~700 px without shrinking its text below MIN_FONT
MIN_FONT = 10      # points, at that width
MAX_COLUMNS = 1    # panels per row: one, each the width of the page
STYLE = {"font.size": MIN_FONT, "axes.titlesize": 11, "axes.labelsize": MIN_FONT, "xtick.labelsize": MIN_FONT,
         "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT, "legend.title_fontsize": MIN_FONT,
         "figure.titlesize": 12, "axes.grid": True, "grid.alpha": 0.3}


def _styled(fn):
    """Build the figure under the book's style (font sizes, grid); the text keeps its sizes afterwards."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _figure(height: float, width: float = PAGE_WIDTH) -> Figure:
    return Figure(figsize=(min(width, PAGE_WIDTH), height), layout="constrained")


def _fmt(value: float) -> str:
    """A value for an alt text: three significant digits (``7.69``, ``0.0002``, ``1.2e-06``)."""
    return f"{value:.3g}" if np.isfinite(value) else "none"


def series(names: Sequence[str]) -> str:
    """Names as prose: "a", "a and b", "a, b and c"."""
    names = [str(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _lower_first(text: str) -> str:
    """"Training loss" -> "training loss" inside a sentence; "KL divergence", "BLEU" stay as they are."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def describe(fig: Figure, caption: str | None = None, alt: str | None = None) -> Figure:
    """Give ``fig`` a caption (shown under it in the book) and an alt text (what a screen reader says, and
    what a reader sees when the image cannot load); returns ``fig``. Either left None keeps what it had."""
    if caption is not None:
        fig.mtlib_caption = " ".join(str(caption).split())
    if alt is not None:
        fig.mtlib_alt = " ".join(str(alt).split())
    return fig


def caption_of(fig: Figure) -> str:
    """The figure's caption: the one :func:`describe` gave it, else its title (the suptitle or the first
    panel's title); "" when it has none."""
    caption = getattr(fig, "mtlib_caption", None)
    if caption:
        return caption
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    if not title:
        title = next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    return " ".join(title.split())


def alt_text(fig: Figure) -> str:
    """The figure's alt text: the one :func:`describe` gave it, else one written from its titles and axis
    labels ("Figure with 2 panels: Training loss (loss against training step); ..."). Never empty."""
    alt = getattr(fig, "mtlib_alt", None)
    if alt:
        return alt
    panels = []
    for ax in fig.axes:
        title, x, y = (" ".join(t.split()) for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()))
        axes = f"{y} against {x}" if x and y else (x or y)
        panels.append(f"{title} ({axes})" if title and axes else title or axes)
    panels = [p for p in panels if p]
    head = caption_of(fig) or "Figure"
    if not panels:
        return head
    what = f"{len(fig.axes)} panels" if len(fig.axes) > 1 else "one panel"
    return f"{head}. Chart with {what}: {'; '.join(panels)}."


def _sizes(ax) -> None:
    """Explicit tick-label sizes (ticks made when the figure is drawn, outside the style, keep them)."""
    ax.tick_params(labelsize=MIN_FONT)
    ax.xaxis.get_offset_text().set_fontsize(MIN_FONT)
    ax.yaxis.get_offset_text().set_fontsize(MIN_FONT)


# ---------------------------------------------------------------------------------------- log keys in words

REWARD_NAMES = {"bleu": "BLEU", "chrf": "chrF", "length": "length", "length_penalty": "length", "ter": "TER"}

LOG_LABELS = {  # a Trainer's log key -> (panel title, y-axis label)
    "loss": ("Training loss", "loss"),
    "train_loss": ("Training loss", "loss"),
    "eval_loss": ("Validation loss", "loss"),
    "learning_rate": ("Learning rate", "learning rate"),
    "grad_norm": ("Gradient norm", "L2 norm (before clipping)"),
    "entropy": ("Mean token entropy", "nats per token"),
    "mean_token_accuracy": ("Token accuracy", "share of tokens right"),
    "num_tokens": ("Tokens seen", "tokens"),
    "epoch": ("Epoch", "epochs"),
    "step_time": ("Time per step", "seconds"),
    "reward": ("Mean total reward", "sum of rewards"),
    "reward_std": ("Spread of the total reward", "standard deviation"),
    "frac_reward_zero_std": ("Share of groups with equal rewards", "share of groups"),
    "kl": ("KL divergence from the reference model", "nats per token"),
    "completions/mean_length": ("Mean completion length", "tokens"),
    "completions/min_length": ("Shortest completion", "tokens"),
    "completions/max_length": ("Longest completion", "tokens"),
    "completions/clipped_ratio": ("Share of completions cut at the length limit", "share of completions"),
    "completions/mean_terminated_length": ("Mean length of completions that ended", "tokens"),
    "clip_ratio/region_mean": ("Share of tokens with a clipped ratio", "share of tokens"),
    "clip_ratio/low_mean": ("Share of tokens clipped below", "share of tokens"),
    "clip_ratio/high_mean": ("Share of tokens clipped above", "share of tokens"),
}
SHARE_KEYS = {"frac_reward_zero_std", "completions/clipped_ratio", "mean_token_accuracy"}  # plotted on 0..1


def _words(key: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[/_]+", " ", key)).strip()


def log_label(key: str) -> tuple[str, str]:
    """A panel title and a y-axis label in words for a Trainer log key: ``rewards/bleu/mean`` -> ("Mean BLEU
    reward", "reward (0 to 1)"), ``frac_reward_zero_std`` -> ("Share of groups with equal rewards", "share
    of groups"). Unknown keys get their words without ``/`` and ``_``."""
    if key in LOG_LABELS:
        return LOG_LABELS[key]
    m = re.fullmatch(r"rewards/(.+)/(mean|std)", key)
    if m:
        raw = re.sub(r"_reward$", "", m.group(1))
        name = REWARD_NAMES.get(raw, _words(raw))
        if m.group(2) == "mean":
            return f"Mean {name} reward", "reward (0 to 1)" if raw in REWARD_NAMES else "reward"
        return f"Spread of the {name} reward", "standard deviation"
    words = _words(key)
    return words[:1].upper() + words[1:], words


TEST_SET_LABELS = {"test": "test (2016 Flickr)", "test_2016_flickr": "2016 Flickr", "test_2017_flickr": "2017 Flickr",
                   "test_2017_mscoco": "2017 MSCOCO", "test_2018_flickr": "2018 Flickr", "validation": "validation"}


def test_set_name(split: str) -> str:
    """A test set in words (``test_2017_mscoco`` -> "2017 MSCOCO"); another name as given."""
    return TEST_SET_LABELS.get(split, split)


METRIC_LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                 "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
LOWER_IS_BETTER = {"ter"}


def _grid(n: int, ncols: int, row_height: float) -> tuple[Figure, list]:
    """``n`` panels, at most ``MAX_COLUMNS`` to a row (one), each filling the page width."""
    ncols = max(1, min(ncols, MAX_COLUMNS, n))
    nrows = math.ceil(n / ncols)
    fig = _figure(row_height * nrows)
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


@_styled
def brevity_penalty_curve(points: Sequence[tuple[float, str]] = ()) -> Figure:
    """BLEU's brevity penalty against the length ratio c/r, with optional marked points ``(ratio, label)``."""
    ratio = np.linspace(0.05, 1.5, 300)
    bp = np.where(ratio >= 1, 1.0, np.exp(1 - 1 / ratio))
    fig = _figure(3.4, 6.0)
    ax = fig.add_subplot()
    ax.plot(ratio, bp, color="C0")
    for r, label in points:
        y = 1.0 if r >= 1 else math.exp(1 - 1 / r)
        ax.plot([r], [y], "o", color="C3")
        ax.annotate(f"{label}\nBP = {y:.3f}", (r, y), textcoords="offset points", xytext=(8, -30),
                    fontsize=MIN_FONT)
    ax.set_xlabel("output length / reference length (c / r)")
    ax.set_ylabel("brevity penalty")
    ax.set_title("BLEU's brevity penalty")
    ax.set_ylim(0, 1.05)
    _sizes(ax)
    marked = "; ".join(f"{label}: ratio {r:g}, penalty {1.0 if r >= 1 else math.exp(1 - 1 / r):.3f}"
                       for r, label in points)
    return describe(fig, "BLEU's brevity penalty against the ratio of output length to reference length."
                    + (" The points mark the examples of the text." if points else ""),
                    "Line chart of BLEU's brevity penalty (0 to 1) against output length divided by reference "
                    "length (0 to 1.5): the penalty is 1 from a ratio of 1 on and falls ever more steeply "
                    "below it." + (f" Marked points: {marked}." if marked else ""))


def log_history_frame(log_history: Sequence[dict]) -> pd.DataFrame:
    """A Trainer's ``state.log_history`` (list of dicts) as a DataFrame of the training-step rows."""
    df = pd.DataFrame(list(log_history))
    if df.empty or "step" not in df:
        raise DataError("the training log is empty: no step was logged (is logging_steps larger than num_steps?)")
    return df


@_styled
def training_curves(log_history: Sequence[dict] | pd.DataFrame, columns: Sequence[str],
                    title: str = "", ncols: int = 2) -> Figure:
    """One panel per logged quantity (``loss``, ``reward``, ``rewards/bleu/mean`` ...) against the optimizer
    step, one panel a row (``ncols`` is capped at ``MAX_COLUMNS``), titled and labelled in words
    (:func:`log_label`), whole-number steps. Its caption names the quantities; its alt text gives each one's
    first and last value.

    Columns the log does not hold are left out; a log holding none of them raises DataError.
    """
    df = log_history if isinstance(log_history, pd.DataFrame) else log_history_frame(log_history)
    present = [c for c in columns if c in df and df[c].notna().any()]
    if not present:
        raise DataError(f"the training log has none of {list(columns)}; it has {sorted(df.columns)}")
    fig, axes = _grid(len(present), ncols, 2.3)
    described = []
    for ax, col in zip(axes, present):
        rows = df[["step", col]].dropna()
        ax.plot(rows["step"], rows[col], marker="o" if len(rows) < 30 else None, ms=4)
        name, unit = log_label(col)
        ax.set_title(name)
        ax.set_ylabel(unit)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
        if col in SHARE_KEYS:
            ax.set_ylim(-0.05, 1.05)
        _sizes(ax)
        first, last = rows.iloc[0], rows.iloc[-1]
        described.append(f"{name}, in {unit}: {_fmt(float(first[col]))} at step {int(first['step'])}, "
                         f"{_fmt(float(last[col]))} at step {int(last['step'])}")
    if title:
        fig.suptitle(title)
    names = series([_lower_first(log_label(c)[0]) if i else log_label(c)[0] for i, c in enumerate(present)])
    steps = f"{int(df['step'].min())} to {int(df['step'].max())}"
    return describe(fig, f"{title + ': ' if title else ''}{names}, by training step.",
                    f"{len(present)} line chart{'s' if len(present) > 1 else ''}, one a row, against the training "
                    f"step ({steps}). " + "; ".join(described) + ".")


def _test_set_label(split) -> str:
    return TEST_SET_LABELS.get(split, _words(str(split))) if split is not None else ""


@_styled
def score_bars(table: pd.DataFrame, metrics: Sequence[str] = ("bleu", "chrf", "rougeL"),
               system: str = "system", group: str | None = "split") -> Figure:
    """Horizontal bars, one panel per metric (one a row), one bar per system within each test set
    (``group``), its value at the end of the bar, and one legend of the systems above the panels."""
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    if table.empty or not metrics:
        raise DataError("no scores to plot: the table is empty or has none of the metric columns")
    groups = list(dict.fromkeys(table[group])) if group and group in table else [None]
    systems = list(dict.fromkeys(table[system]))
    bar = 0.8 / len(systems)
    # each bar ~0.22 in tall (room for its 10 pt value), plus a gap between test sets and the axis text
    row_height = len(groups) * (len(systems) * 0.22 + 0.15) + 1.0
    fig, axes = _grid(len(metrics), MAX_COLUMNS, row_height)
    y = np.arange(len(groups))
    handles = []
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        top = 0.0
        for j, name in enumerate(systems):
            vals = []
            for g in groups:
                rows = table[(table[system] == name) & ((table[group] == g) if g is not None else True)]
                vals.append(float(rows[metric].iloc[-1]) if len(rows) else np.nan)
            bars = ax.barh(y + (j - (len(systems) - 1) / 2) * bar, vals, bar, color=f"C{j}", label=str(name))
            ax.bar_label(bars, fmt="%.1f", padding=3, fontsize=MIN_FONT)
            top = max(top, np.nanmax(vals) if not np.all(np.isnan(vals)) else 0.0)
            if i == 0:
                handles.append(bars)
        ax.set_xlim(0, top * 1.25 if top > 0 else 1)  # room for the values
        ax.set_yticks(y)
        if i % MAX_COLUMNS == 0:  # the test-set names on the left panels only: every panel has the same rows
            ax.set_yticklabels([_test_set_label(g) for g in groups])
        else:
            ax.tick_params(labelleft=False)
        ax.invert_yaxis()  # first test set and first system on top
        label = METRIC_LABELS.get(metric, _words(metric))
        ax.set_title(f"{label} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
        ax.set_xlabel("edits per 100 reference words" if metric == "ter" else f"{label} score (0-100)")
        ax.grid(axis="y", visible=False)
        _sizes(ax)
    fig.legend(handles=handles, labels=[str(s) for s in systems], loc="outside upper center", ncols=len(systems),
               title="system", frameon=False)
    names = [METRIC_LABELS.get(m, _words(m)) for m in metrics]
    sets = [_test_set_label(g) for g in groups if g is not None]
    return describe(fig, f"{series(names)} of each system" + (f" on each test set" if sets else "")
                    + " (the values are those of the score table).",
                    f"Horizontal bar charts, one a row, of {series(names)}"
                    + (f" on the test sets {series(sets)}" if sets else "")
                    + f", one bar per system ({series(systems)}), each bar labelled with its value.")


@_styled
def speedup_bars(table: pd.DataFrame) -> Figure:
    """Fast recipe's throughput as a multiple of the seed recipe's, per stage (log scale)."""
    rows = table.dropna(subset=["vs_seed"])
    if rows.empty:
        raise DataError("the benchmark table has no recipe to compare with the seed recipe")
    fig = _figure(0.45 * len(rows) + 1.2)
    ax = fig.add_subplot()
    labels = [f"{s}: {r} (batch {b})" for s, r, b in zip(rows.stage, rows.recipe, rows.batch)]
    bars = ax.barh(labels, rows.vs_seed, color=[f"C{i}" for i in range(len(rows))])
    ax.bar_label(bars, labels=[f"{v:g}x" for v in rows.vs_seed], padding=3, fontsize=MIN_FONT)
    ax.set_xscale("log")
    ax.set_xlim(0.8, rows.vs_seed.max() * 2.5)  # from below 1x, with room for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("throughput relative to the seed recipe (log scale)")
    ax.set_title("Speed-up of each recipe over the seed recipe")
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    _sizes(ax)
    return describe(fig, "Throughput of each recipe as a multiple of the seed recipe's (log scale).",
                    "Horizontal bar chart on a log scale, one bar per recipe and stage: "
                    + "; ".join(f"{label}: {v:g} times the seed recipe" for label, v in zip(labels, rows.vs_seed))
                    + ".")


@_styled
def path_times(table: pd.DataFrame, target: float | None = None) -> Figure:
    """Seconds to translate 1,000 sentences per decoding path (``process``, ``decoder``, ``batch`` columns),
    coloured by process, with the target as a dashed line."""
    if table.empty:
        raise DataError("no translation paths to plot")
    processes = list(dict.fromkeys(table.process))
    runs = table["run"] if "run" in table else [""] * len(table)
    labels = [textwrap.fill(f"{r + ': ' if r else ''}{d} (batch {b})", 40)
              for r, d, b in zip(runs, table.decoder, table.batch)]
    lines = max(label.count("\n") + 1 for label in labels)
    fig = _figure((0.1 + 0.16 * lines) * len(table) + 1.4)
    ax = fig.add_subplot()
    colors = [f"C{processes.index(p)}" for p in table.process]
    bars = ax.barh(range(len(table)), table.seconds_1000, color=colors)
    ax.set_yticks(range(len(table)), labels)
    for text in ax.bar_label(bars, labels=[f"{v:g} s" for v in table.seconds_1000], padding=3, fontsize=MIN_FONT):
        text.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 0.5})  # readable across the target line
    ax.set_xlim(0, table.seconds_1000.max() * 1.2)
    if target is not None:
        ax.axvline(target, color="black", ls="--", lw=1)
    handles = [matplotlib.patches.Patch(color=f"C{i}", label=p) for i, p in enumerate(processes)]
    if target is not None:
        handles.append(matplotlib.lines.Line2D([], [], color="black", ls="--", lw=1, label=f"target: {target:g} s"))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 3), frameon=False)
    ax.set_xlabel("seconds for 1,000 sentences x 64 new tokens")
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    _sizes(ax)
    fastest, slowest = table.seconds_1000.idxmin(), table.seconds_1000.idxmax()
    flat = [" ".join(label.split()) for label in labels]
    where = list(table.index)
    return describe(fig, "Seconds to translate 1,000 sentences on each decoding path"
                    + (f", against the target of {target:g} s (dashed line)." if target is not None else "."),
                    f"Horizontal bar chart of {len(table)} decoding paths, coloured by process "
                    f"({series(processes)}): from {table.seconds_1000[fastest]:g} s ({flat[where.index(fastest)]}) "
                    f"to {table.seconds_1000[slowest]:g} s ({flat[where.index(slowest)]})"
                    + (f"; a dashed line marks the target of {target:g} s." if target is not None else "."))


def shape_name(shape: str) -> str:
    """A GRPO breakdown's shape in words: ``"32x4"`` -> ``"batch 32 × 4"``, ``"seed"`` -> ``"seed recipe"``."""
    return "seed recipe" if shape == "seed" else f"batch {shape.replace('x', ' × ')}"


@_styled
def step_phases(phases: pd.DataFrame) -> Figure:
    """Stacked bars of seconds per training step by phase, one bar per row (``bench.grpo_phases``)."""
    parts = [c for c in phases.columns if c not in ("seconds_per_step", "completions_per_s")]
    if phases.empty or not parts:
        raise DataError("no step phases to plot")
    fig = _figure(0.55 * len(phases) + 1.9)
    ax = fig.add_subplot()
    left = np.zeros(len(phases))
    for i, col in enumerate(parts):
        values = phases[col].to_numpy(dtype=float)
        bars = ax.barh(range(len(phases)), values, left=left, color=f"C{i}", label=_words(str(col)))
        ax.bar_label(bars, labels=[f"{v:.1f}" if v >= 0.3 else "" for v in values], label_type="center",
                     fontsize=MIN_FONT)
        left += values
    names = [shape_name(s) for s in phases.index]
    ax.set_yticks(range(len(phases)), names)
    ax.set_xlabel("seconds per GRPO step")
    fig.legend(loc="outside upper center", ncols=min(len(parts), 2), frameon=False)
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    _sizes(ax)
    totals = phases[parts].sum(axis=1)
    return describe(fig, "Seconds per GRPO step, split into its phases, for each batch size.",
                    f"Stacked horizontal bar chart, one bar per batch size, split into {series(_words(str(c)) for c in parts)}: "
                    + "; ".join(f"{b}: {t:.1f} s per step" for b, t in zip(names, totals)) + ".")
