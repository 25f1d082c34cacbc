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
# # Appendix: GPU speed at full scale
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/notebooks/06_gpu_speed.ipynb)
#
# A reader of this book waits on three things: supervised fine-tuning, translating the test sets, and GRPO
# steps. This appendix shows how long each takes for a model of Llama-3.2-3B-Instruct's exact size on one
# data-centre GPU, with the original study's recipe (the `seed` profile) and with this book's `fast`
# profile. The summary comes first; the measurements behind it follow, each folded into its own section.
#
# These figures do not come from this build: the programs in `benchmarks/` measured them once, and their
# raw results are kept next to them, in `benchmarks/results/`. Every number below is read from those
# files, and every table and figure names the card it was measured on. A ratio is only ever taken between
# two numbers of the same run on the same card.

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
profile = None                            # name of the profile the runner used (display only)
benchmark_files = ["h100_run6.json"]      # measured results, in benchmarks/results/ (names there, or paths)
paths_file = "h100_translate_paths.json"  # measured translation paths (a name there, or a path)
grpo_file = "grpo_seed_vs_fast_h200_2026-12-02/grpo_seed_vs_fast_h200.json"  # measured GRPO step phases (a
                                                                             # name there, or a path)
book_run = "gpu_check_h200_2026-12-02_run10"  # the book command on a GPU (a folder there)
then_and_now_run = "then_and_now_h200_2026-12-03"  # today's code and an earlier one on one machine (a folder
                                                   # there)
multi_gpu_file = "multi_gpu.json"         # one GPU against two (shown if measured)

# %% tags=["hide-input"]
import re

import pandas as pd
from IPython.display import Markdown, display

from mtlib import bench, chapter, plots, profiles

params = chapter.header("06_gpu_speed", globals())


def unwrap(text: str) -> str:
    """Join the lines of each paragraph and list item (a wrapped line that starts with "1)" or "- " would
    otherwise begin a list); code fences are kept as they are."""
    out, code = [], False
    for line in text.split("\n"):
        fence = line.startswith("```")
        if code or fence or not out or not line.strip() or not out[-1].strip() or out[-1].startswith("```") \
                or line.startswith("- "):
            out.append(line)
        else:
            out[-1] = out[-1].rstrip() + " " + line.strip()
        code ^= fence
    return "\n".join(out)


def md(text: str) -> None:
    """Show generated Markdown (every number in it is read from the results files or the profiles)."""
    display(Markdown(unwrap(text)))


def num(value, digits: int = 3) -> str:
    return bench._num(value, digits)


def secs(value) -> str:
    """Seconds to one decimal: the precision the benchmark programs record most times with."""
    return f"{value:,.1f}"


def words(n: int) -> str:
    """A small count in words ("one step", "four operators")."""
    return ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")[n] if 0 <= n <= 10 else f"{n:,}"


def on_card(fig, title: str, card: str):
    """Title a figure with what it shows and the card it was measured on."""
    fig.axes[0].set_title(f"{title}\n{card}")
    return fig


measured = bench.measurements(benchmark_files)   # one row per results file, stage and recipe
recipes = {name: profiles.load_profile(name, check_device=False) for name in ("seed", "fast")}
setting = {(name, ch): profiles.effective_parameters(p, ch) for name, p in recipes.items()
           for ch in ("03_sft", "04_grpo")}
twin = bench.model_facts()

# %% [markdown]
# ## Summary

# %% tags=["remove-input"] mystnb={"image": {"alt": "Horizontal bars, log scale: each fast recipe's throughput as a multiple of the seed recipe's, per stage, measured in one run on the card named in the title."}}
files = list(benchmark_files)
cards = {f: bench.card(f) for f in files}
for f in files:
    env = bench.environment(f)
    versions = ", ".join(f"{name} {env[key]}" for key, name in
                         [("torch", "torch"), ("transformers", "transformers"), ("trl", "TRL"), ("unsloth", "Unsloth")]
                         if env.get(key))
    note = bench.card_note(f)
    md(f"**Measured on one {cards[f]}**, in one run of `benchmarks/gpu_benchmark.py` (`{f}`; {versions})"
       + (f". The card as the file records it: {note}" if note else "") + ".")
if len(set(cards.values())) > 1 or len(files) > 1:
    md("Each results file is one run on one card: the speed-ups compare recipes within a run, and the rows "
       "of different cards are not compared with each other.")
display(bench.summary(files))

first = files[0]


def on_same_card(card):
    """The first benchmark file measured on ``card`` (to set another file's numbers beside), else None."""
    return next((f for f in files if cards[f] == card), None)


def verdicts(f) -> str:
    """The goals of one run, in words: which are met, by how much, on which path."""
    sft, tr, eager, grpo = (bench.pick(measured, s, r, f) for s, r in
                            (("sft", "fast"), ("translate", "fast"), ("translate", "fast-eager"), ("grpo", "fast")))
    compile_s = next((r["seconds"] for r in bench.load_rows(f) if r.get("stage") == "setup"
                      and r.get("recipe") == "fast" and "compiles" in r.get("what", "")), None)
    out = []
    if sft is not None:
        out.append(f"**SFT** {'meets' if sft.met else 'misses'} its goal: {num(sft.throughput)} tokens/s, "
                   f"{sft.vs_seed:g} times the seed recipe's.")
    if tr is not None:
        text = (f"**Translation** {'meets' if tr.met else 'misses'} its goal with the compiled decoder: "
                f"{num(tr.time_s)} s for 1,000 sentences on the second call")
        if compile_s is not None:
            text += f", after a first call that compiled the decode step for {num(compile_s)} s"
        text += "."
        if eager is not None:
            text += (f" The chapters translate each test set once, so compiling would not pay off: their path, "
                     f"the same merged copy without compiling, takes {num(eager.time_s)} s "
                     f"({'within' if eager.met else 'outside'} the goal). A reader who translates one batch shape "
                     "again and again (a benchmark, a sweep) can turn compiling on with "
                     "`translate(..., cache_implementation=\"static\")`.")
        out.append(text)
    if grpo is not None:
        out.append(f"**GRPO** {'meets' if grpo.met else 'misses'} its goal: {num(grpo.throughput)} completions/s, "
                   f"{grpo.vs_seed:g} times the seed recipe measured in the same run.")
    prefix = f"On the {cards[f]} (`{f}`): " if len(files) > 1 else ""
    return prefix + " ".join(out)


