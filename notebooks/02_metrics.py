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
# # 2. Measuring translation: BLEU, chrF, TER and ROUGE
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/notebooks/02_metrics.ipynb)
#
# Before training anything we need a way to say whether one set of translations is better than
# another. Asking people is the gold standard and far too slow for a training loop, so machine
# translation relies on automatic metrics that compare a system's output (the *hypothesis*) with
# a human translation (the *reference*). This chapter takes the four metrics the book reports
# apart, computes each on small examples with `mtlib.metrics`, and says what they cannot see.

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
dataset = "multi30k"               # "multi30k" (en/de shipped; fr/cs downloaded), a local path or a Hub id
dataset_revision = None            # Hub dataset commit/tag to pin (None: newest)
src_lang = "en"                    # source language
tgt_lang = "de"                    # target language
n_examples = 5                     # example rows to show

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Markdown, display

from mtlib import chapter, data, metrics, plots, prompts

params = chapter.header("02_metrics", globals())
src, tgt = prompts.language_name(src_lang), prompts.language_name(tgt_lang)

# %% [markdown]
# ## BLEU
#
# BLEU (Papineni et al., 2002) asks how many of the hypothesis's word n-grams, for n = 1 to 4,
# also occur in the reference. For each order n the **modified n-gram precision** counts the
# hypothesis's n-grams that match, *clipping* each n-gram's count at the number of times it
# occurs in the reference (so "the the the the" cannot score by repeating a common word), and
# divides by the number of n-grams in the hypothesis. On a corpus the counts are summed over all
# sentences before dividing:
#
# $$
# p_n = \frac{\sum_{s}\sum_{g \in \text{n-grams}(h_s)} \min\big(\text{count}_{h_s}(g),\ \text{count}_{r_s}(g)\big)}
#            {\sum_{s}\sum_{g \in \text{n-grams}(h_s)} \text{count}_{h_s}(g)}
# $$
#
# Precision alone rewards saying little: a one-word hypothesis that matches has a precision of
# 100%. BLEU therefore multiplies the geometric mean of the four precisions by a **brevity
# penalty** that punishes a corpus output of total length $c$ shorter than the reference length $r$:
#
# $$
# \mathrm{BP} = \begin{cases} 1 & \text{if } c > r \\ e^{\,1 - r/c} & \text{if } c \le r \end{cases}
# \qquad\qquad
# \mathrm{BLEU} = \mathrm{BP} \cdot \exp\Big(\sum_{n=1}^{4} \tfrac{1}{4} \log p_n\Big)
# $$
#
# There is no recall term: a long hypothesis full of extra words is punished only through its
# precisions.
#
# ### A worked example: "Today the"
#
# Take the reference *"Today the weather is sunny"* (five words) and the truncated hypothesis
# *"Today the"*. Both of its unigrams and its one bigram occur in the reference, so $p_1 = 2/2$ and
# $p_2 = 1/1$; it has no trigram or 4-gram at all.

# %%
hyp, ref = ["Today the"], ["Today the weather is sunny"]
metrics.bleu_breakdown(hyp, ref)

# %% [markdown]
# Perfect precision, yet the output is useless: this is exactly what the brevity penalty is for.
# With $c = 2$ and $r = 5$:
#
# $$ \mathrm{BP} = e^{1 - 5/2} = e^{-1.5} \approx 0.223 $$

# %%
bp = metrics.brevity_penalty(2, 5)
scores = metrics.corpus_scores(hyp, ref)
sentence = metrics.sentence_scores(hyp, ref)
pd.DataFrame({
    "value": [bp, sentence["bleu"].iloc[0], scores["bleu"]],
}, index=["brevity penalty (c=2, r=5)", "sentence BLEU (effective order)", "corpus BLEU (orders 1-4)"]).round(3)

