"""mtlib.plots: figures a reader can read at page width (~700 px): one panel a row, no text under 10 pt at
that width, titles and labels in words, whole-number steps, bar labels that do not collide, and a caption and
an alt text (in words, from what was drawn) on every figure."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from mtlib import bench, plots
from mtlib.errors import DataError

PAGE_PX = 700            # the book's page width
CSS_PX_PER_IN = 96       # a figure this wide (7.29 in) is shown at its natural size

GRPO_KEYS = ["reward", "rewards/bleu/mean", "rewards/length/mean", "frac_reward_zero_std",
             "completions/mean_length", "loss"]


def grpo_log(steps=3):
    """A log like TRL's GRPOTrainer writes (the smoke build's, keys included), then its end-of-training row."""
    rng = np.random.default_rng(0)
    rows = [{"loss": 1e-6 * rng.random(), "grad_norm": 0.7, "learning_rate": 5e-6, "num_tokens": 360.0 * s,
             "completions/mean_length": 24.0, "completions/clipped_ratio": 1.0, "rewards/bleu/mean": 0.01 * s,
             "rewards/bleu/std": 0.0, "rewards/length/mean": 0.9, "rewards/length/std": 0.02, "reward": 0.9,
             "reward_std": 0.02, "frac_reward_zero_std": 0.0, "entropy": 6.9, "clip_ratio/region_mean": 0.0,
             "kl": 0.0, "step_time": 1.1, "epoch": 0.03 * s, "step": s} for s in range(1, steps + 1)]
    return rows + [{"train_runtime": 3.0, "train_loss": 5e-7, "epoch": 0.09, "step": steps}]


def sft_log(steps=6):
    return [{"loss": 7.7 - 0.01 * s, "grad_norm": 0.8, "learning_rate": 2e-4 * s / steps, "entropy": 6.9,
             "num_tokens": 656.0 * s, "mean_token_accuracy": 0.0, "epoch": 0.04 * s, "step": s}
            for s in range(1, steps + 1)]


def score_table():
    rows = []
    for system, gain in (("base", 0), ("sft", 10), ("grpo", 11)):
        for split, shift in (("test", 0), ("test_2017_flickr", -3), ("test_2017_mscoco", -6), ("test_2018_flickr", -4)):
            rows.append({"system": system, "split": split, "bleu": 20 + gain + shift, "chrf": 45 + gain + shift,
                         "ter": 70 - gain - shift})
    return pd.DataFrame(rows)


def drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def texts(fig):
    """The figure's visible, non-empty texts as drawn: tick labels only of the ticks inside the view (matplotlib
    keeps spare tick objects outside it, never drawn)."""
    drawn(fig)
    tick_labels, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels |= {id(tick.label1), id(tick.label2)}
            for tick in axis._update_ticks():  # the ticks matplotlib draws
                shown += [tick.label1, tick.label2]
    others = [t for t in fig.findobj(Text) if id(t) not in tick_labels]
    return [t for t in others + shown if t.get_visible() and t.get_text().strip()]


def assert_readable_at_page_width(fig):
    """Shown at most PAGE_PX wide, the figure's text is at least 10 pt; it is no wider than the page."""
    renderer = drawn(fig)
    width_in = fig.get_tightbbox(renderer).width  # what bbox_inches="tight" saves
    assert width_in <= PAGE_PX / CSS_PX_PER_IN, f"{width_in:.2f} in wide"  # 7.29 in
    shrink = min(1.0, PAGE_PX / (width_in * CSS_PX_PER_IN))
    small = [(t.get_text(), t.get_fontsize()) for t in texts(fig) if t.get_fontsize() * shrink < 10 - 1e-6]
    assert not small, small
    for ax in fig.axes:
        assert ax.get_subplotspec().get_gridspec().ncols == 1, "one panel a row, each the page's width"


def assert_described(fig, *words):
    """A caption and an alt text, in words (no log keys), that say what the figure shows."""
    caption, alt = plots.caption_of(fig), plots.alt_text(fig)
    assert caption and caption.endswith(".") and len(caption) >= 20, caption
    assert alt and len(alt) >= 40 and alt != caption, alt
    assert not any(key in alt for key in ("rewards/", "frac_reward", "_")), alt
    for word in words:
        assert word in alt, (word, alt)


