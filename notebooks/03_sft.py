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
# # 3. Supervised fine-tuning with QLoRA
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/notebooks/03_sft.ipynb)
#
# An instruct model such as Llama-3.2-3B-Instruct already translates when asked. This chapter measures
# how well, then teaches it the task from Multi30k's reference translations: *supervised fine-tuning*
# (SFT), the model learning to predict the reference word by word. Two techniques make this fit on a
# single free Colab GPU: the base model is stored in **4 bits**, and only small **LoRA** adapters are
# trained. Together they are called **QLoRA**.

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
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", folder + "[gpu]"], check=True)
    sys.path.insert(0, folder)

# %% tags=["parameters"]
profile = None                     # name of the profile the runner used (display only)
model = "meta-llama/Llama-3.2-3B-Instruct"  # Hub id or local path; "tiny": tiny random model,
                                            # "twin:<id>": that model's shape with random weights
model_revision = None              # Hub model commit/tag to pin (None: newest)
dataset = "multi30k"               # "multi30k" (en/de shipped; fr/cs downloaded), a local path or a Hub id
dataset_revision = None            # Hub dataset commit/tag to pin (None: newest)
src_lang = "en"                    # source language
tgt_lang = "de"                    # target language
runs_root = None                   # where run records (config, scores, translations, adapter) go
                                   # (None: Google Drive if mounted, else ./runs)
build_id = None                    # the build these runs belong to (set by the book runner; None: no build)
seed = 3407                        # seed for the data sample, LoRA initialisation and training
max_seq_length = 512               # longest training example, in tokens
load_in_4bit = True                # QLoRA: base weights in 4 bits (CUDA only)
lora_r = 16                        # LoRA rank
lora_alpha = 16                    # LoRA alpha (the update is scaled by alpha / r)
lora_dropout = 0.0                 # dropout on the LoRA branch
train_size = None                  # training pairs (None: all 29,000)
test_size = None                   # sentences per test set (None: all)
num_steps = 200                    # optimizer steps
batch_size = 4                     # per-device batch size
grad_accum = 4                     # gradient accumulation steps (effective batch: batch_size x grad_accum)
lr = 2e-4                          # peak learning rate
warmup_steps = 5                   # linear warm-up steps
weight_decay = 0.01                # AdamW weight decay
lr_scheduler = "linear"            # learning-rate schedule after warm-up
logging_steps = 1                  # log the loss every N steps
num_gpus = 1                       # GPUs, data-parallel (1: this process; "auto": every visible GPU)
gradient_checkpointing = True      # recompute activations in the backward pass (saves memory, costs time)
padding_free = None                # batches without pad tokens (None: the backend decides)
group_by_length = False            # batch examples of similar length (less padding)
eval_batch_size = 64               # sentences translated per batch
fast_decode = False                # decode with a merged bf16 copy of the model (mtlib.fastgen)
max_new_tokens = 128               # longest translation, in tokens
n_examples = 5                     # translations to show side by side

# %% tags=["hide-input"]
import mtlib.modeling as modeling  # first: on a GPU it imports Unsloth before transformers/trl
import pandas as pd
from IPython.display import Markdown, display

from mtlib import chapter, data, plots, prompts

params = chapter.header("03_sft", globals())

# %% [markdown]
# ## Two ideas that make a 3B model trainable on one GPU
#
# **4-bit quantization.** In 16-bit precision, the 3.2 billion weights of Llama-3.2-3B take about
# 6.4 GB, and full fine-tuning needs several times that for gradients and optimizer state. QLoRA
# (Dettmers et al., 2023) stores the frozen base weights in 4 bits using the *NormalFloat* (NF4) data
# type, whose 16 levels are placed at the quantiles of a normal distribution, the shape trained
# weights roughly follow. Each block of 64 weights keeps its own scale, and the scales are themselves
# quantized (*double quantization*). At every matrix multiplication the block is dequantized to 16
# bits on the fly, so the arithmetic stays in bfloat16 while the memory is about a quarter.
#
# **LoRA.** Instead of updating a weight matrix $W \in \mathbb{R}^{d \times k}$, LoRA (Hu et al., 2021)
# freezes it and learns a low-rank correction:
#
# $$ W' = W + \frac{\alpha}{r}\, B A, \qquad B \in \mathbb{R}^{d \times r},\ A \in \mathbb{R}^{r \times k},\ r \ll \min(d, k) $$
#
# $A$ starts random and $B$ starts at zero, so training begins exactly at the base model. With rank
# $r = 16$ a $3072 \times 3072$ attention projection gains $2 \cdot 16 \cdot 3072 \approx 98$ thousand
# trainable numbers instead of 9.4 million. The adapters sit on every attention projection (`q`, `k`,
# `v`, `o`) and every MLP projection (`gate`, `up`, `down`); gradients flow through the frozen 4-bit
# weights into them, and only they, a few tens of megabytes, are saved.
#
# ## The data
#
# The training split, optionally subsampled, and every test set the source provides (the Hub copy has
# one, the raw release four), each optionally cut to its first `test_size` sentences.

# %%
pairs, splits = chapter.chapter_pairs(params)
chapter.readable(pd.DataFrame({"pairs": {name: len(pairs[name]) for name in ["train", *splits]}}).rename_axis("split"))