# %% [markdown]
# The two BLEU numbers differ, and both are right. *Corpus* BLEU always uses all four orders; with
# no 3-gram or 4-gram its geometric mean has a zero factor and the score is 0. *Sentence* BLEU, as
# used for the GRPO reward in chapter 4, uses the *effective order* (only the orders the sentence
# has) and smooths zero counts, so it gives $0.223 \times \sqrt{1 \cdot 1} = 22.3$: a perfect
# precision scaled down by the brevity penalty. The curve shows how fast the penalty falls once an
# output is shorter than its reference:

# %%
plots.brevity_penalty_curve([(2 / 5, '"Today the"'), (0.9, "10% short")])

# %% [markdown]
# ## Why SacreBLEU
#
# BLEU's value depends on details that papers rarely reported: how the text is tokenized
# (is "house." one token or two?), whether case matters, how zero counts are smoothed, how many
# references there are. Differences in these choices move scores by more than a point, more than
# many claimed improvements (Post, 2018). **SacreBLEU** fixes one standard implementation, always
# scores *detokenized* text with its own tokenizer, and prints a **signature** that records every
# choice, so a number can be reproduced or at least compared honestly. `mtlib.metrics` reports
# SacreBLEU's defaults and keeps the signatures next to the scores:

# %%
pd.DataFrame({"signature": {k: scores[k] for k in ("bleu_signature", "chrf_signature", "ter_signature")}})

# %% [markdown]
# Reading the BLEU signature: one reference (`nrefs:1`), case-sensitive (`case:mixed`), no
# effective order (`eff:no`, a corpus score), the `13a` tokenizer (the WMT standard, which splits
# punctuation from words), exponential smoothing and the SacreBLEU version.
#
# ## chrF: characters instead of words
#
# chrF (Popović, 2015) computes an F-score over **character** n-grams (n = 1 to 6, spaces
# removed), averaging precision $\mathrm{chrP}$ and recall $\mathrm{chrR}$ over the orders and
# weighting recall $\beta = 2$ times as much as precision:
#
# $$ \mathrm{chrF}_\beta = (1 + \beta^2)\,\frac{\mathrm{chrP}\cdot\mathrm{chrR}}{\beta^2\,\mathrm{chrP} + \mathrm{chrR}} $$
#
# Because it matches pieces of words, a word with the wrong ending still earns most of its
# characters, where BLEU counts it simply as wrong. chrF correlates better with human judgements
# than BLEU for morphologically rich languages (those whose words take many inflected forms), and it
# is defined for every sentence without smoothing.
#
# ## TER: how many edits
#
# The Translation Edit Rate (Snover et al., 2006) counts the edits (insertions, deletions,
# substitutions and *shifts* of whole phrases) needed to turn the hypothesis into the reference,
# per reference word:
#
# $$ \mathrm{TER} = \frac{\#\text{edits}}{\#\text{reference words}} \times 100 $$
#
# Lower is better, and it can exceed 100 when the hypothesis is much longer than the reference.
#
# ## ROUGE: the summarization view
#
# ROUGE (Lin, 2004) was built for summaries, and it is recall-oriented: ROUGE-N is the overlap of
# n-grams between hypothesis and reference, ROUGE-L uses the **longest common subsequence** (words
# in the same order, not necessarily adjacent). We report the F1 of ROUGE-1, ROUGE-2 and ROUGE-L,
# averaged over sentences:
#
# $$ R_\mathrm{LCS} = \frac{\mathrm{LCS}(h, r)}{|r|},\quad P_\mathrm{LCS} = \frac{\mathrm{LCS}(h, r)}{|h|},\quad
#    F_\mathrm{LCS} = \frac{2\,P_\mathrm{LCS}\,R_\mathrm{LCS}}{P_\mathrm{LCS} + R_\mathrm{LCS}} $$
#
# Two settings differ from the `rouge_score` package's defaults because the target language need not
# be English: no stemming (its stemmer is English's) and a Unicode tokenizer that keeps letters outside
# a–z (accents, umlauts, háčeks) inside their words.
#
# ## The metrics side by side
#
# One reference from the test set (the first of 8 to 14 words) and six hypotheses made from it by
# rule (`data.variants`): the exact reference, its longest word with one letter dropped (what a
# wrong ending looks like), that word left out, the first half only, the two halves swapped (every
# word kept), and the source sentence left untranslated.