seed_rows = [r for r in bench.load_rows(first) if r.get("stage") == "translate" and r.get("recipe") == "seed"]
scaled = seed_rows and seed_rows[0].get("sentences", 1000) < 1000
lines = ["Throughput counts what a reader waits for: non-padding tokens per second for SFT, sentences per second "
         "for translation, sampled completions per second for GRPO. Time is per optimizer step for training, and "
         "for all 1,000 sentences of test 2016 for translation"
         + (f"; the seed recipe translated {seed_rows[0]['sentences']} sentences in batches of "
            f"{seed_rows[0]['batch']}, and its time is scaled up to 1,000" if scaled else "") + "."]
md("\n\n".join(lines + [verdicts(f) for f in files]
               + ["The goals were set before the work began, from a first look at the original recipe and what "
                  "the card could do in principle; `fast` decodes translations and GRPO's completions with a "
                  "merged bf16 copy of the model (see *What the fast recipe changes*)."]))
for f in files:
    speedups = bench.speedup_table(bench.load_rows(f))
    speedups = bench.in_words(speedups[speedups.recipe.isin(bench.SUMMARY_RECIPES)])
    display(on_card(plots.speedup_bars(speedups), "Speed-up of each recipe over the seed recipe", cards[f]))

# %% [markdown]
# ## The whole book on one GPU

# %% tags=["remove-input"]
book = bench.book_run(book_run)
grpo_pair = book["grpo"] or bench.seed_and_fast(grpo_file)  # measured beside the build, else the phases' file
fast_grpo, seed_grpo = grpo_pair.get("fast"), grpo_pair.get("seed")
text = [f"The book command itself (`benchmarks/gpu_check.sh`: profile `{book['profile']}`, the fast settings on "
        f"`{book['model']}`, all four test sets) executed its chapters in **{num(book['total_s'])} s** on one "
        f"{book['card']}; the goal is {bench.BOOK_GOAL_S} s, so it is "
        f"{'met' if book['total_s'] <= bench.BOOK_GOAL_S else 'not met yet'}. The HTML render is not included "
        + (f"(it needs no GPU; timed apart, from these executed chapters on a CPU machine: {num(book['render_s'])} s)."
           if book["render_s"] is not None else "(it needs no GPU).")
        + (f" Chapters not in this build: {', '.join(book['missing'])}." if book["missing"] else "")]
if book["early_kernels"]:
    text.append("The runner starts each chapter's kernel, and runs the chapter's imports in it, while the chapter "
                "before runs, once that one is past its own imports (`mtlib.book.EarlyKernel`): a chapter's seconds "
                "hold what its kernel had left to do when its turn came, so chapter 4 no longer waits for Unsloth's "
                "import, done during chapter 3's.")
if book["grpo_steps"]:
    g = book["grpo_steps"]
    text.append(f"Chapter 4's own GRPO training in this build: its first {g['warmup_steps']} steps took "
                f"{num(g['warmup_s'])} s, steps {g['warmup_steps'] + 1} to {g['steps']} {num(g['seconds_per_step'])} s "
                f"each, **{num(g['completions_per_s'])} completions/s** ({g['completions_per_step']} a step).")
if fast_grpo and seed_grpo:
    warm_steps = len(fast_grpo["step_seconds"]) - fast_grpo["steps_timed"]
    settings = ", ".join(f"`{k}={v}`" for k, v in sorted(fast_grpo.get("unsloth_env", {}).items()))
    text.append(f"GRPO, measured {'beside this build' if book['grpo'] else f'in `{grpo_file}`'} on a card of "
                f"the same kind{f' with {settings}' if settings else ''}, the fast shape and the seed recipe in one "
                f"process, each after "
                f"{warm_steps} warm-up steps: the fast shape "
                f"samples and learns from **{num(fast_grpo['completions_per_s'])} completions/s**, the seed recipe "
                f"{num(seed_grpo['completions_per_s'])} ({num(fast_grpo['completions_per_s'] / seed_grpo['completions_per_s'])} "
                f"times). The fast shape's warm-up steps took {num(fast_grpo['warmup_seconds'])} s, "
                f"{num(fast_grpo['warmup_seconds'] / warm_steps)} s "
                f"a step against {num(fast_grpo['seconds_per_step'])} s later, while compiled kernels were being "
                f"built (each step's time is in the results file). The goal is {bench.GRPO_GOAL_CPS} completions/s "
                f"in the steady state: "
                f"{'met' if fast_grpo['completions_per_s'] >= bench.GRPO_GOAL_CPS else 'not met yet'}."
                + (f" Both sampled at most {fast_grpo['max_completion_length']} tokens a completion, about the longest "
                   "that the book's own GRPO samples after SFT, because the twin's random weights never stop "
                   "earlier." if fast_grpo.get("max_completion_length") else ""))
