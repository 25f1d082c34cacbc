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
# # 4. Reinforcement learning with GRPO and DAPO
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/notebooks/04_grpo.ipynb)
#
# Supervised fine-tuning imitates one reference per sentence. Reinforcement learning instead lets the
# model try several translations of the same sentence, scores each, and makes the better ones more
# likely. The score can be anything computable: here sentence BLEU against the reference plus a
# length reward. This chapter continues training the SFT adapter of chapter 3 with **GRPO**, using the
# changes proposed by **DAPO**, and evaluates the result.

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
runs_root = None                   # where run records go; the SFT adapter is looked up here
                                   # (None: Google Drive if mounted, else ./runs)
build_id = None                    # this build: only its SFT adapter is continued
                                   # (None: any run in runs_root)
from_sft = True                    # continue the newest SFT adapter in runs_root (trained here first if none)
sft_steps = 200                    # SFT steps when no SFT adapter is found (the seed recipe's 200)
seed = 3407                        # seed for the data sample, LoRA initialisation and training
max_seq_length = 512               # longest prompt plus completion, in tokens
load_in_4bit = True                # QLoRA: base weights in 4 bits (CUDA only)
lora_r = 16                        # LoRA rank (used only when no SFT adapter is found)
lora_alpha = 16                    # LoRA alpha
lora_dropout = 0.0                 # dropout on the LoRA branch
train_size = None                  # training prompts (None: all 29,000; training stops after num_steps)
test_size = None                   # sentences per test set (None: all)
num_steps = 500                    # optimizer steps
batch_size = 2                     # completions per device per micro-batch
grad_accum = 2                     # micro-batches per step (batch_size x grad_accum completions per step)
num_generations = 4                # completions sampled per prompt: the group
lr = 5e-6                          # peak learning rate
warmup_steps = 0                   # linear warm-up steps
weight_decay = 0.0                 # AdamW weight decay
lr_scheduler = "linear"            # learning-rate schedule
logging_steps = 1                  # log rewards every N steps
num_gpus = 1                       # GPUs, data-parallel (1: this process; "auto": every visible GPU)
gradient_checkpointing = True      # recompute activations in the backward pass (saves memory, costs time)
loss_type = "bnpo"                 # token-level loss aggregation (DAPO)
beta = 0.0                         # KL coefficient (0: no reference model)
epsilon = 0.2                      # lower clipping range
epsilon_high = 0.28                # upper clipping range (DAPO clip-higher)
max_completion_length = 76         # longest sampled translation, in tokens
temperature = 0.9                  # sampling temperature
rewards = ["bleu", "length"]       # reward functions (mtlib.rewards.REWARDS)
reward_weights = [1.0, 1.0]        # weight of each reward
eval_batch_size = 64               # sentences translated per batch
fast_decode = False                # decode with a merged bf16 copy of the model (mtlib.fastgen)
max_new_tokens = 128               # longest translation at evaluation, in tokens
n_examples = 5                     # translations to show side by side

# %% tags=["hide-input"]
import mtlib.modeling as modeling  # first: on a GPU it imports Unsloth before transformers/trl
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from mtlib import chapter, data, plots, prompts, rewards as reward_fns

params = chapter.header("04_grpo", globals())