# %% [markdown]
# ## The base model
#
# `mtlib.modeling.load_model` loads the model with Unsloth's 4-bit kernels on a CUDA GPU, and with
# plain `transformers` elsewhere. The Hugging Face token, needed for the gated Llama weights, comes
# from the environment or Colab's secrets, never from a parameter.

# %%
model_path = chapter.resolve_model(model, runs_root, texts=data.sentences(pairs["train"], [src_lang, tgt_lang]))
base, tokenizer = modeling.load_model(model_path, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit,
                                      revision=model_revision)
pd.DataFrame({"value": {
    "model": model, "backend": modeling.backend_of(base), "parameters": f"{modeling.trainable_summary(base)['total']:,}",
    "memory footprint (GB)": round(base.get_memory_footprint() / 1e9, 3), "4-bit": load_in_4bit}})

# %% [markdown]
# ## The baseline: translating before any training
#
# Greedy decoding with the same system prompt the fine-tuned model will see (it asks for the
# translation only, shown below), on every test set. These scores are what fine-tuning has to beat; each
# evaluation is stored as a run so that chapter 5 can compare all systems.

# %% tags=["remove-input"]
display(Markdown(f"The system prompt: *{prompts.system_prompt(tgt_lang, src_lang)}*"))

# %%
baseline = chapter.evaluate_splits(modeling.TrainedModel(base, tokenizer, stage="base", base_name=model),
                                pairs, params, name="base")
chapter.show_scores(chapter.scores_frame({"base": baseline}))

# %% [markdown]
# ## Adding the adapters
#
# `add_lora` wraps the model with rank-`lora_r` adapters on the seven projection types of every layer.
# The table shows how small the trainable share is.

# %%
peft_model = modeling.add_lora(base, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, seed=seed,
                               gradient_checkpointing=gradient_checkpointing)
summary = modeling.trainable_summary(peft_model)
pd.DataFrame({"value": {"trainable parameters": f"{summary['trainable']:,}", "all parameters": f"{summary['total']:,}",
                        "trainable share": f"{100 * summary['share']:.3f}%"}})

# %% [markdown]
# ## What one training example looks like
#
# Each pair becomes a three-turn chat: the system prompt, the source sentence as the user's turn, and
# the reference translation as the assistant's answer, rendered with Llama's chat template. The loss is
# computed on the assistant's answer only: the model is not trained to predict the prompt, which is the
# same in every example.

# %%
example = prompts.sft_messages(pairs["train"][0][src_lang], pairs["train"][0][tgt_lang], tgt_lang, src_lang)
print(tokenizer.apply_chat_template(example, tokenize=False))

# %% [markdown]
# ## Training
#
# TRL's `SFTTrainer` with AdamW (8-bit on a GPU), a linear warm-up and the schedule from the
# parameters. With gradient accumulation the effective batch is `batch_size × grad_accum` examples per
# optimizer step. The run folder keeps the configuration, the loss log, checkpoints and the adapter.
#
# **On several GPUs** (`num_gpus: 2`, or `auto`, in the profile) the same call trains *data-parallel*:
# `mtlib.parallel` starts one process per GPU with `accelerate launch`, each holds a copy of the 4-bit
# model and a different share of every batch, and their gradients are averaged before each optimizer
# step. Each GPU keeps the per-GPU batch, so the effective batch is `batch_size × grad_accum × num_gpus`
# at the same learning rate: to keep the one-GPU recipe, divide `batch_size` or `grad_accum` by the
# number of GPUs in the profile. The table says what this run does; the run record keeps it
# (`num_processes`, and `parallel` in its `config.json`). The evaluations below split each test set
# across the GPUs the same way.

# %%
sft_params = chapter.sft_params(params)
chapter.batch_table(sft_params, params, "sft")

# %%
sft = chapter.run_sft(peft_model, tokenizer, pairs["train"], sft_params, params, config=chapter.run_config(params))
plots.training_curves(chapter.log_history(sft), ["loss", "learning_rate", "grad_norm"], title="SFT training")

# %% [markdown]
# ## Evaluating the fine-tuned model
#
# The same test sets, the same greedy decoding, now with the adapters.

# %%
finetuned = chapter.evaluate_splits(sft, pairs, params, name="sft")
scores = chapter.scores_frame({"base": baseline, "sft": finetuned})
chapter.show_scores(scores)

# %%
gain = scores.xs("sft") - scores.xs("base")
display(Markdown(f"On the main test set, fine-tuning changed BLEU by **{gain.loc['test', 'bleu']:+.2f}** points and "
                 f"chrF by **{gain.loc['test', 'chrf']:+.2f}** (TER: {gain.loc['test', 'ter']:+.2f}, lower is better)."))

# %% [markdown]
# ### ROUGE
#
# ROUGE measures overlap from the reference's side (recall-oriented); it tells the same story in
# different units, and shows whether the gains come from single words (ROUGE-1) or from longer
# stretches in the right order (ROUGE-2, ROUGE-L).

# %%
chapter.show_scores(scores[["rouge1", "rouge2", "rougeL"]].unstack("system"))

# %% [markdown]
# ## Translations side by side
#
# The first sentences of the main test set: the source, the base model's and the fine-tuned model's
# translations, and the reference. Compare the outputs with the reference in length and style:
# anything beyond the translation (a greeting, quotes, an explanation) costs precision. Chapter 5
# compares the systems over the whole test sets.

# %%
chapter.side_by_side({"base": baseline["test"], "sft": finetuned["test"]}, n=n_examples)