# %%
pairs = data.load_pairs(dataset, src_lang=src_lang, tgt_lang=tgt_lang, revision=dataset_revision)
source, reference = data.example_pair(pairs["test"], src_lang, tgt_lang)
hypotheses = data.variants(source, reference)
examples = metrics.sentence_scores(list(hypotheses.values()), [reference] * len(hypotheses))
examples.insert(0, "case", list(hypotheses))
examples["rougeL"] = [metrics.rouge_scores([h], [reference])["rougeL"] for h in hypotheses.values()]
table = examples.drop(columns="ref").set_index("case")
chapter.readable(table, {"hyp": "hypothesis"}).round(1)

# %% tags=["remove-input"]
lost = table.loc["exact", ["bleu", "chrf"]] - table[["bleu", "chrf"]]
display(Markdown(
    f"Dropping one letter costs **{lost.loc['one letter dropped', 'bleu']:.1f}** BLEU points and "
    f"**{lost.loc['one letter dropped', 'chrf']:.1f}** chrF points: BLEU counts the word as wrong in every n-gram "
    f"that contains it, chrF still matches most of its character n-grams. Swapping the halves keeps every word and "
    f"loses **{lost.loc['halves swapped', 'bleu']:.1f}** BLEU points, because the n-grams across the cut no longer "
    f"match (chrF: **{lost.loc['halves swapped', 'chrf']:.1f}**); TER, which counts a shift of a whole phrase as one "
    f"edit, gives it **{table.loc['halves swapped', 'ter']:.1f}**. The untranslated {src} source still gets "
    f"**{table.loc['untranslated', 'chrf']:.1f}** chrF from the characters it shares with the {tgt} reference."))

# %% [markdown]
# A paraphrase, a correct translation in other words, is missing from the table because no rule
# writes one; sharing few words with the single reference, it can score below the broken variants
# above. None of the metrics knows what a sentence *means*.
#
# ## BLEU's limits
#
# * **One reference.** Multi30k has one translation per sentence; every other correct translation
#   is penalised. Scores are comparable only on the same test set with the same references.
# * **Surface only.** BLEU sees matching strings, not meaning: a negation dropped ("not") costs one
#   unigram, the same as a dropped article.
# * **Corpus-level.** BLEU is designed for a whole test set; on one sentence it is noisy and needs
#   smoothing. Differences of a point or less between systems can be chance, which is why chapter
#   5 tests them with paired bootstrap resampling.
# * **Not comparable across languages or tokenizations.** A BLEU of 35 into one language and a BLEU
#   of 35 into another are not the same quality; and a score without its signature cannot be
#   compared at all.
#
# A trivial baseline makes the point concrete: "translating" the test set by copying the source
# sentence scores what names, numbers and words spelt alike in both languages earn.

# %%
test = pairs["test"]
copy_scores = metrics.corpus_scores(test[src_lang], test[tgt_lang])
chapter.show_scores(pd.DataFrame([{k: copy_scores[k] for k in ("bleu", "chrf", "ter", "rouge1", "rougeL", "bp")}],
                                 index=pd.Index(["copy the source"], name="system")))

# %% [markdown]
# ## Reading a BLEU score
#
# With those caveats, practitioners use rough bands for corpus BLEU. They describe typical
# news-like text with one reference and are only a guide. A simple, regular corpus such as Multi30k
# sits high on this scale: in the WMT 2017 and 2018 multimodal translation tasks the best systems
# scored roughly between 30 and 55 BLEU on its test sets, depending on the language pair and test set
# (Elliott et al., 2017; Barrault et al., 2018). Those scores were computed on lowercased, tokenized
# text, so they are not directly comparable with the SacreBLEU scores of this book.

# %%
metrics.bleu_bands().set_index("bleu")[["interpretation"]]