# %% [markdown]
# ## From PPO to GRPO
#
# Policy-gradient methods raise the probability of sampled outputs in proportion to their
# *advantage*: how much better they scored than expected. PPO estimates the expected score with a
# learned value model, as large as the policy itself. **GRPO** (Group Relative Policy Optimization,
# Shao et al., 2024) drops the value model: for each prompt $q$ it samples a *group* of $G$ completions
# $o_1, \dots, o_G$, scores them $r_1, \dots, r_G$, and uses the group as its own baseline:
#
# $$ \hat A_i = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G)} $$
#
# Every token of completion $i$ shares the advantage $\hat A_i$. The update is PPO's clipped objective
# $\mathcal{J}$, built from a per-token term $\ell_{i,t}$ and the probability ratio $\rho_{i,t}$ of token $t$
# between the current policy and the one that sampled it:
#
# $$
# \begin{aligned}
# \mathcal{J}(\theta) &= \mathbb{E}\Big[\frac{1}{G}\sum_{i=1}^{G}\frac{1}{|o_i|}\sum_{t=1}^{|o_i|} \ell_{i,t}(\theta)\Big]
#    - \beta\, \mathbb{D}_\mathrm{KL}\big[\pi_\theta \,\|\, \pi_\text{ref}\big] \\
# \ell_{i,t}(\theta) &= \min\big(\rho_{i,t}\hat A_i,\ \operatorname{clip}(\rho_{i,t}, 1-\varepsilon, 1+\varepsilon)\,\hat A_i\big) \\
# \rho_{i,t} &= \frac{\pi_\theta(o_{i,t} \mid q, o_{i,<t})}{\pi_{\theta_\text{old}}(o_{i,t} \mid q, o_{i,<t})}
# \end{aligned}
# $$
#
# The clip stops a single update from moving a token's probability too far; the KL term keeps the
# policy near a reference model (here the SFT model). With $\beta = 0$, as in this study, the
# reference model is not even loaded, which saves memory; the small learning rate and the clip keep
# the policy close.
#
# ## DAPO's four changes
#
# DAPO (Yu et al., 2025) keeps GRPO's group baseline and changes four things. TRL's `GRPOTrainer`
# implements them through options:
#
# | DAPO change | what it does | in TRL | here |
# |---|---|---|---|
# | **Clip-higher** | upper clip $1+\varepsilon_\text{high}$ above $1+\varepsilon$: good but unlikely tokens grow faster | `epsilon`, `epsilon_high` | both parameters |
# | **Dynamic sampling** | drops groups whose rewards are all equal, samples more prompts | no resampling: such groups give no gradient | their share is logged |
# | **Token-level loss** | averages over all tokens of a batch, not per sequence first | `loss_type` `"dapo"` or `"bnpo"` | `loss_type` parameter |
# | **Overlong shaping** | masks truncated completions, penalises those near the limit | `mask_truncated_completions`; a reward | no mask; `length` reward |
#
# In words: clip-higher decouples the two ends of the clip range, so the policy keeps exploring.
# Dynamic sampling exists because a group whose completions all score the same has zero advantage
# and teaches nothing; TRL does not resample, and logs the share of such groups as
# `frac_reward_zero_std`. For the token-level loss, `"dapo"` normalises over the whole accumulated
# batch and `"bnpo"` over the local batch; either way long completions are not under-weighted.
# Overlong filtering is TRL's `mask_truncated_completions=True`, which mtlib's `GRPOParams` does not
# set; the `length` reward softly penalises translations longer than the reference instead.
#
# ## The SFT adapter to start from
#
# GRPO needs a policy that already produces translations most of the time: with a random start almost
# every completion scores zero and the groups carry no signal. The chapter looks up the newest
# finished SFT run in `runs_root` and continues its adapter. Opened alone (say in a fresh Colab runtime
# without chapter 3's runs on Google Drive), it finds none and trains the SFT stage itself first, saying so.

# %%
pairs, splits = chapter.chapter_pairs(params)
model_path = chapter.resolve_model(model, runs_root, texts=data.sentences(pairs["train"], [src_lang, tgt_lang]))

sft_run = chapter.latest_run(runs_root, "sft", build_id=build_id) if from_sft else None
if from_sft and sft_run is None:
    display(chapter.box("No SFT adapter found: training one first", f"No finished SFT run is in {runs_root!r} (chapter 3 "
                        f"was not run here, or its runs folder is elsewhere). This chapter first trains the SFT "
                        f"stage itself: the seed recipe for {sft_steps} steps. To reuse chapter 3's adapter "
                        f"instead, point runs_root at its runs folder (on Colab, mount Google Drive in both).",
                        kind="warning"))
    sft_run = chapter.train_sft_first(params, pairs, model_path)