if book["commands"] or book["versions"]:
    text.append("Command: " + "; ".join(f"`{c.split('   (')[0]}`" for c in book["commands"])
                + (". Versions the chapters recorded: " + ", ".join(f"{k} {v}" for k, v in book["versions"].items() if v)
                   if book["versions"] else "") + ".")
md("\n\n".join(text))
display(book["chapters"].set_index("Chapter"))

# %% [markdown]
# ### Then and now on one machine
#
# Two machines with the same card need not run at the same speed, so a speed-up over earlier code is measured on one
# machine: the book command of an earlier commit and of a later one, one after the other, on the same twin, each
# build with its own compile caches (`benchmarks/gpu_then_and_now.sh`).

# %% tags=["remove-input"]
pair = bench.then_and_now(then_and_now_run)
grpo_then, grpo_now = pair["grpo"]["then"], pair["grpo"]["now"]
md(f"On one **{pair['card']}** (`benchmarks/results/{then_and_now_run}/`), the chapters of commit "
   f"`{pair['then_commit']}` ({pair['then_label']}) took {num(pair['then_s'])} s, those of `{pair['now_commit']}` "
   f"{num(pair['now_s'])} s: **{pair['speedup']:.2f} times faster**"
   + (f", counting only the chapters both executed (not {', '.join(pair['missing'])})" if pair["missing"] else "")
   + "." + (f" Chapter 4's GRPO training after its first {grpo_now['warmup_steps']} steps: "
            f"{num(grpo_then['completions_per_s'])} against **{num(grpo_now['completions_per_s'])} completions/s**."
            if grpo_then and grpo_now else "")
   + f" The build above ({num(book['total_s'])} s) ran on another machine.")
display(pair["chapters"])

# %% [markdown]
# ### Two process-wide choices behind these times
#
# Timing chapter 3's stages one by one (`benchmarks/gpu_stage_probe.sh`) found two costs that the libraries'
# defaults add and a one-pass book does not win back. cuDNN's attention, which torch picks for the masked
# attention of batched decoding, builds an execution plan for every new shape, and each decode step is one (the
# key length grows by a token): `mtlib.fastgen.decoding_kernels` leaves it out while the merged copy decodes,
# for translation and GRPO's sampling alike. Unsloth compiles every decoder layer with `torch.compile` before
# the first training step; `mtlib.modeling` turns that off (`UNSLOTH_BLOCK_COMPILE=0`, unless the environment
# sets it). The translation rows come from one process; the SFT rows from two, one per setting, in the same call.

# %% tags=["remove-input"]
costs, probe_card = bench.first_pass_costs()
md(f"On the **{probe_card}** (`benchmarks/results/{bench.STAGE_PROBE_RUN}/`):")
display(costs.round(2))

# %% [markdown]
# ### Decode steps replayed from CUDA graphs
#
# A decode step of the merged copy launches about a thousand small kernels, one token for every sequence of
# the batch; at GRPO's batch of 128 the GPU waits on their launch. `mtlib.decode_graphs` lets transformers'
# own `generate` decode into a static key/value cache, records the first decode step of each batch shape as a
# CUDA graph and replays it for the steps that follow, for translation and GRPO's sampling alike. Each
# recording is checked once: the recorded step must reproduce the step just run without it, or the graphs are
# turned off with a warning. A decode step's inputs depend only on the batch and the cache's length, so GRPO
# keeps one cache from step to step, grown only when a longer prompt needs it, and its steps replay one
# recording until then. (The measurements below were taken with an earlier variant of the same code, which padded GRPO's
# prompts to a multiple of 32 tokens and kept a cache per padded length.) Measured in one process each, eager
# decoding first:

# %% tags=["remove-input"]
gains, graphs_card = bench.decode_graph_gains()
translated = gains[gains["Same translations"] != "(sampled)"]
grpo_step = gains.loc[gains.index.str.startswith("GRPO step")].iloc[0]
md(f"On the **{graphs_card}** (`benchmarks/results/{bench.DECODE_GRAPHS_RUN}/`), the four test sets took "
   f"{num(translated['CUDA graphs (s)'].sum())} s with the graphs against {num(translated['Eager (s)'].sum())} s "
   f"without (the twin's random weights decode all 128 tokens of every sentence), with the same translation of every "
   f"sentence; a GRPO step took {num(grpo_step['CUDA graphs (s)'])} s against {num(grpo_step['Eager (s)'])} s.")
display(gains)

# %% [markdown]
# ## What the fast recipe changes, and why quality should hold
#
# The `fast` profile keeps the model, the adapter and the data of the `seed` profile (the original study's
# recipe) and changes how much work each step does. Its settings, as the two profiles give them to the
# chapters:

# %% tags=["remove-input"]
s_sft, f_sft = setting["seed", "03_sft"], setting["fast", "03_sft"]
s_grpo, f_grpo = setting["seed", "04_grpo"], setting["fast", "04_grpo"]


def per_step(p):
    return p["batch_size"] * p["grad_accum"]


def prompts(p):
    return per_step(p) // p["num_generations"]


def checkpointing(p):
    return "on (recomputes the forward pass)" if p["gradient_checkpointing"] else "off"


def batches(p):
    if p["padding_free"] is False:
        return "padded, grouped by length" if p["group_by_length"] else "padded"
    return "padding-free (Unsloth's default)"


