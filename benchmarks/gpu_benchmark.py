"""Side-by-side GPU benchmark: the original study's recipe ("seed") against the fast profile ("fast").

Builds the Llama-3.2-3B-Instruct shape twin (random weights, the small tokenizer), loads it in 4-bit with
LoRA r16 on the seven projections and measures, through the same mtlib functions the chapters call:
SFT throughput (non-padding tokens/s), translating the 1,000 test-2016 sentences (64 new tokens each)
and GRPO completions/s. Writes one table (markdown, CSV, JSON) under --out.

    python -m benchmarks.gpu_benchmark --data DATA_DIR --out OUT_DIR            (CUDA host, offline)
    python -m benchmarks.gpu_benchmark --data DATA_DIR --out OUT_DIR --tiny     (CPU check, tiny model)
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

RECIPES = {
    # The original notebook: batch 4 x accumulation 4 with Unsloth's offloaded gradient checkpointing,
    # translation in batches of 8, GRPO with one prompt's group of 4 completions a step.
    "seed": dict(gradient_checkpointing=True, sft=dict(per_device_train_batch_size=4, gradient_accumulation_steps=4),
                 translate=dict(batch_size=8, fast_decode=False),
                 grpo=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)),
    # The fast profile: large padded batches without checkpointing (80 GB hold the activations);
    # translation and GRPO's completions decoded by a merged bf16 copy (mtlib.fastgen), translation in
    # one batch, here with a static cache so transformers compiles the decode step (timed on the second
    # call; the chapters translate each split once and skip compilation), GRPO 32 prompts x 4 completions.
    "fast": dict(gradient_checkpointing=False,
                 sft=dict(per_device_train_batch_size=128, gradient_accumulation_steps=1, padding_free=False,
                          train_sampling_strategy="group_by_length", pad_to_multiple_of=16),
                 translate=dict(batch_size=1000, fast_decode=True, cache_implementation="static"),
                 grpo=dict(per_device_train_batch_size=32, gradient_accumulation_steps=4, fast_generation=True)),
    # The fast profile's translation as the chapters run it: the merged copy without compilation.
    "fast-eager": dict(gradient_checkpointing=False, translate=dict(batch_size=1000, fast_decode=True)),
    # The same batches decoded by the trained model itself (Unsloth's decode path): what the merged copy buys.
    "fast-unsloth-decode": dict(gradient_checkpointing=False,
                                translate=dict(batch_size=512, fast_decode=False),
                                grpo=dict(per_device_train_batch_size=32, gradient_accumulation_steps=4)),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships) or a raw folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="CPU check with the tiny model and small sizes")
    ap.add_argument("--recipes", default="seed,fast,fast-eager,fast-unsloth-decode")
    ap.add_argument("--parts", default="translate,sft,grpo,pipeline")
    ap.add_argument("--seed-translate-sentences", type=int, default=32,
                    help="the seed recipe translates this many sentences; its time is scaled to 1,000")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from mtlib import modeling  # noqa: F401  (imports Unsloth first where it is used)
    import torch

    from mtlib import data, tiny
    from mtlib.generate import translate
    from mtlib.modeling import add_lora, load_model
    from mtlib.train import GRPOParams, SFTParams, build_grpo_trainer, build_sft_trainer

    cuda = torch.cuda.is_available() and not args.tiny
    dsd = data.load_pairs(args.data)
    test_src = list(dsd["test"]["en"])
    train = dsd["train"]
    if args.tiny:
        test_src = test_src[:24]
    rows, samples = [], {}
    t_start = time.time()

    def record(**row):
        row["elapsed_s"] = round(time.time() - t_start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "benchmark.json").write_text(json.dumps({"rows": rows, "env": env}, indent=1))

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "card": torch.cuda.get_device_name(0) if cuda else "cpu"}
    for name in ("transformers", "trl", "peft", "unsloth", "bitsandbytes", "datasets"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass

    twin_dir = out / "twin"
    t = time.time()
    if args.tiny:
        tiny.build_tiny_model(twin_dir, texts=list(train["en"][:2000]) + list(train["de"][:2000]))
    else:
        tiny.build_shape_twin(twin_dir, texts=list(train["en"][:4000]) + list(train["de"][:4000]))
    record(stage="setup", recipe="-", what="build twin", seconds=round(time.time() - t, 1))

    def peak_gb():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None

    def reset_peak():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    from mtlib.train import StepClock

    n_new = 8 if args.tiny else 64
    for recipe in [r for r in args.recipes.split(",") if r]:
        spec = RECIPES[recipe]
        reset_peak()
        t = time.time()
        model, tok = load_model(str(twin_dir), max_seq_length=512, load_in_4bit=True,
                                backend="hf" if args.tiny else spec.get("backend", "auto"))
        model = add_lora(model, r=16, alpha=16, gradient_checkpointing=spec["gradient_checkpointing"])
        record(stage="setup", recipe=recipe, what="load 4-bit + LoRA", seconds=round(time.time() - t, 1),
               peak_gb=peak_gb())

        def bench_translate():
            tr = dict(spec["translate"])
            size = tr.pop("batch_size")
            n = min(args.seed_translate_sentences, len(test_src)) if recipe == "seed" else len(test_src)
            srcs = test_src[:n]
            if tr.get("cache_implementation") == "static":  # the first call of a shape compiles the decode step
                sync()
                t = time.time()
                translate(model, tok, srcs, batch_size=size, max_new_tokens=n_new, min_new_tokens=n_new,
                          progress=False, **tr)
                sync()
                record(stage="setup", recipe=recipe, what="translate: first call (compiles the decode step)",
                       seconds=round(time.time() - t, 1))
            else:
                translate(model, tok, srcs[:8], batch_size=8, max_new_tokens=4, progress=False, **tr)  # warm-up
            reset_peak()
            sync()
            t = time.time()
            hyps, stats = translate(model, tok, srcs, batch_size=size, max_new_tokens=n_new,
                                    min_new_tokens=n_new, return_stats=True, **tr)
            sync()
            sec = time.time() - t
            samples[recipe] = hyps[:64]
            if tr.get("fast_decode") and recipe == "fast":
                agreement(model, tok, srcs[:64], hyps[:64], record, recipe)
            scale = len(test_src) / n
            record(stage="translate", recipe=recipe, sentences=n, batch=str(stats.batch_size_used),
                   seconds=round(sec, 2), seconds_1000=round(sec * scale * 1000 / len(test_src), 1),
                   throughput=round(n / sec, 1), unit="sentences/s", peak_gb=peak_gb(),
                   setup_s=round(stats.setup_seconds, 2),
                   note="timed on %d sentences, scaled" % n if scale > 1 else "")

        def bench_sft():
            s = dict(spec["sft"])
            per_step = s["per_device_train_batch_size"] * s["gradient_accumulation_steps"]
            steps = 3 if args.tiny else (8 if per_step <= 64 else 6)
            params = SFTParams(max_steps=steps, save_steps=10_000, **s)
            clock = StepClock(sync)
            trainer = build_sft_trainer(model, tok, train.select(range(per_step * steps)), params,
                                        output_dir=out / f"sft-{recipe}", callbacks=[clock])
            trainer.args.include_num_input_tokens_seen = "non_padding"
            reset_peak()
            trainer.train()
            k = 2 if len(clock.stamps) > 3 else 0  # skip warm-up steps (compilation)
            sec = clock.stamps[-1] - clock.stamps[k]
            tokens = clock.tokens[-1] - clock.tokens[k]
            record(stage="sft", recipe=recipe, batch=f'{s["per_device_train_batch_size"]}x{s["gradient_accumulation_steps"]}',
                   steps_timed=len(clock.stamps) - 1 - k, seconds=round(sec, 2),
                   seconds_per_step=round(sec / max(1, len(clock.stamps) - 1 - k), 3),
                   throughput=round(tokens / sec), unit="non-padding tokens/s", peak_gb=peak_gb())

        def bench_grpo():
            g = spec["grpo"]
            steps = 3 if args.tiny else 4
            params = GRPOParams(max_steps=steps, save_steps=10_000,
                                max_completion_length=8 if args.tiny else 76, **g)
            clock = StepClock(sync)
            trainer = build_grpo_trainer(model, tok, train.select(range(2000)), params,
                                         output_dir=out / f"grpo-{recipe}", callbacks=[clock])
            gen_seconds = time_generate(trainer.model)
            reset_peak()
            trainer.train()
            per_step_completions = g["per_device_train_batch_size"] * g["gradient_accumulation_steps"]
            k = 1 if len(clock.stamps) > 2 else 0
            sec = clock.stamps[-1] - clock.stamps[k]
            n_steps = len(clock.stamps) - 1 - k
            record(stage="grpo", recipe=recipe, batch=f'{g["per_device_train_batch_size"]}x{g["gradient_accumulation_steps"]}',
                   steps_timed=n_steps, seconds=round(sec, 2), seconds_per_step=round(sec / max(1, n_steps), 2),
                   throughput=round(per_step_completions * n_steps / sec, 2), unit="completions/s",
                   peak_gb=peak_gb(), generate_share=round(sum(gen_seconds[-n_steps:]) / sec, 2) if gen_seconds else None)
        def bench_profile():
            if recipe == "fast":  # the model is the same in both recipes; profile it once
                profile_translate(model, tok, test_src[:512], out, record, recipe, cuda)

        # Training first: Unsloth keeps its decode buffers (sized for the largest batch) after generate().
        for part, fn in (("sft", bench_sft), ("grpo", bench_grpo), ("translate", bench_translate),
                         ("profile", bench_profile)):
            if part in args.parts and part in spec | {"profile": 1}:
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001  (record it, keep measuring the rest)
                    import traceback
                    traceback.print_exc()
                    record(stage=part, recipe=recipe, error=repr(exc)[:500])
                gc.collect()
        model = tok = None  # free the GPU before the next recipe
        reset_peak()

    if "pipeline" in args.parts:
        try:
            pipeline(twin_dir, train, dsd["test"], out, record, args.tiny)
        except Exception as exc:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            record(stage="pipeline", recipe="-", error=repr(exc)[:500])

    # Each recipe trains its own copy of the model first, so their translations are not compared with
    # each other; the fast path's fidelity is the teacher-forced agreement above.
    if samples:
        (out / "translations_sample.json").write_text(json.dumps(samples, ensure_ascii=False, indent=1))
    write_table(rows, env, out)


def profile_translate(model, tok, sources, out, record, recipe, cuda):
    """Where translation time goes: torch.profiler over 16 decode steps for a batch, own model vs merged copy."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mtlib.generate import translate
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for fast in (False, True):
        kw = dict(batch_size=len(sources), max_new_tokens=16, min_new_tokens=16, progress=False, fast_decode=fast)
        translate(model, tok, sources, **kw)  # warm-up (graph capture)
        with profile(activities=acts) as prof:
            t = time.time()
            translate(model, tok, sources, **kw)
            if cuda:
                torch.cuda.synchronize()
            sec = time.time() - t
        events = prof.key_averages()
        gpu = sum(e.self_device_time_total for e in events) / 1e6 if cuda else 0.0
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        (out / f"profile_translate_{recipe}_graphs{int(fast)}.txt").write_text(
            events.table(sort_by=key, row_limit=30))
        record(stage="profile", recipe=recipe, what=f"translate {len(sources)} x 16 tokens, merged copy={fast}",
               seconds=round(sec, 2), gpu_kernel_seconds=round(gpu, 2), kernels=sum(e.count for e in events
                                                                                       if "CUDA" in str(getattr(e, "device_type", ""))))


