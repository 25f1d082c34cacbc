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

# %%
# On Colab, install the book's library first (elsewhere it is already installed); no restart needed.
import os
import subprocess
import sys

if "google.colab" in sys.modules or any(k.startswith("COLAB_") for k in os.environ):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "mtlib @ git+https://github.com/mt-finetuning-book/mt-finetuning-book"], check=True)

# %% tags=["parameters"]
profile = None                     # name of the profile the runner used (display only)
runs_root = "runs"                 # the runs folder of this build
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
chapter.show_scores(scores)

# %%
plots.score_bars(scores.reset_index(), metrics=("bleu", "chrf", "ter"), system="system", group="split")

# %% [markdown]
# ## Are the gains real?
#
# A test set is a sample, and a difference of a BLEU point can come from which sentences happened to be
# in it. **Paired bootstrap resampling** (Koehn, 2004), computed exactly as `sacrebleu --paired-bs` does
# (WMT's practice), redraws the test set with replacement `n_bootstrap` times and scores both systems
# on each redraw (the *same* sentences for both, hence *paired*). The test is **two-sided**: it asks
# whether the systems *differ*, not whether the newer one wins, so a clearly worse system is caught as
# well as a clearly better one. Its *p*-value is (*c* + 1) / (*N* + 1), where *c* counts the redraws
# whose centred absolute difference exceeds the observed one, so it is never below 1 / (*N* + 1). The
# 95% interval of the difference comes from the same redraws.
#
# We compare SFT and GRPO with the base model, and GRPO with SFT, on every test set and for BLEU, chrF
# and TER: a dozen or more tests at once, and at the 5% level about one in twenty would come out
# "significant" by chance alone. The **Holm** correction (Holm, 1979) adjusts every *p*-value of the
# table for the size of the family, and the verdict uses the adjusted value: **better** or **worse**
# (for TER a lower score is better) when it is below 0.05, otherwise **no significant difference**.
# The translations come from the runs; the signatures under the table record the metrics' settings,
# the number of redraws and the seed.

# %%
significance = chapter.significance(runs, n_bootstrap)
if len(significance):
    chapter.show_significance(significance)
else:
    display(Markdown("No paired runs found: no two systems translated the same test sentences."))

# %%
if len(significance):
    main = significance[(significance["test set"] == "test") & (significance["metric"] == "BLEU")]
    words = {"better": "better than", "worse": "worse than", "no significant difference": "no significant difference from"}
    lines = [f"* **{r['comparison']}**: BLEU {r['delta']:+.2f}, 95% CI {r['95% CI']}, p = {r['p']:.4f} "
             f"(Holm-adjusted {r['Holm-adjusted p']:.4f}): {r['comparison'].split(' vs ')[0]} is "
             f"**{words[r['verdict']]}** {r['comparison'].split(' vs ')[1]}"
             for _, r in main.iterrows()]
    display(Markdown("On the main test set, at the 5% level after Holm's correction:\n\n" + "\n".join(lines)))

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