def decoder(p):
    return "merged bf16 copy of the model, decode steps from CUDA graphs" if p["fast_decode"] else \
        "the trained 4-bit model itself"


rows_ = [
    ("SFT", "pairs per optimizer step", *(f"{p['batch_size']} × {p['grad_accum']}" for p in (s_sft, f_sft))),
    ("SFT", "optimizer steps", *(f"{p['num_steps']:,}" for p in (s_sft, f_sft))),
    ("SFT", "pairs seen", *(f"{p['num_steps'] * per_step(p):,}" for p in (s_sft, f_sft))),
    ("SFT", "learning rate", *(f"{p['lr']:g}" for p in (s_sft, f_sft))),
    ("SFT", "gradient checkpointing", *(checkpointing(p) for p in (s_sft, f_sft))),
    ("SFT", "batches", *(batches(p) for p in (s_sft, f_sft))),
    ("Translation", "sentences per batch", *(f"{p['eval_batch_size']:,}" for p in (s_sft, f_sft))),
    ("Translation", "decoded by", *(decoder(p) for p in (s_sft, f_sft))),
    ("GRPO", "prompts × completions per step", *(f"{prompts(p)} × {p['num_generations']}" for p in (s_grpo, f_grpo))),
    ("GRPO", "optimizer steps", *(f"{p['num_steps']:,}" for p in (s_grpo, f_grpo))),
    ("GRPO", "learning rate", *(f"{p['lr']:g}" for p in (s_grpo, f_grpo))),
    ("GRPO", "gradient checkpointing", *(checkpointing(p) for p in (s_grpo, f_grpo))),
    ("GRPO", "completions sampled by", *(decoder(p) + (", refreshed every step" if p["fast_decode"] else "")
                                         for p in (s_grpo, f_grpo))),
]
display(pd.DataFrame(rows_, columns=["Stage", "Setting", "seed profile", "fast profile"]).set_index(["Stage", "Setting"]))

peaks = [(bench.pick(measured, "sft", "fast", f), f) for f in files]
peaks = "; ".join(f"{num(r.peak_gib)} GiB on the {cards[f]}" for r, f in peaks if r is not None and r.peak_gib == r.peak_gib)
grow = per_step(f_sft) / per_step(s_sft)
md(f"""**Why it is faster.**

- *SFT.* A micro-batch of {s_sft['batch_size']} short sentences leaves the GPU idle between kernel launches;
  {f_sft['batch_size']} fill it. Unsloth's padding-free batches (its default where flash-attention is missing)
  stayed far below padded batches of similar lengths in an exploration run before the benchmark (its numbers
  were not kept, so they are not shown). The card holds the large batch's activations{f" (a peak of {peaks})" if peaks else ""},
  so recomputing the forward pass would only cost time.
- *Translation.* Every decode step serves all the batch's sentences at once, and the merged copy decodes with
  plain dense matrix products (see *Where translation time goes* below).
- *GRPO.* Sampling is one batch of {per_step(f_grpo)} sequences instead of {per_step(s_grpo)}, on the faster
  decoder.

**Why quality should hold.** The SFT step sees {grow:g} times more pairs, so the learning rate grows from
{s_sft['lr']:g} to {f_sft['lr']:g}, below the square-root rule's {s_sft['lr'] * grow ** 0.5:.2g}, and the run
covers {f_sft['num_steps'] * per_step(f_sft):,} pairs instead of {s_sft['num_steps'] * per_step(s_sft):,}: more
data at a comparable number of updates. Padding only changes which tokens are computed, not the loss (pad tokens
carry no label). GRPO keeps its group of {f_grpo['num_generations']} completions per prompt, so the
group-relative advantage is computed exactly as before; only more groups ({prompts(f_grpo)} instead of
{prompts(s_grpo)}) are averaged per step, which lowers the gradient's variance. The merged copy changes no
weights: it holds the dequantized 4-bit base plus the LoRA update, the function the 4-bit model computes, in
bf16. Training itself stays 4-bit QLoRA.""")

# %% [markdown]
# ## The measurements in detail
#
# Each section below is folded: open it to see the measurements and what they show. A section's numbers come
# from one results file and name its card; where a section puts runs side by side, it says which.
#
# ### How the numbers were measured

# %% tags=["remove-input", "hide-output"] mystnb={"code_prompt_show": "Show how the numbers were measured", "code_prompt_hide": "Hide how the numbers were measured"}
cores = [f"hidden size {twin['hidden']:,}", f"{twin['layers']} layers", f"{twin['heads']} attention heads",
         f"{twin['kv_heads']} key/value heads", f"a vocabulary of {twin['vocab']:,}"]
md(f"""The benchmarks build a **shape twin** of {bench.MODEL} ({", ".join(cores)}; {twin['parameters'] / 1e9:.2f}
billion parameters with random weights: the real configuration, `mtlib.tiny.build_shape_twin`), load it in 4
bits with LoRA rank {s_sft['lora_r']} on the attention and MLP projections, and drive it through the same
`mtlib` functions the chapters call (`load_model`, `add_lora`, `build_sft_trainer`, `build_grpo_trainer`,
`translate`) on real Multi30k sentences. Random weights never stop a sentence early, so every translation
generates the same number of new tokens. `gpu_benchmark.py` measures every recipe in one process on one
machine; `gpu_translate_paths.py` compares decoding paths, each family (with Unsloth, without it) in its own
process; `gpu_grpo_breakdown.py` splits a GRPO step into its phases. From the repository root of an offline
CUDA host:

```bash
scripts/gpu_wheels.sh .whl            # Unsloth, bitsandbytes, TRL, PEFT, datasets as wheels
pip install --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python -m benchmarks.gpu_benchmark --data <multi30k raw folder> --out <out dir>
python -m benchmarks.gpu_translate_paths --data <raw> --out <dir> \\
    --twin /tmp/twin --adapter /tmp/adapter --family unsloth
python -m benchmarks.gpu_translate_paths --data <raw> --out <dir> \\
    --twin /tmp/twin --adapter /tmp/adapter --family hf
python -m benchmarks.gpu_grpo_breakdown --data <raw> --out <dir> --shapes 32x4 --steps 10 --skip 5
```

Every recipe the benchmark measured, with its batch (per-device batch × gradient-accumulation steps; for GRPO,
completions) and its peak GPU memory (`torch.cuda.max_memory_allocated`, GiB). `fast, Unsloth's decoder` runs
the fast batches through the trained model itself, Unsloth's decode path, to show what the merged copy buys:""")
display(bench.detail(files))

