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
# photograph was translated into German by a professional translator, which makes Multi30k small,
# clean and very regular: short, literal descriptions of people, animals and things doing
# everyday actions. That regularity is what lets a 3-billion-parameter model adapt to it in a few
# minutes of training, and it is also the reason results on Multi30k say little about
# translating news, law or conversation.
#
# This chapter loads the corpus, shows a few pairs and measures it: how many sentences, words and
# distinct words each split holds, and how long English and German sentences are.

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

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from mtlib import chapter, data

params = chapter.header("01_data", globals())

# %% [markdown]
# ## Loading the corpus
#
# `mtlib.data.load_pairs` reads the official Multi30k release, which ships with the book for English
# and German (other languages are downloaded from the official repository on first use), and returns a
# `DatasetDict` with one text column per language. Its splits are `train`, `validation` and `test`
# (the *test 2016 Flickr* set), plus three later test sets (2017 Flickr, 2017 MS COCO and 2018
# Flickr) under their own names. The copy on the Hugging Face Hub (`bentrevett/multi30k`) has only the
# first three; any other folder or file of sentence pairs works too.

# %%
pairs = data.load_pairs(dataset, src_lang=src_lang, tgt_lang=tgt_lang, revision=dataset_revision)
pd.DataFrame({"pairs": {name: len(split) for name, split in pairs.items()}})

# %% [markdown]
# A few training pairs, as the model will see them: the English caption is the source, the German
# caption the reference translation.

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
# ## What the numbers say about English and German

# %%
en, de = overall.loc[src_lang], overall.loc[tgt_lang]
display(Markdown(
    f"Across the whole corpus a {tgt_lang} sentence has **{de['mean_words']:.1f}** words on average against "
    f"**{en['mean_words']:.1f}** in {src_lang}, but its words are longer (**{de['mean_word_len']:.2f}** "
    f"characters against **{en['mean_word_len']:.2f}**), and the {tgt_lang} side uses "
    f"**{de['types'] / en['types']:.2f}×** as many distinct words ({int(de['types']):,} against "
    f"{int(en['types']):,})."))

# %% [markdown]
# This is the familiar shape of German next to English. German writes compounds as one word
# (*Straßenmusiker*, "street musician"), so it needs fewer, longer words for the same content.
# It also inflects articles, adjectives and nouns for case, gender and number (*ein kleiner Hund*,
# *einen kleinen Hund*, *mit einem kleinen Hund*), so one English word maps to several German
# forms: the German vocabulary is larger and more of it is rare. For a translation model this
# means that getting the *form* right (agreement, case endings) is a large part of the task, and
# for BLEU, which rewards exact word matches, it means a wrong ending costs as much as a wrong word.
# chrF, which matches character n-grams, is more forgiving there (chapter 2).
#
# ## Sentence lengths
#
# Multi30k sentences are short: most captions have between 8 and 16 words. The histograms show the
# training split; the two languages overlap closely, German a little shorter in words.

# %%
data.length_histogram(pairs, split="train", langs=[src_lang, tgt_lang])

# %% [markdown]
# The longest sentences matter for the training set-up: they fix how many tokens a training
# example can need (`max_seq_length`) and how long a translation may be (`max_new_tokens`).
# Chapter 4 measures lengths in model tokens rather than words.

# %%
lengths = pd.DataFrame({lang: pd.Series([len(s.split()) for s in pairs["train"][lang]]).describe(
    percentiles=[0.5, 0.9, 0.99]) for lang in (src_lang, tgt_lang)})
lengths.round(1)