if sft_run is not None:
    start = modeling.load_trained(sft_run["path"], max_seq_length=max_seq_length, load_in_4bit=load_in_4bit,
                                  trainable=True, gradient_checkpointing=gradient_checkpointing, revision=model_revision)
    display(Markdown(f"Starting from the SFT adapter of run `{sft_run['run_id']}`."))
else:
    base, tokenizer = modeling.load_model(model_path, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit,
                                          revision=model_revision)
    start = modeling.TrainedModel(modeling.add_lora(base, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, seed=seed,
                                                   gradient_checkpointing=gradient_checkpointing),
                                  tokenizer, stage="base", base_name=model)
    display(Markdown("`from_sft` is off: GRPO starts from the base model with fresh adapters."))
tokenizer = start.tokenizer

# %% [markdown]
# ## The GRPO dataset
#
# Each row holds the chat prompt (system prompt and source sentence) and, apart from it, the
# reference translation, which TRL passes to the reward functions as a keyword argument.

# %%
grpo_rows = prompts.to_grpo_dataset(pairs["train"], src_lang, tgt_lang)
pd.DataFrame([{**{f"prompt: {m['role']}": m["content"] for m in row["prompt"]}, "reference": row["reference"]}
              for row in grpo_rows.select(range(2))])

# %% [markdown]
# ## How long are prompts and translations, in tokens?
#
# `max_completion_length` caps how many tokens a sampled translation may have: too small and good
# translations are cut off (and, being truncated, rewarded badly), too large and every step pays for
# long rambling samples. The token counts of the prompts and of the reference translations show what
# is needed.

# %%
tokens = prompts.grpo_token_lengths(tokenizer, grpo_rows)
display(pd.DataFrame({k: pd.Series(v).describe(percentiles=[0.5, 0.9, 0.99]) for k, v in tokens.items()}).round(1))
display(Markdown(f"{np.mean(np.array(tokens['reference']) > max_completion_length):.1%} of the references are longer than "
                 f"`max_completion_length` = {max_completion_length} tokens."))

# %% [markdown]
# ## The rewards
#
# * **`bleu`**: sentence BLEU of the completion against the reference (SacreBLEU, effective order,
#   exponential smoothing), scaled to $[0, 1]$.
# * **`length`**: the original study's length penalty, 1 while the completion has at most as many
#   tokens as the reference ($\ell_r$) and $\exp\big(-\tfrac12 (\ell_c - \ell_r)/\ell_r\big)$ beyond: it
#   discourages chatty additions ("Here is the translation: ..."). Too-short answers are left to
#   BLEU's brevity penalty, and truncation to `max_completion_length`.
#
# The rewards are weighted and summed before the group normalisation. Scored on a few completions
# made from one reference (the preamble is a chatty answer's opening in the target language,
# `prompts.preamble`):