for f in files:
    fast_f = bench.pick(measured, "sft", "fast", f)
    if fast_f is None:
        continue
    spec = bench.card_spec(cards[f])
    flop = 4 * twin["parameters"]   # forward + backward through the frozen weights (no weight gradients for them)
    useful = fast_f.throughput * flop / 1e12
    text = (f"**SFT's share of the card.** The fast recipe trains {num(fast_f.throughput)} non-padding tokens/s on "
            f"the {cards[f]} (`{f}`). A LoRA step costs about 4 × {twin['parameters'] / 1e9:.2f} billion = "
            f"{flop / 1e9:.1f} GFLOP per token (the forward pass and the backward pass through the frozen weights, "
            f"which need no gradients of their own), so the card does about {useful:.0f} TFLOP/s of useful work")
    if spec:
        text += (f", {useful / spec['bf16_tflops']:.0%} of its dense bf16 peak ({spec['bf16_tflops']} TFLOP/s "
                 "by the datasheet)")
    md(text + f". The rest goes to 4-bit dequantization, padding and the {twin['vocab']:,}-word output layer.")

# %% [markdown]
# ### Where translation time goes

# %% tags=["remove-input", "hide-output"] mystnb={"code_prompt_show": "Show the translation paths", "code_prompt_hide": "Hide the translation paths", "image": {"alt": "Horizontal bars: seconds to translate 1,000 sentences by each decoding path of one run, coloured by process, with the goal as a dashed line."}}
paths, runs = bench.translation_paths(paths_file)
paths_card = bench.card(paths_file)
goal_s = bench.GOALS["translate"].value
new_tokens = re.search(r"(\d+) new tokens", bench._result(paths_file).get("what", ""))
partial = sorted({int(b) for b in paths.batch if int(b) < 1000})
md(f"""Every path translated the same 1,000 test-2016 sentences"""
   + (f" ({new_tokens.group(1)} new tokens each)" if new_tokens else "")
   + f""" with the twin after a few LoRA steps, on the **{paths_card}** (`{paths_file}`). Each run is a fresh
machine of that kind, so paths are compared within a run."""
   + (f" Rows of batch {', '.join(map(str, partial))} timed that many sentences, scaled to 1,000." if partial else "")
   + """ Unsloth patches the Llama classes for a whole process, so plain transformers runs in a process that never
imported it.""")
process_order = list(dict.fromkeys(paths.process))   # one colour per process in every figure
paths = paths.assign(order=[process_order.index(p) for p in paths.process])
paths = paths.sort_values(["run", "order"], kind="stable").drop(columns="order")
for run, group in paths.groupby("run", sort=True):
    md(f"**Run {run}**: {runs.get(run, '')}.")
    display(bench.path_table(group))
    if len(group) > 1:
        display(on_card(plots.path_times(group, target=goal_s), f"Translation paths of run {run}", paths_card))


def sec(run, decoder, process=None, batch=None):
    return num(bench.path_seconds(paths, run, decoder, process, batch))


head = bench.profile_top("profile_translate_h100_shapes_unsloth-4bit.txt", n=1).iloc[0]
md(f"""What the runs show, each comparison within one run:

- **Unsloth's decode, output layer.** In the profile of Unsloth's decode (below), the largest operator is the
  {twin['vocab']:,}-word output layer run as a batched product, `bmm({head.shapes})`, {head.self_cuda_share:.0%}
  of the GPU time: its input reaches `lm_head` as a strided view, so `torch.matmul` expands the weight once per
  sentence. Handing it a contiguous input makes it one matrix product: run A, {sec("A", "Unsloth decode, 4-bit base + LoRA")} s
  before, {sec("A", "Unsloth decode + contiguous lm_head input")} s after. `mtlib` now does this for every Unsloth
  model (`modeling.contiguous_head_input`).
- **Unsloth's decode, projections.** For larger batches Unsloth dequantizes each 4-bit weight and calls
  `torch.matmul` with an output buffer, which again becomes a batched product with the weight expanded: that
  path is tuned for a few sequences, not a whole test set at once. Dequantizing the base to bf16 does not help (run A,
  {sec("A", "Unsloth decode, base dequantized to bf16")} s): the 4-bit format is not the cost.
- **A merged copy in plain transformers** (`mtlib.fastgen.merged_copy`: dequantized base + folded LoRA) decodes
  with ordinary matrix products: {sec("A", "transformers, merged bf16, sdpa")} s in run A (a first version that
  merged by hand), {sec("B", "merged copy, sdpa")} s in run B, each for 1,000 sentences in one batch.
- **Attention under a padding mask.** Left-padded batches carry a mask, and transformers' sdpa then copies every
  key/value head once per query head (`repeat_kv`). `mtlib.fastgen.grouped_decode_attention` lays a decode
  step's grouped query heads out as queries of their shared key/value head and reads the cache in place: run B,
  {sec("B", "merged copy, sdpa")} s to {sec("B", "merged copy, grouped decode attention", "without Unsloth")} s.
- **Compiling the step.** A static cache lets transformers compile the decode step (CUDA graphs): run B,
  {sec("B", "merged copy, grouped attention, static cache + compile")} s on the second call (the note gives the
  first, compiling call). The chapters translate each split once, so the fast profile skips this.""")

