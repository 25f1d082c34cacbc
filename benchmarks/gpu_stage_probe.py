"""Where chapter 3's seconds go on a CUDA host, one process per setting (the 3B shape twin, the fast profile).

The chapter's own calls, timed one by one: importing mtlib.modeling (Unsloth), loading the twin in 4 bits,
the baseline translation of every test set through one merged copy (twice: the second pass meets only
batch shapes seen before), then a few SFT steps of the fast recipe with each step's wall time. Each
translation records the CUDA caching allocator's counters (device allocations, retries after a failed
allocation), so a slow pass can be told apart from a slow kernel. Settings read at import (the allocator's
``PYTORCH_ALLOC_CONF``, ``UNSLOTH_BLOCK_COMPILE``) are chosen by the caller's environment; the row records them.

    python -m benchmarks.gpu_stage_probe --out OUT --label default [--sft-steps 60] [--passes 2]
    python -m benchmarks.gpu_stage_probe --out OUT --label tiny --tiny --train-size 64      (CPU check)
"""
from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

ENV_KEYS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "UNSLOTH_BLOCK_COMPILE", "UNSLOTH_COMPILE_DISABLE",
            "UNSLOTH_GRPO_SEQ_PACKING")
ALLOCATOR_COUNTERS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", required=True, help="the setting's name in the results file")
    ap.add_argument("--twin", default=None, help="reuse a shape twin built earlier (default: OUT/twin)")
    ap.add_argument("--passes", type=int, default=2, help="translation passes over the test sets (0: none)")
    ap.add_argument("--batch", type=int, default=1024, help="translation batch (the fast profile's)")
    ap.add_argument("--sft-steps", type=int, default=60)
    ap.add_argument("--sft-pad-multiple", type=int, default=None, help="SFTParams.pad_to_multiple_of")
    ap.add_argument("--cold-shapes", action="store_true",
                    help="instead of the passes: test 2016, then test 2017 mscoco (a batch shape not seen yet) under "
                         "torch.profiler, then test 2018 without and with cuDNN's attention (cold both times for cuDNN)")
    ap.add_argument("--graphs", action="store_true",
                    help="instead of the passes: each test set decoded eagerly, then with its decode steps replayed from "
                         "CUDA graphs, then eagerly again, through one merged copy; the tokens compared")
    ap.add_argument("--train-size", type=int, default=None, help="training pairs for SFT (default: all, as the book)")
    ap.add_argument("--train-no-cudnn", action="store_true",
                    help="SFT's attention without cuDNN's (fastgen.DECODE_SDPA_BACKENDS; default: torch's choice)")
    ap.add_argument("--keep-cache", action="store_true",
                    help="train on the allocator's cache as the translation left it (default: emptied, as mtlib.train does)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"label": args.label, "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}, "stages": {}}
    path = out / f"stage_probe_{args.label}.json"

    def save():
        path.write_text(json.dumps(result, indent=1) + "\n")

    def stage(name, seconds, **extra):
        result["stages"][name] = {"seconds": round(seconds, 2), **extra}
        print(f"[probe {args.label}] {name}: {seconds:.1f} s {extra or ''}", flush=True)
        save()

    t = time.time()
    from mtlib import modeling  # Unsloth first, as the chapters do
    stage("import mtlib.modeling", time.time() - t, since_process_start=round(time.time() - T0, 2))
    import torch

    from mtlib import data, fastgen, generate, tiny
    from mtlib.train import SFTParams, StepClock, build_sft_trainer, training_session

    cuda = torch.cuda.is_available() and not args.tiny
    result["card"] = torch.cuda.get_device_name() if cuda else "cpu"
    pairs = data.load_pairs(args.data)
    splits = [s for s in pairs if s != "train" and s != "validation"]
    twin = Path(args.twin or out / "twin")
    if not (twin / "config.json").exists():
        t = time.time()
        build = tiny.build_tiny_model if args.tiny else tiny.build_shape_twin
        build(twin, texts=data.sentences(pairs["train"], ["en", "de"]))
        stage("build twin", time.time() - t)
    t = time.time()
    model, tokenizer = modeling.load_model(str(twin), max_seq_length=512, load_in_4bit=cuda)
    stage("load model", time.time() - t)

    def counters():
        return {k: torch.cuda.memory_stats().get(k, 0) for k in ALLOCATOR_COUNTERS} if cuda else {}

    def timed_translate(runner, name, split, graphs=True, **extra):
        sources = list(pairs[split]["en"])[: (8 if args.tiny else None)]
        before = counters()
        t = time.time()
        outputs, st = generate.translate(model, tokenizer, sources, batch_size=args.batch, max_new_tokens=128,
                                         return_stats=True, decoder=runner, progress=False, graphs=graphs)
        after = counters()
        stage(name, time.time() - t, n=len(sources), new_tokens=st.new_tokens,
              allocator={k: after[k] - before[k] for k in after}, **extra)
        return outputs

    if args.graphs:
        with generate.decoding_model(model, fast_decode=True) as runner:
            for split in splits:
                eager = timed_translate(runner, f"translate {split} eager", split, graphs=False)
                graphed = timed_translate(runner, f"translate {split} graphs", split, graphs=True,
                                          peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 1) if cuda else None)
                again = timed_translate(runner, f"translate {split} eager again", split, graphs=False)
                result["stages"][f"translate {split} graphs"]["same_as_eager"] = round(
                    sum(a == b for a, b in zip(graphed, eager)) / len(eager), 4)
                result["stages"][f"translate {split} eager again"]["same_as_eager"] = round(
                    sum(a == b for a, b in zip(again, eager)) / len(eager), 4)
                save()
    elif args.cold_shapes:
        from torch.profiler import ProfilerActivity, profile
        test, _, mscoco, test2018 = splits
        with generate.decoding_model(model, fast_decode=True) as runner:
            timed_translate(runner, f"translate {test}", test)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                timed_translate(runner, f"translate {mscoco} (profiled)", mscoco)
            averages = prof.key_averages()
            tables = [averages.table(sort_by="self_cpu_time_total", row_limit=30)]
            if cuda:
                tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=20))
            (out / f"cold_shape_profile_{args.label}.txt").write_text("\n\n".join(tables))
            for cudnn in (False, True):  # True: torch's own choice, as before mtlib.fastgen.decoding_kernels
                kernels = generate.decoding_kernels
                if cudnn:
                    generate.decoding_kernels = fastgen.original_generation_masks
                try:
                    timed_translate(runner, f"translate {test2018} cudnn_sdp={cudnn}", test2018)
                finally:
                    generate.decoding_kernels = kernels
    elif args.passes:
        t = time.time()
        with generate.decoding_model(model, fast_decode=True) as runner:
            stage("merged copy", time.time() - t)
            for p in range(args.passes):
                for split in splits:
                    timed_translate(runner, f"translate pass {p + 1} {split}", split,
                                    peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 1) if cuda else None)

    if args.sft_steps:
        t = time.time()
        peft_model = modeling.add_lora(model, r=16, alpha=16, dropout=0.0, seed=3407, gradient_checkpointing=False)
        stage("add LoRA", time.time() - t)
        params = SFTParams(lr=4e-4, per_device_train_batch_size=8 if args.tiny else 128, gradient_accumulation_steps=1,
                           warmup_steps=10, max_steps=args.sft_steps, padding_free=False,
                           train_sampling_strategy="group_by_length", pad_to_multiple_of=args.sft_pad_multiple,
                           save_steps=10_000)
        clock = StepClock(torch.cuda.synchronize if cuda else None)

        t = time.time()
        train = pairs["train"] if args.train_size is None else pairs["train"].select(range(args.train_size))
        trainer = build_sft_trainer(peft_model, tokenizer, train, params, output_dir=str(out / "sft-probe"),
                                    callbacks=[clock])
        stage("SFT trainer setup", time.time() - t)
        t = time.time()
        before = counters()
        restricted = fastgen.sdpa_without_cudnn() if args.train_no_cudnn else contextlib.nullcontext()
        with training_session(empty_cache=not args.keep_cache), restricted:
            trainer.train()  # as mtlib.train runs every training
        after = counters()
        step_times = clock.step_seconds
        late = step_times[len(step_times) // 2:]
        first_began = clock.stamps[0] - step_times[0] - t if step_times else None
        stage("SFT train", time.time() - t, steps=len(step_times), step_seconds=step_times,
              before_first_step=round(first_began, 2) if first_began is not None else None,
              train_sdpa="no cuDNN" if args.train_no_cudnn else None, empty_cache=not args.keep_cache,
              first10=round(sum(step_times[:10]), 2), steady_step=round(sorted(late)[len(late) // 2], 3),
              allocator={k: after[k] - before[k] for k in after},
              peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 1) if cuda else None)
    result["total_seconds"] = round(time.time() - T0, 1)
    save()


if __name__ == "__main__":
    main()
