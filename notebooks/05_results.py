# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Results
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/notebooks/05_results.ipynb)
#
# Every training and evaluation in this book left a run record: its configuration, scores,
# translations, timings and peak memory. This chapter reads the records of this build and puts the
# systems side by side: the untouched base model, the SFT model of chapter 3 and the GRPO model of
# chapter 4, on every test set. It then asks whether the differences are larger than chance, and what
# each stage cost.

# %% tags=["remove-cell"]
# On Colab: fetch the book's repository and install its library (elsewhere it is already
# installed). Generated from pyproject.toml by `make sync`; no runtime restart needed.
import os
import subprocess
import sys

if "google.colab" in sys.modules or any(k.startswith("COLAB_") for k in os.environ):
    repo, folder = "https://github.com/mt-finetuning-book/mt-finetuning-book", "/content/mt-finetuning-book"
    if not os.path.isdir(folder):
        subprocess.run(["git", "clone", "--depth", "1", repo, folder], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", folder + ""], check=True)
    sys.path.insert(0, folder)

# %% tags=["parameters"]
profile = None                     # name of the profile the runner used (display only)
runs_root = None                   # the runs folder of this build (None: Google Drive if mounted, else ./runs)
n_bootstrap = 1000                 # paired-bootstrap resamples per comparison
n_examples = 5                     # translations to show side by side

# %%
import pandas as pd
from IPython.display import Markdown, display

from mtlib import chapter, plots, results

params = chapter.header("05_results", globals())
runs = results.load_runs(runs_root)
if runs.empty:
    raise RuntimeError(f"no finished runs under {runs_root!r}: run chapters 3 and 4 first")
if chapter.runs_are_smoke(runs):
    display(chapter.notice({"model": chapter.TINY_MODEL}))

# %% [markdown]
# ## Scores per system and test set
#
# The newest evaluation of each system on each test set. BLEU, chrF and ROUGE: higher is better;
# TER: lower is better.

# %%
scores = chapter.latest_scores(runs_root)
scores.round(2)

# %%
plots.score_bars(scores.reset_index(), metrics=("bleu", "chrf", "ter"), system="system", group="split")

# %% [markdown]
# ## Are the gains real?
#
# A test set is a sample, and a difference of a BLEU point can come from which sentences happened to be
# in it. **Paired bootstrap resampling** (Koehn, 2004) redraws the test set with replacement many times,
# scores both systems on each redraw (the *same* sentences for both, hence *paired*), and counts how
# often the newer system fails to beat the other. That share is a one-sided $p$-value; the 2.5th and
# 97.5th percentiles of the redrawn differences give a 95% interval. We compare SFT and GRPO with the
# base model, and GRPO with SFT, on every test set, using the translations stored in the runs.

# %%
significance = chapter.significance(runs, n_bootstrap)
significance.set_index(["comparison", "split", "metric"]).round(3) if len(significance) else "no paired runs found"

# %%
if len(significance):
    main = significance[(significance["split"] == "test") & (significance["metric"] == "bleu")]
    lines = [f"* **{r['comparison']}**: BLEU {r['delta']:+.2f} (p = {r['p']:.3f}) — "
             f"{'significant' if r['significant (p < 0.05)'] else 'not significant'} at the 5% level"
             for _, r in main.iterrows()]
    display(Markdown("On the main test set:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Translations side by side
#
# The first sentences of the main test set as each system translated them.

# %%
chapter.stored_side_by_side(runs, split="test", n=n_examples)

# %% [markdown]
# ## What each stage cost
#
# Wall-clock time and peak memory (GPU memory on CUDA, resident memory on CPU) of every run: the
# training runs of SFT and GRPO, and the evaluations (translating and scoring one test set each).

# %%
all_runs = results.load_runs(runs_root, include_unscored=True)
all_runs["kind"] = all_runs["split"].map(lambda s: "training" if s is None or pd.isna(s) else f"evaluation: {s}")
cost = all_runs[["stage", "kind", "seconds", "peak_mem_gb"]].rename(columns={"peak_mem_gb": "peak memory (GB)"})
cost.set_index(["stage", "kind"]).round(2)

# %%
per_stage = cost.groupby("stage", sort=False).agg(runs=("seconds", "size"), seconds=("seconds", "sum"),
                                                  peak_gb=("peak memory (GB)", "max"))
per_stage.round(2)