# %% [markdown]
# ### The Unsloth process, and its fix

# %% tags=["remove-input", "hide-output"] mystnb={"code_prompt_show": "Show the Unsloth process's history", "code_prompt_hide": "Hide the Unsloth process's history"}
grouped = "merged copy, grouped decode attention"
static = "merged copy, grouped attention, static cache + compile"
md(f"""On the **{paths_card}** (`{paths_file}`). For a while the same merged copy ran slower in a process that
had imported Unsloth. In run B, both processes on one machine: {sec("B", grouped, "with Unsloth")} s with Unsloth
against {sec("B", grouped, "without Unsloth")} s without, with identical outputs. The compiled path showed the
same gap, though only across runs (fresh machines of the same kind): {sec("B", static, "without Unsloth")} s
without Unsloth in run B, against {sec("C", static)} s with it in run C and {sec("D", static)} s in run D. Run D
had the allocator's `expandable_segments` off, which ruled the memory allocator out.

The cause was in Unsloth's source: `unsloth_zoo` replaces transformers' mask builders (`create_causal_mask`,
`create_masks_for_generate`) with wrappers around `torch.compile(dynamic=True)` versions, and the copy called
them at every decode step. `mtlib.fastgen` now gives the copy transformers' own builders
(`tests/test_fastgen.py` checks that the wrappers are never called). Run E, the benchmark of the summary, measured
the Unsloth process after the fix: {sec("E", grouped)} s without compiling and {sec("E", static)} s compiled. Runs
B to E are different machines, so these numbers show the order of the gap, not an exact ratio.""")
display(bench.path_table(paths[paths.process == "with Unsloth"][lambda d: d.decoder.isin([grouped, static])]))

# %% [markdown]
# ### Profiles of the decoding paths

# %% tags=["remove-input", "hide-output"] mystnb={"code_prompt_show": "Show the profiles", "code_prompt_hide": "Hide the profiles"}
PROFILES = {  # profiles kept in benchmarks/results/ by benchmarks/gpu_translate_paths.py, and what each decoded
    "profile_translate_h100_shapes_unsloth-4bit.txt": "Unsloth's decode, 4-bit base + LoRA, as it comes",
    "profile_translate_h100_shapes_unsloth-4bit-headfix.txt": "the same with a contiguous output-layer input",
    "profile_translate_h100_shapes_hf-merged-sdpa.txt": "the merged copy with transformers' sdpa, without Unsloth",
    "profile_translate_h100_shapes_hf-proc-fast.txt": "the merged copy with grouped decode attention, without Unsloth",
    "profile_translate_h100_shapes_unsloth-proc-fast.txt": "the same in a process that imported Unsloth",
}
shown = 4
md(f"""`torch.profiler` over one short translation of a batch (the batch size shows in the input shapes), the
{words(shown)} operators with the most GPU time each. The profiler's tables do not record the card; the files' names
say where they were taken.""")
for name, label in PROFILES.items():
    where = re.search(r"_(h100|h200|a100)_", name)
    md(f"**{label[0].upper() + label[1:]}** (`{name}`, on an {where.group(1).upper() if where else 'unrecorded card'}):")
    display(bench.profile_table(bench.profile_top(name, n=shown)))

# %% [markdown]
# ### Are the fast outputs the same?

# %% tags=["remove-input", "hide-output"] mystnb={"code_prompt_show": "Show the fidelity check", "code_prompt_hide": "Hide the fidelity check"}
agree = bench.agreement(files)
md("""The merged copy computes the same function as the 4-bit model in a different order (the LoRA update
folded into bf16 weights instead of added after them), so bf16 rounding differs. On CPU in float32,
`tests/test_fastgen.py` checks that greedy translations are identical with and without `fast_decode` and that
the copy's logits match the adapted model's. On the twin on a GPU, exact equality is a poor test: random
weights leave the top two logits nearly tied, so the first rounding difference flips a token and the rest of the
sentence diverges. The benchmark therefore compares next-token choices under teacher forcing: the trained model
and its merged copy read the same sequences (prompt + fast translation), and where their argmaxes differ, the
trained model's own lead of top-1 over top-2 (in logits) is recorded.""")
if agree.empty:
    md("Not measured in these results files.")
else:
    display(bench.agreement_table(agree))
    for r in agree.itertuples():
        clear = "no" if r.max_margin_where_different < 1 else "some"
        md(f"On the {r.card} (`{r.file}`): where the two disagree, the trained model's own lead has a median of "
           f"{num(r.median_margin_where_different, 2)} logits, against {num(r.median_margin, 2)} over all positions: "
           f"the copy flips near-ties, which greedy decoding cannot resolve either way. The largest lead it "
           f"overturned was {num(r.max_margin_where_different, 2)} logits; {clear} position with a lead of a logit "
           "or more changed.")

# %% [markdown]
# ### Where a GRPO step goes

