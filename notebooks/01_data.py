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
# # 1. The data: Multi30k
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/notebooks/01_data.ipynb)
#
# Everything in this book learns from, and is judged against, one corpus: **Multi30k**, the
# multilingual extension of the Flickr30k image-description data set. Each English caption of a
# photograph was translated by people into other languages, which makes Multi30k small,
# clean and very regular: short, literal descriptions of people, animals and things doing
# everyday actions. That regularity is what lets a 3-billion-parameter model adapt to it in a few
# minutes of training, and it is also the reason results on Multi30k say little about
# translating news, law or conversation.
#
# This chapter loads the corpus, shows a few pairs and measures it: how many sentences, words and
# distinct words each split holds, and how long the sentences of the two languages are.

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
n_examples = 5                     # example pairs to show

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from mtlib import chapter, data, prompts

params = chapter.header("01_data", globals())
src, tgt = prompts.language_name(src_lang), prompts.language_name(tgt_lang)

# %% [markdown]
# ## Loading the corpus
#
# `mtlib.data.load_pairs` reads the official Multi30k release, which ships with the book for the default
# language pair (the other languages are downloaded from the official repository on first use), and returns a
# `DatasetDict` with one text column per language. Its splits are `train`, `validation` and `test`
# (the *test 2016 Flickr* set), plus three later test sets (2017 Flickr, 2017 MS COCO and 2018
# Flickr) under their own names. The copy on the Hugging Face Hub (`bentrevett/multi30k`) has only the
# first three; any other folder or file of sentence pairs works too.

# %%
pairs = data.load_pairs(dataset, src_lang=src_lang, tgt_lang=tgt_lang, revision=dataset_revision)
chapter.readable(pd.DataFrame({"pairs": {name: len(split) for name, split in pairs.items()}}).rename_axis("split"))

# %% tags=["remove-input"]
display(Markdown(f"A few training pairs, as the model will see them: the {src} caption is the source, "
                 f"the {tgt} caption the reference translation."))

# %%
pairs["train"].select(range(n_examples)).to_pandas()

# %% [markdown]
# ## How big, how varied
#
# `corpus_stats` counts, per split and language, the sentences, the running words (*tokens*,
# split on whitespace), the distinct words (*types*), the type–token ratio (types / tokens: how
# varied the vocabulary is), the share of types seen only once (*hapax legomena*), the mean word
# length in characters and the mean and maximum sentence length in words. The `overall` rows pool
# every split.

# %%
stats = data.corpus_stats(pairs)
overall = stats[stats["split"] == "overall"].set_index("lang")
chapter.readable(overall.drop(columns="split")).round(3)

# %% [markdown]
# The same measures per split. The test sets are small, so their type–token ratios are higher
# than the training set's: a ratio shrinks as a text grows, because common words keep repeating
# while new words become rarer.

# %%
chapter.readable(stats[stats["split"] != "overall"].set_index(["split", "lang"])).round(3)

# %% [markdown]
# ## What the numbers say about the two languages

# %% tags=["remove-input"]
display(Markdown(data.compare_languages(stats, src_lang, tgt_lang)))

# %% [markdown]
# Two properties of a language show in such numbers. *Compounding* (several words written as one)
# gives fewer, longer words for the same content. *Inflection* (articles, adjectives, nouns and verbs
# that change form for gender, number or case) turns one source word into several target forms,
# which enlarges the vocabulary and makes more of it rare. Where the target side has the larger
# vocabulary, getting the *form* right (agreement, endings) is a large part of the task, and BLEU,
# which rewards exact word matches, charges a wrong ending as much as a wrong word. chrF, which
# matches character n-grams, is more forgiving there (chapter 2).
#
# ## Sentence lengths
#
# Multi30k sentences are short captions. The histograms show how many words the sentences of the
# training split have in each language; the table after them gives the percentiles.

# %%
data.length_histogram(pairs, split="train", langs=[src_lang, tgt_lang])

# %% [markdown]
# The longest sentences matter for the training set-up: they fix how many tokens a training
# example can need (`max_seq_length`) and how long a translation may be (`max_new_tokens`).
# Chapter 4 measures lengths in model tokens rather than words.

# %%
data.length_percentiles(pairs, split="train", langs=[src_lang, tgt_lang]).round(1)
