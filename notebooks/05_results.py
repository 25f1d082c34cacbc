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
# chapter 4, on every test set. It then asks whether the differences are larger than chance and what
# each stage cost, and closes with a discussion written from the runs: which system wins where, by how
# much, sentence by sentence, and what the numbers cannot say.

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
runs_root = None                   # this build's runs folder (None: Google Drive if mounted, else ./runs)
build_id = None                    # read only this build's runs (set by the book runner; None: every run)
n_bootstrap = 1000                 # paired-bootstrap resamples per comparison
n_examples = 5                     # translations to show side by side

# %% tags=["hide-input"]
from IPython.display import Markdown, display

from mtlib import chapter, discussion, plots, results

params = chapter.header("05_results", globals())
runs = results.load_runs(runs_root, build_id=build_id)
if runs.empty:
    display(chapter.no_runs_notice(runs_root, build_id))
elif (random_weights := chapter.random_model(runs)) is not None:
    display(chapter.notice({"model": random_weights}))
if (stale := chapter.stale_grpo_notice(runs_root, build_id=build_id)) is not None:
    display(stale)

# %% [markdown]
# ## Scores per system and test set
#
# The newest evaluation of each system on each test set. BLEU, chrF and ROUGE: higher is better;
# TER: lower is better.

# %%
scores = chapter.latest_scores(runs_root, build_id=build_id)
chapter.show_scores(scores)

# %%
if scores is not None:
    display(plots.score_bars(scores.reset_index(), metrics=("bleu", "chrf", "ter"), system="system", group="split"))

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
# Wall-clock time and peak memory (GPU memory on CUDA, resident memory on CPU) of the runs behind the
# tables above: the training runs of SFT and GRPO, and the evaluations (translating and scoring one test
# set each). A chapter executed again within the same build replaces its earlier runs, which are not counted.

# %%
cost, per_stage, superseded = chapter.run_costs(runs_root, build_id=build_id)
if superseded:
    display(Markdown(f"{superseded} earlier run(s) of this build, replaced by a later execution of their chapter, "
                     "are not counted."))
cost.round(2)

# %%
per_stage.round(2)

# %% [markdown]
# ## Discussion
#
# What the tables above say, written from this build's runs: every number, verdict and example below is
# computed from the run records and their stored translations when the chapter runs. Per system and test
# set: the BLEU band of chapter 2 (a rough reading of corpus BLEU), the **length ratio** (output length over
# reference length; below 1, BLEU's brevity penalty applies) and the **untranslated copies**, outputs that
# repeat the source sentence instead of translating it (an instruct model that ignores the instruction does
# this).

# %%
translations = discussion.newest_translations(runs)
src_lang, tgt_lang = discussion.language_pair(runs)
stats = discussion.system_stats(runs, translations)
discussion.overview_table(stats)

# %%
Markdown(discussion.findings(stats, significance, src_lang, tgt_lang))

# %% [markdown]
# ### Sentence by sentence
#
# A corpus score can hide as many losses as wins. Scored one sentence at a time with chrF (which, unlike
# BLEU, stays informative on a single sentence), each comparison counts the sentences a system wins and
# loses against its baseline, on every test set; the examples are, on the main test set, the sentences
# where each system gains and loses most.

# %%
wins = discussion.sentence_wins(runs, translations)
display(Markdown(discussion.wins_summary(wins)))
discussion.wins_table(wins)

# %%
discussion.sentence_examples(runs, translations, split="test", k=1)

# %% [markdown]
# ### Limitations
#
# What these numbers cannot tell: how much a second training would change them, whether they mean anything
# at all (a smoke build), and how they relate to the BLEU scores published for Multi30k. The first table
# lists the training seed(s) behind each trained system; the second scores the same translations as most
# Multi30k papers did.

# %%
comparison = discussion.comparability(runs, translations)
seeds = discussion.seed_summary(runs)
display(Markdown(discussion.limitations(runs, seeds, comparison, tgt_lang)))
display(discussion.seeds_table(seeds))
comparison

# %% [markdown]
# ## Damaged run records
#
# A run record that cannot be read (a file cut short by a crash or a full disk, or edited by hand) is
# left out of every table above, with a warning naming the file. They are listed here.

# %%
damaged = results.damaged_records(runs_root, build_id=build_id)
damaged if len(damaged) else Markdown("None: every run record of this build was read.")