def agreement(model, tok, sources, hyps, record, recipe):
    """Greedy equality, measured where it can fail: teacher-forced next-token choices of the trained model
    (4-bit + LoRA, its own forward) and of the merged copy on the same sequences (prompt + fast output).

    Counts positions where the two argmaxes differ and the trained model's top-1 - top-2 logit margin there
    (near-ties flip under bf16 rounding; a real difference would show at large margins too).
    """
    import torch

    from mtlib.fastgen import merged_copy
    from mtlib.generate import build_prompts
    copy = merged_copy(model)
    prompts, _ = build_prompts(tok, sources)
    was_training = model.training
    model.eval()
    same = total = 0
    margins_all, margins_diff = [], []
    with torch.inference_mode():
        for prompt, hyp in zip(prompts, hyps):
            p_ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            h_ids = tok(hyp, add_special_tokens=False, return_tensors="pt").input_ids
            ids = torch.cat([p_ids, h_ids], dim=1).to(next(copy.parameters()).device)
            a = model(input_ids=ids).logits[0, p_ids.shape[1] - 1:-1].float()
            b = copy(input_ids=ids).logits[0, p_ids.shape[1] - 1:-1].float()
            top2 = a.topk(2, dim=-1).values
            margin = (top2[:, 0] - top2[:, 1]).cpu()
            diff = (a.argmax(-1) != b.argmax(-1)).cpu()
            same += int((~diff).sum())
            total += diff.numel()
            margins_all += margin.tolist()
            margins_diff += margin[diff].tolist()
    model.train(was_training)
    del copy

    def median(x):
        return round(sorted(x)[len(x) // 2], 4) if x else None
    record(stage="translate", recipe=f"{recipe} vs its own model", what="teacher-forced argmax agreement",
           throughput=f"{same}/{total}", median_margin=median(margins_all), median_margin_where_different=median(
               margins_diff), max_margin_where_different=round(max(margins_diff), 4) if margins_diff else None)


def time_generate(model):
    """Wall seconds of each generate() call the trainer makes (GRPO's generation share of a step)."""
    import torch
    seconds = []
    inner = model.generate

    def timed(*a, **k):
        t = time.time()
        result = inner(*a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.time() - t)
        return result
    model.generate = timed
    return seconds


def pipeline(twin_dir, train, test, out, record, tiny):
    """What the chapters do, on the GPU: run_sft -> reload its adapter -> run_grpo -> evaluate -> reload."""
    from mtlib.generate import evaluate
    from mtlib.modeling import add_lora, load_model, load_trained
    from mtlib.train import GRPOParams, SFTParams, run_grpo, run_sft
    t = time.time()
    runs = out / "runs"
    model, tok = load_model(str(twin_dir), max_seq_length=512, backend="hf" if tiny else "auto")
    model = add_lora(model)
    sft = run_sft(model, tok, train.select(range(64)), SFTParams(max_steps=3, save_steps=10_000), runs_root=runs)
    sft = load_trained(sft.run_dir, max_seq_length=512, trainable=True, gradient_checkpointing=False,
                       backend="hf" if tiny else "auto")  # as chapter 4 continues chapter 3's adapter
    grpo = run_grpo(sft, None, train.select(range(64)),
                    GRPOParams(max_steps=2, save_steps=10_000, max_completion_length=16, fast_generation=True),
                    runs_root=runs)
    ev = evaluate(grpo, test.select(range(32)), runs_root=runs, batch_size=32, max_new_tokens=16,
                  fast_decode=not tiny)
    reloaded = load_trained(grpo.run_dir)
    record(stage="pipeline", recipe="-", what="run_sft -> load_trained -> run_grpo -> evaluate -> load_trained",
           seconds=round(time.time() - t, 1), evaluated_stage=ev.stage, bleu=round(ev.metrics["bleu"], 2),
           reloaded_stage=reloaded.stage, sft_steps=sft.model is not None)


def write_table(rows, env, out):
    """One table: throughput, wall time, peak memory and the fast/seed ratio per stage."""
    from mtlib.bench import markdown, speedup_table
    table = speedup_table(rows)
    table.to_csv(out / "benchmark.csv", index=False)
    text = markdown(table, env)
    (out / "benchmark.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