def assert_no_overlapping_text(fig):
    renderer = drawn(fig)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
    clashes = [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    assert not clashes, clashes


def whole_number_ticks(ax):
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return ticks and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("log,keys,steps", [(grpo_log(3), GRPO_KEYS, 3), (grpo_log(60), GRPO_KEYS, 60),
                                            (sft_log(6), ["loss", "learning_rate", "grad_norm"], 6)])
def test_training_curves_read_at_page_width(log, keys, steps):
    fig = plots.training_curves(log, keys, title="GRPO", ncols=3)  # asking for 3 a row still gets 1
    assert len(fig.axes) == len(keys)
    assert_readable_at_page_width(fig)
    assert_no_overlapping_text(fig)
    assert_described(fig, "training step", f"at step {steps}", plots.log_label(keys[0])[0])
    assert plots.caption_of(fig).startswith("GRPO: ")
    for ax in fig.axes:
        title = ax.get_title()
        assert title and "/" not in title and "_" not in title
        assert ax.get_ylabel() and "/" not in ax.get_ylabel() and "_" not in ax.get_ylabel()
        assert ax.get_xlabel() == "training step"
        assert whole_number_ticks(ax), ax.get_xticks()  # no step 1.5
    assert fig.axes[0].get_title() in ("Mean total reward", "Training loss")


def test_training_curves_titles_in_words():
    titles = [ax.get_title() for ax in plots.training_curves(grpo_log(3), GRPO_KEYS).axes]
    assert titles == ["Mean total reward", "Mean BLEU reward", "Mean length reward",
                      "Share of groups with equal rewards", "Mean completion length", "Training loss"]
    share = plots.training_curves(grpo_log(3), ["frac_reward_zero_std"]).axes[0]
    assert share.get_ylabel() == "share of groups" and share.get_ylim()[0] < 0 < 1 < share.get_ylim()[1]


def test_every_logged_key_has_words():
    keys = {k for row in grpo_log(2) + sft_log(2) for k in row} | {"rewards/chrf_reward/mean", "rewards/my_fn/std",
                                                                   "some/new_key"}
    for key in keys:
        title, ylabel = plots.log_label(key)
        assert title and ylabel and not set("/_") & set(title + ylabel), (key, title, ylabel)
    assert plots.log_label("rewards/bleu/mean") == ("Mean BLEU reward", "reward (0 to 1)")
    assert plots.log_label("rewards/chrf_reward/mean")[0] == "Mean chrF reward"
    assert plots.log_label("some/new_key")[0] == "Some new key"


def test_training_curves_missing_columns():
    with pytest.raises(DataError, match="none of"):
        plots.training_curves(sft_log(3), ["reward"])
    with pytest.raises(DataError, match="empty"):
        plots.training_curves([], ["loss"])


@pytest.mark.parametrize("table", [score_table(), score_table().query("split == 'test'"),
                                   score_table().query("system != 'grpo'")])
def test_score_bars_labels_do_not_collide(table):
    fig = plots.score_bars(table, metrics=("bleu", "chrf", "ter"))
    assert_readable_at_page_width(fig)
    assert_no_overlapping_text(fig)
    renderer = drawn(fig)
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:  # the legend sits outside every panel
        assert not legend.overlaps(ax.get_window_extent(renderer))
        assert "_" not in ax.get_title() and ax.get_xlabel()
        assert all("_" not in t.get_text() for t in ax.get_yticklabels())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(dict.fromkeys(table.system))
    assert [ax.get_title() for ax in fig.axes] == ["BLEU (higher is better)", "chrF (higher is better)",
                                                   "TER (lower is better)"]
    assert_described(fig, "BLEU, chrF and TER", *dict.fromkeys(table.system))
    for ax in fig.axes:  # one panel a row: each panel names its test sets
        assert [t.get_text() for t in ax.get_yticklabels()] == [plots.TEST_SET_LABELS[s]
                                                                for s in dict.fromkeys(table.split)]


def test_score_bars_values_are_the_table():
    table = score_table()
    fig = plots.score_bars(table, metrics=("bleu",))
    widths = sorted(round(p.get_width(), 6) for p in fig.axes[0].patches)
    assert widths == sorted(float(v) for v in table.bleu)


def test_benchmark_figures_read_at_page_width():
    table = bench.speedup_table(bench.load_rows(["h100_run6.json"]))
    paths = pd.DataFrame(bench.load_rows("h100_translate_paths.json"))
    for fig, words in ((plots.speedup_bars(table), ["times the seed recipe"]),
                       (plots.path_times(paths, target=5), ["target of 5 s"]),
                       (plots.step_phases(bench.grpo_phases("h100_grpo_breakdown.json")), ["per step"]),
                       (plots.brevity_penalty_curve([(0.8, "short"), (1.1, "long")]), ["short: ratio 0.8"])):
        assert_readable_at_page_width(fig)
        assert_no_overlapping_text(fig)
        assert_described(fig, *words)


def test_a_figure_made_elsewhere_gets_an_alt_text_from_its_titles_and_labels():
    from matplotlib.figure import Figure
    fig = Figure()
    ax = fig.add_subplot()
    ax.set_title("Sentence length")
    ax.set_xlabel("words")
    ax.set_ylabel("sentences")
    assert plots.caption_of(fig) == "Sentence length"
    assert plots.alt_text(fig) == "Sentence length. Chart with one panel: Sentence length (sentences against words)."
    assert plots.alt_text(Figure()) == "Figure"  # never empty
    plots.describe(fig, caption="Lengths of the training sentences.", alt="A histogram of sentence lengths.")
    assert (plots.caption_of(fig), plots.alt_text(fig)) == ("Lengths of the training sentences.",
                                                            "A histogram of sentence lengths.")