# %%
reference = pairs["train"][0][tgt_lang]
candidates = {"the reference": reference, "first half": " ".join(reference.split()[: len(reference.split()) // 2]),
              "with a preamble": prompts.preamble(tgt_lang) + reference, "English source": pairs["train"][0][src_lang]}
funcs = reward_fns.build_rewards(rewards, tokenizer)
completions = [[{"role": "assistant", "content": c}] for c in candidates.values()]
pd.DataFrame({f.__name__: f(prompts=[None] * len(completions), completions=completions,
                            reference=[reference] * len(completions)) for f in funcs},
             index=list(candidates)).round(3)

# %% [markdown]
# ## The configuration
#
# Every optimizer step samples `batch_size × grad_accum` completions, that is
# `batch_size × grad_accum / num_generations` prompts with `num_generations` completions each.
#
# On several GPUs (`num_gpus` in the profile) each GPU samples and scores that many completions for
# its own prompts, so a step sees `num_gpus` times as many at the same learning rate (second table).
# The GRPO processes then load the model with the plain transformers + PEFT + bitsandbytes backend
# rather than Unsloth: Unsloth's GRPO patches have not been verified with several processes, while its
# SFT has. The run record names the backend and the reason.

# %%
grpo_params = chapter.grpo_params(params)
chapter.params_table(grpo_params)

# %%
chapter.batch_table(grpo_params, params, "grpo")

# %% [markdown]
# ## Training
#
# The curves show the mean total reward, each reward separately, the share of groups whose rewards
# were all equal (no signal, what DAPO's dynamic sampling would replace), and the completion length.

# %%
grpo = chapter.run_grpo(start, tokenizer, pairs["train"], grpo_params, params,
                        config=chapter.run_config(params, from_sft_run=None if sft_run is None else sft_run["run_id"]))
history = chapter.log_history(grpo)
plots.training_curves(history, ["reward", *[f"rewards/{name}/mean" for name in rewards], "frac_reward_zero_std",
                                "completions/mean_length", "loss"], title="GRPO training")

# %% [markdown]
# ### Why the loss is almost zero
#
# The loss curve stays near zero, and that is expected. With $\beta = 0$ there is no KL term, and TRL
# takes one optimizer step on each batch of completions (its `num_iterations` default of 1, which mtlib
# keeps): the loss is computed with the same policy that sampled, so $\rho_{i,t} = 1$ at every token
# and the clip never acts. The objective's *value* is then a token-weighted mean of the advantages,
# which are normalised to zero mean within each group: zero when a group's completions have the same
# length, small otherwise. Its *gradient* is not zero: at $\rho = 1$,
# $\nabla_\theta \rho_{i,t} = \nabla_\theta \log \pi_\theta(o_{i,t} \mid q, o_{i,<t})$, so a step follows
# $\sum_i \hat A_i \sum_t \nabla_\theta \log \pi_\theta(o_{i,t} \mid q, o_{i,<t})$ (up to the token
# normalisation): the policy gradient with the group mean as baseline. Whether training works shows
# in the reward curves, not in the loss.
#
# The sampling settings of `GRPOParams` carry a caveat:

# %% tags=["remove-input"]
names = {"temperature": "temperature", "top_k": "top-k", "top_p": "top-p", "repetition_penalty": "repetition penalty"}
sampling = {k: getattr(grpo_params, k) for k in names}  # mtlib.train.GRPOParams
display(pd.Series({names[k]: v for k, v in sampling.items()}, dtype=object).to_frame("value"))
neutral = {"top_k": (0, None), "top_p": (1.0, None), "repetition_penalty": (1.0, None)}  # values that filter nothing
filters = [f"{names[k]} {v}" for k, v in sampling.items() if k in neutral and v not in neutral[k]]
losses = [h["loss"] for h in history if "loss" in h]
display(Markdown((f"In this run the logged loss lies between **{min(losses):.1e}** and **{max(losses):.1e}**. " if losses else "")
                 + (f"The completions are sampled with {', '.join(filters)} on top of temperature {sampling['temperature']}, so they come from "
                    "a different distribution than the policy's own: TRL computes the policy's token probabilities at the "
                    "sampling temperature but without these filters, and the importance ratio, equal to 1, does not "
                    "correct for the difference. The update is therefore not an exact policy gradient of the model "
                    "being trained." if filters else
                    "The completions are sampled from the policy itself, at the temperature TRL also uses for its "
                    "token probabilities, so the update is an on-policy gradient.")))

# %% [markdown]
# ## Evaluating the GRPO model
#
# The model returned by `run_grpo` (the SFT adapter after GRPO) translates every test set greedily, as
# the other systems did. The table repeats this build's base and SFT scores next to it.

# %%
after = chapter.evaluate_splits(grpo, pairs, params, name="grpo")
scores = chapter.scores_frame({"grpo": after})
chapter.show_scores(scores)

# %%
earlier = chapter.latest_scores(runs_root, stages=("base", "sft"), build_id=build_id)
chapter.show_scores(pd.concat([earlier, scores]) if earlier is not None else scores)

# %% [markdown]
# ## Translations side by side
#
# The first sentences of the main test set, translated by the GRPO model, with the source and the
# reference.

# %%
chapter.side_by_side({"grpo": after["test"]}, n=n_examples)
