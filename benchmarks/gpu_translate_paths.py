"""Exploration on a CUDA host: which translation path brings 1,000 sentences x 64 tokens to 5 s?

Run once per path family, each in its own process (Unsloth patches the Llama classes for the whole
process, so the plain transformers path needs a process that never imports it):

    python -m benchmarks.gpu_translate_paths --data DIR --out OUT --twin /tmp/twin --adapter /tmp/adapter --family unsloth
    python -m benchmarks.gpu_translate_paths --data DIR --out OUT --twin /tmp/twin --adapter /tmp/adapter --family hf

The unsloth family builds the 3B shape twin and trains a LoRA adapter for a few steps (so greedy
decoding is not a coin toss between near-tied logits), saves it, and times Unsloth's decode; the hf
family loads the same twin and adapter with plain transformers + bitsandbytes. Each variant writes its
greedy outputs, so outputs can be compared across paths. Kept for the record (benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships) or a raw folder")
ap.add_argument("--out", required=True)
ap.add_argument("--twin", required=True)
ap.add_argument("--adapter", required=True)
ap.add_argument("--family", choices=("unsloth", "hf"), required=True)
ap.add_argument("--variants", default="")
ap.add_argument("--sft-steps", type=int, default=40)
ap.add_argument("--n", type=int, default=1000, help="sentences for the full-size timings (CPU check: a few)")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
if args.family == "hf":
    sys.modules["unsloth"] = None  # import unsloth -> ImportError: mtlib falls back to the plain backend

from mtlib import modeling  # noqa: E402  (imports Unsloth first in the unsloth family)
import torch  # noqa: E402

from mtlib import data, tiny  # noqa: E402
from mtlib.generate import translate  # noqa: E402

T0 = time.time()
ROWS = []


def record(**row):
    row.update(family=args.family, t=round(time.time() - T0, 1))
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    (out / f"paths_{args.family}.json").write_text(json.dumps(ROWS, indent=1))


dsd = data.load_pairs(args.data)
test_src = list(dsd["test"]["en"])


CUDA = torch.cuda.is_available()


def sync():
    if CUDA:
        torch.cuda.synchronize()


def peak_gb():
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if CUDA else None


def timed(label, model, tok, n, batch_size, **kw):
    srcs = test_src[:n]
    translate(model, tok, srcs[:8], batch_size=8, max_new_tokens=4, progress=False)
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    try:
        hyps, stats = translate(model, tok, srcs, batch_size=batch_size, max_new_tokens=64, min_new_tokens=64,
                                return_stats=True, progress=False, **kw)
    except Exception as exc:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        record(variant=label, error=repr(exc)[:400])
        return None
    sync()
    sec = time.time() - t
    record(variant=label, n=n, batch=stats.batch_size_used, seconds=round(sec, 2),
           seconds_1000=round(sec * 1000 / n, 1), setup_seconds=stats.setup_seconds, peak_gb=peak_gb())
    (out / f"hyps_{label}.json").write_text(json.dumps(hyps, ensure_ascii=False))
    return hyps


def profiled(label, model, tok, n=None, tokens=8, **kw):
    n = n or HALF
    from torch.profiler import ProfilerActivity, profile
    srcs = test_src[:n]
    kw = dict(batch_size=n, max_new_tokens=tokens, min_new_tokens=tokens, progress=False, **kw)
    translate(model, tok, srcs, **kw)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else []), record_shapes=True,
                 with_stack=True) as prof:
        t = time.time()
        translate(model, tok, srcs, **kw)
        sync()
        sec = time.time() - t
    ev = prof.key_averages(group_by_input_shape=True)
    text = ev.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60,
                    max_shapes_column_width=120)
    stack = prof.key_averages(group_by_stack_n=6).table(sort_by="self_cuda_time_total", row_limit=12,
                                                       max_name_column_width=60)
    (out / f"profile_{label}.txt").write_text(text + "\n\n" + stack)
    record(variant=label, what=f"profile {n} x {tokens} tokens", seconds=round(sec, 2),
           gpu_seconds=round(sum(e.self_device_time_total for e in ev) / 1e6, 2))


N, HALF = args.n, args.n // 2
want = set(filter(None, args.variants.split(",")))


def on(name):
    return not want or name in want


if args.family == "unsloth":
    from mtlib.modeling import add_lora, load_model
    from mtlib.train import SFTParams, build_sft_trainer
    if not (Path(args.twin) / "config.json").exists():
        train = dsd["train"]
        (tiny.build_shape_twin if CUDA else tiny.build_tiny_model)(args.twin, texts=list(train["en"][:4000]) + list(train["de"][:4000]))
        record(variant="setup", what="twin built")
    model, tok = load_model(args.twin, max_seq_length=512, load_in_4bit=True)
    model = add_lora(model, gradient_checkpointing=False)
    params = SFTParams(max_steps=args.sft_steps, save_steps=10_000, per_device_train_batch_size=128,
                       gradient_accumulation_steps=1, padding_free=False, lr=4e-4,
                       train_sampling_strategy="group_by_length", pad_to_multiple_of=16, logging_steps=10)
    trainer = build_sft_trainer(model, tok, dsd["train"].select(range(128 * args.sft_steps)), params,
                                output_dir="/tmp/sft-explore")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.save_pretrained(args.adapter)
    tok.save_pretrained(args.adapter)
    record(variant="setup", what="sft", losses=losses)
    if on("eager"):  # translate(fast_decode=True) as the fast profile runs it (no static cache)
        timed(f"unsloth-proc-fast-eager-bs{N}", model, tok, N, N, fast_decode=True)
    if on("twice"):  # the merged copy with a compiled static cache, called twice (the first call compiles)
        import os
        tag = "expandable" if "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") else "plain"
        for k in range(2):
            timed(f"unsloth-proc-fast-static-{tag}-alloc-run{k}", model, tok, N, N, fast_decode=True,
                  cache_implementation="static")
    if on("fast"):  # the fast path inside an Unsloth process: merged copy of pristine transformers classes
        timed(f"unsloth-proc-fast-bs{N}", model, tok, N, N, fast_decode=True)
        profiled("unsloth-proc-fast", model, tok, fast_decode=True)
    if on("head"):  # load_model gives lm_head a contiguous input (modeling.contiguous_head_input)
        timed(f"unsloth-4bit-bs{HALF}-headfix", model, tok, HALF, HALF)
        profiled("unsloth-4bit-headfix", model, tok)
    if on("profile"):  # Unsloth's decode as it comes, without that fix
        from mtlib.modeling import contiguous_head_input
        contiguous_head_input(model, on=False)
        profiled("unsloth-4bit", model, tok)
        contiguous_head_input(model)
else:
    from peft import PeftModel
    from mtlib.fastgen import merged_copy
    from mtlib.modeling import load_model
    model, tok = load_model(args.twin, max_seq_length=512, load_in_4bit=True, backend="hf")
    model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    if on("fast"):
        timed(f"hf-proc-fast-bs{N}", model, tok, N, N, fast_decode=True)
        profiled("hf-proc-fast", model, tok, fast_decode=True)
    if on("sdpa"):
        copy = merged_copy(model, attention=None)
        timed(f"hf-merged-sdpa-bs{N}", model=copy, tok=tok, n=N, batch_size=N)
        profiled("hf-merged-sdpa", copy, tok)
        del copy
    if on("static"):
        copy = merged_copy(model)
        for k in range(2):
            timed(f"hf-merged-static-bs{N}-run{k}", copy, tok, N, N, cache_implementation="static")
        del copy
    if on("plain"):
        timed(f"hf-4bit-bs{HALF}", model, tok, HALF, HALF)