# %% tags=["remove-input", "hide-output"] mystnb={"code_prompt_show": "Show the GRPO step's phases", "code_prompt_hide": "Hide the GRPO step's phases", "image": {"alt": "Stacked horizontal bars: seconds of one GRPO step, for each shape measured, spent sampling completions, scoring them, in the loss forward pass and in the backward pass with the optimizer step."}}
phases = bench.grpo_phases(grpo_file)
steps = bench.grpo_steps(grpo_file)
p = phases.iloc[0]
n_prompts, n_gen = (int(x) for x in steps["shape"].split("x"))
tokens = bench.load_rows(grpo_file)[0].get("max_completion_length") or f_grpo["max_completion_length"]
capped = tokens < f_grpo["max_completion_length"]
sample_s, update_s = p["sampling completions"], p["loss forward"] + p["backward + optimizer"]
md(f"""On the **{steps['card']}** (`{grpo_file}`). A fast GRPO step samples {n_gen} completions for each of
{n_prompts} prompts ({tokens} tokens each, {"capped there by the benchmark, about the longest the book's own GRPO samples after SFT" if capped else "the chapters' `max_completion_length`"},
since random weights never stop), scores them, and takes the policy-gradient update over the {n_prompts * n_gen} sequences.
`benchmarks/gpu_grpo_breakdown.py` times each phase with the GPU synchronised at its boundaries, over the last
{words(len(steps['timed']))} of {words(len(steps['timed']) + len(steps['warmup']) + 1)} steps of one run. Unsloth
compiles its training step as it meets new shapes: the first step took {secs(steps['first'])} s,
the next {words(len(steps['warmup']))} took {secs(min(steps['warmup']))} to {secs(max(steps['warmup']))} s."""
   + (f""" Of the timed steps, {words(len(steps['outliers']))} (a new length) took
{" and ".join(secs(s) for s in steps['outliers'])} s again, the others {secs(min(steps['regular']))} to
{secs(max(steps['regular']))} s.""" if steps["outliers"] else
      f" The timed steps took {secs(min(steps['timed']))} to {secs(max(steps['timed']))} s."))
display(bench.phase_table(grpo_file))
display(on_card(plots.step_phases(phases), "Seconds of one GRPO step by phase", steps["card"]))
settings, settings_card = bench.grpo_settings()
packed, padded = settings.iloc[0], settings.iloc[-1]
md(f"""Unsloth computes GRPO's loss, by default, on one packed row that holds all the step's sequences end
to end; where flash-attn is missing (this image has none), Unsloth's code computes that row's attention one
sequence at a time. The loss forward and backward took {num(packed['Loss forward (s)'] + packed['Backward + optimizer (s)'])} s a step
on the {settings_card}, against {num(padded['Loss forward (s)'] + padded['Backward + optimizer (s)'])} s on the
padded batch, the same loss. `mtlib.modeling` therefore sets `UNSLOTH_GRPO_SEQ_PACKING=0` unless the
environment sets it (each run's `env.json` records it). Measured in one call, one process each, the same twin
and shape as above (`{bench.GRPO_SETTINGS_RUN}/`):""")
display(settings)

spec = bench.card_spec(steps["card"])
bound = ""
if spec:
    bound = (f", where reading the merged copy's {twin['bf16_gb']:.1f} GB of bf16 weights at the card's "
             f"{spec['memory_tb_s']:g} TB/s (datasheet) puts a floor of about {twin['bf16_gb'] / spec['memory_tb_s']:.0f} ms under each")
same = on_same_card(steps["card"])   # a benchmark run on the breakdown's card, to set beside it
run_fast, run_unsloth = (bench.pick(measured, "grpo", r, same) if same else None for r in ("fast", "fast-unsloth-decode"))
graphs = bench.seed_and_fast(grpo_file).get("fast", {}).get("decode_graph_stats")
launches = (f"""The decode steps replay CUDA graphs (`mtlib.decode_graphs`: {graphs['recorded']} batch shape recorded
in {num(graphs['record_seconds'])} s, then {graphs['replayed']:,} steps replayed and {graphs['eager']} run as they
are), so they no longer wait on kernel launches one by one.""" if graphs else
            """Like translation without compiling, the decode loop is bound by kernel launches. The compiled static
cache that speeds up translation would help here too, but GRPO's prompt lengths change at every step and each new
length would compile again (not measured).""")
md(f"""Sampling is {sample_s / p['seconds_per_step']:.0%} of the step: the merged copy refreshed, the prompts
read and {tokens} decode steps at batch {n_prompts * n_gen}, about {sample_s / tokens * 1000:.0f} ms per decode
step in all{bound}. {launches} The rest is the update: the loss forward over the prompts and completions ({num(p['loss forward'])} s)
and its backward pass with the optimizer step ({num(p['backward + optimizer'])} s), which the decoder does not
touch. Even a free sampler would leave a step of {num(update_s + p['rewards + advantages'])} s, at most
{n_prompts * n_gen / (update_s + p['rewards + advantages']):.0f} completions/s on this card."""
   + (f" In the benchmark run on the same kind of card (`{same}`), sampling from the merged copy gave "
      f"{num(run_fast.throughput)} completions/s against {num(run_unsloth.throughput)} with Unsloth's decode "
      "and its output-layer fix; the copy is rebuilt every step because the adapter changes."
      if run_fast is not None and run_unsloth is not None else ""))

# %% [markdown]
# ## Several GPUs
#
# Every training and translation chapter takes one more parameter, `num_gpus` (`auto` means every GPU the
# machine shows; more than the machine has stops the build before anything runs). Set it in a profile and build
# the book with the same command as ever. The shipped `fast_2gpu` profile is the fast recipe on two GPUs: the
# same effective batches, learning rates and steps, each step's batch split over the GPUs:

# %% tags=["remove-input"]
two = profiles.load_profile("fast_2gpu", check_device=False)
n_two = two["parameters"]["num_gpus"]
split_rows = []
for ch, stage in (("03_sft", "SFT"), ("04_grpo", "GRPO")):
    one_gpu, several = setting["fast", ch], profiles.effective_parameters(two, ch)
    unit = "pairs" if ch == "03_sft" else "completions"
    split_rows.append({"Stage": stage, "fast, 1 GPU": f"{one_gpu['batch_size']} × {one_gpu['grad_accum']} {unit}",
                       f"fast_2gpu, per GPU ({n_two} GPUs)": f"{several['batch_size']} × {several['grad_accum']} {unit}",
                       "per optimizer step": f"{per_step(several) * n_two:,} {unit}"})
display(pd.DataFrame(split_rows).set_index("Stage"))

# %% [markdown]
# ```bash
# python -m mtlib.book --profile fast_2gpu --out build/fast-2gpu
# ```
#
# With one GPU nothing changes. With more, `mtlib.parallel` does the work in fresh processes, started from the
# chapter's own process (so papermill, Jupyter and Colab drive it alike):
#
# ```bash
# accelerate launch --multi_gpu --num_processes 2 -m mtlib.parallel sft --spec <run>/launch/spec.json
# ```
#
# * **Training** (`sft`, `grpo`) is data-parallel: each process loads the 4-bit model onto its own GPU, TRL's
#   trainer runs under DistributedDataParallel, and the LoRA gradients are averaged every step. Rank 0 writes the
#   usual run folder and adapter; the chapter loads the adapter back into its model and goes on. Each GPU keeps
#   the profile's per-GPU batch, so one optimizer step sees `num_gpus` times as many examples at the same
#   learning rate. The chapters show the effective batch and the learning rate before training, and the run
#   record keeps them (`config.json`: `num_processes`, `parallel`; `parallel.json`: each process's device and
#   peak memory). To keep a one-GPU recipe exactly, divide `batch_size` or `grad_accum` by the number of GPUs,
#   as `fast_2gpu` does.
# * **Translation** (`evaluate`) splits each test set into one contiguous shard per process; the shards are
#   gathered, put back in order and scored by rank 0, which writes one evaluation record per test set, exactly
#   as on one GPU (plus the shard bounds).
# * **Backends.** Unsloth's 4-bit QLoRA SFT runs data-parallel (seen in a trial whose numbers are not in this
#   repository's results, so not shown here). Its GRPO patches have not been verified with several processes,
#   so multi-GPU GRPO loads the model with the plain transformers + PEFT + bitsandbytes backend
#   (`mtlib.parallel.MULTI_PROCESS_BACKEND`); the run record says which backend ran and why.
#
# **Several machines**, on paper: the same entry point runs under Accelerate's multi-node settings. Each node
# runs the launcher with the whole job's size and its own rank, for example on two nodes of eight GPUs each:
#
# ```bash
# accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank $NODE_RANK \
#     --main_process_ip $NODE0_ADDR --main_process_port 29500 -m mtlib.parallel sft --spec spec.json
# ```
#
# with `NODE_RANK` set to each node's rank (the first node is rank zero) and `NODE0_ADDR` the first node's
# address (or the same values in an `accelerate config` file; `torchrun --nnodes 2 --nproc_per_node 8
# --rdzv_backend c10d --rdzv_endpoint $NODE0_ADDR:29500 -m mtlib.parallel ...` is equivalent). The spec and the
# data it names must be on a filesystem every node sees, and the run folder too, since rank 0 writes it. The
# book's runner launches on one node only; a multi-node run means starting these commands on each node by hand or
# through the cluster's scheduler.
#
# ### Measured on several GPUs
#
# `benchmarks/gpu_multi.py` compares one GPU with two in one invocation (SFT non-padding tokens/s, GRPO
# completions/s, translating the four test sets, peak memory per card), on the same shape twin, with the fast
# profile's batches:
#
# ```bash
# python -m benchmarks.gpu_multi --out <out dir>
# ```

# %% tags=["remove-input"]
goals = bench.multi_gpu_goals()
stage_words = {s: n if n.isupper() else n.lower() for s, n in bench.STAGE_NAMES.items()}   # mid-sentence
goal_text = ", ".join(f"{stage_words.get(s, s)} at least {g:g} times" for s, g in goals.items())
tables = bench.multi_gpu_tables(multi_gpu_file)
if tables is None:
    md(f"**Nothing has been measured on several GPUs yet.** `{multi_gpu_file}` is not in `benchmarks/results/`: "
       "run `benchmarks/gpu_multi.py` on a machine with two GPUs and copy its `multi_gpu.json` there. "
       + (f"Its goals, as throughput on two GPUs over one GPU's: {goal_text}." if goals else ""))
else:
    multi_summary, multi_rows, multi_card = tables
    md(f"**Measured on {multi_card} cards** (`{multi_gpu_file}`), one GPU and several in one invocation, so the "
       "speed-ups compare numbers of one run on one kind of card."
       + (f" The goals, as throughput on several GPUs over one GPU's: {goal_text}." if goals else ""))
    if not multi_summary.empty:
        display(multi_summary)
    md(f"Each configuration of that run, on {multi_card} cards:")
    display(multi_rows)
