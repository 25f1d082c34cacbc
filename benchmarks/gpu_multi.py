"""One GPU against two: data-parallel SFT and GRPO, and the four test sets split across GPUs (mtlib.parallel).

In one invocation, on one machine, one configuration after the other, each in fresh processes:

    1gpu      one process on the first GPU (the chapters' in-process path, Unsloth where installed):
              SFT, translation of the four test sets, GRPO
    2gpu      two processes under ``accelerate launch`` (as mtlib.parallel runs them, Unsloth): SFT, translation
    2gpu-hf   two processes on the plain transformers + PEFT + bitsandbytes backend, the backend the book's
              multi-GPU GRPO uses: GRPO
    1gpu-hf   one process on the plain backend: GRPO (the same-backend baseline; run when the time budget allows)

The model is the Llama-3.2-3B-Instruct shape twin built on the spot (random bf16 weights, the twin's
tokenizer; ``mtlib.tiny.build_shape_twin``), loaded in 4 bits with LoRA r16 on the seven projections, with
the fast profile's settings: SFT at per-device batch 64, padded and length-grouped, without gradient
checkpointing; GRPO 32 prompts x 4 completions per device and step, completions from the merged copy;
translation in batches of 1,024 with the merged copy, 64 new tokens per sentence (random weights never stop
early). Rates exclude the first steps (warm-up, compilation). Every stage's failure is recorded and the
others go on. Writes ``--out/multi_gpu.json`` (rows, summary against the goals, environment) and prints a table.

    python -m benchmarks.gpu_multi --out <dir>                                       (CUDA host, 2 GPUs)
    python -m benchmarks.gpu_multi --out <dir> --tiny                                   (CPU check: gloo, tiny model)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from mtlib.bench import MULTI_GPU_GOALS

REPO = Path(__file__).resolve().parents[1]

TAG = "[gpu_multi]"
GOALS = MULTI_GPU_GOALS  # throughput of 2 GPUs as a multiple of 1 GPU's (declared in mtlib.bench)
CONFIGS = {  # name: (processes, backend, stages)
    "1gpu": (1, "auto", ("sft", "translate", "grpo")),
    "2gpu": (2, "auto", ("sft", "translate")),
    "2gpu-hf": (2, "hf", ("grpo",)),
    "1gpu-hf": (1, "hf", ("grpo",)),
}
OPTIONAL = {"1gpu-hf": 150}  # run only when this many seconds of the budget are left


def say(msg):
    print(f"{TAG} {msg}", flush=True)


# -- the driver ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships) or a raw folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpus", type=int, default=2, help="processes of the multi-GPU configurations")
    ap.add_argument("--configs", default="1gpu,2gpu,2gpu-hf,1gpu-hf", help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--twin", default=None, help="reuse a shape twin folder instead of building one")
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--sft-batch", type=int, default=64)
    ap.add_argument("--grpo-steps", type=int, default=8)
    ap.add_argument("--grpo-batch", default="32x4", help="completions per device x accumulation (fast profile)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--try-unsloth-grpo", action="store_true",
                    help="also run GRPO with Unsloth on the multi-GPU processes (unverified; after 2gpu's stages)")
    ap.add_argument("--budget", type=float, default=420, help="seconds; optional configurations are skipped "
                                                              "and workers stopped to stay within it")
    ap.add_argument("--tiny", action="store_true", help="CPU check: tiny model, small sizes, gloo processes")
    ap.add_argument("--worker", choices=("twin", "bench"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--stages", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "twin":
        return build_twin(args)
    if args.worker == "bench":
        return bench(args)

    t_start = time.time()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows_path.write_text("")
    result = {"args": vars(args), "env": {}, "rows": [], "summary": [], "workers": []}

    def save():
        result["rows"] = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
        env = next((r for r in result["rows"] if r.get("stage") == "env"), None)
        result["env"] = {k: v for k, v in (env or {}).items() if k not in ("stage", "config")}
        result["summary"] = summarize(result["rows"], args.gpus)
        result["total_seconds"] = round(time.time() - t_start, 1)
        (out / "multi_gpu.json").write_text(json.dumps(result, indent=1))

    def left():
        return args.budget - (time.time() - t_start)

    if not args.tiny:
        import torch
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        result["gpus_visible"] = visible
        if visible < args.gpus:
            say(f"only {visible} GPU(s) visible: the {args.gpus}-GPU configurations will fail and be recorded so")
    twin = Path(args.twin) if args.twin else out / "twin"
    if not args.twin:
        say(f"building the {'tiny model' if args.tiny else 'Llama-3.2-3B shape twin'} in {twin}")
        ok, seconds = run_worker(args, "twin", [sys.executable, __file__, "--worker", "twin", "--data", args.data,
                                                  "--out", str(out), *(["--tiny"] if args.tiny else [])],
                                 out, timeout=300)
        result["workers"].append({"config": "twin", "ok": ok, "seconds": round(seconds, 1)})
        if not ok:
            say(f"could not build the model: see {out / 'logs' / 'twin.log'}")
            save()
            return 1
    for name in [c for c in args.configs.split(",") if c]:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
        procs, backend, stages = CONFIGS[name]
        procs = args.gpus if procs > 1 else 1
        if name == "2gpu" and args.try_unsloth_grpo:
            stages = (*stages, "grpo")
        need = OPTIONAL.get(name, 30)
        if left() < need:
            say(f"{name}: skipped, {left():.0f} s of the {args.budget:.0f} s budget left (needs ~{need} s)")
            append_row(rows_path, {"stage": "-", "config": name, "skipped": f"time budget ({left():.0f} s left)"})
            continue
        cmd = worker_command(args, name, procs, stages, twin)
        say(f"{name}: {procs} process(es), {backend} backend, stages {', '.join(stages)}")
        # A required configuration may overrun the budget a little rather than lose its stage; the limit is
        # there for hung processes.
        limit = left() + 30 if name in OPTIONAL else max(180.0, left() + 30)
        ok, seconds = run_worker(args, name, cmd, out, timeout=limit, procs=procs, backend=backend)
        result["workers"].append({"config": name, "ok": ok, "seconds": round(seconds, 1)})
        if not ok:
            append_row(rows_path, {"stage": "-", "config": name, "error": f"worker exited early; see logs/{name}.log",
                                   "log_tail": tail(out / "logs" / f"{name}.log")})
        save()
    save()
    print_table(result)
    say(f"done in {time.time() - t_start:.0f} s; results: {out / 'multi_gpu.json'}")
    return 0


def worker_command(args, name, procs, stages, twin) -> list[str]:
    script = [__file__, "--worker", "bench", "--config", name, "--stages", ",".join(stages), "--twin", str(twin)]
    for flag in ("data", "out", "sft_steps", "sft_batch", "grpo_steps", "grpo_batch", "new_tokens"):
        script += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.tiny:
        script.append("--tiny")
    if procs == 1:
        return [sys.executable, *script]
    from mtlib.parallel import free_port
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *script]


def run_worker(args, name, cmd, out, timeout, procs=1, backend="auto"):
    """Run one worker (or a launcher of several), log its output, show its progress lines; (ok, seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if backend == "hf":
        env["MTLIB_BACKEND"] = "hf"  # the plain backend, Unsloth never imported
    if args.tiny:
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
    elif procs == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    log_path = out / "logs" / f"{name}.log"
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                if TAG in line:
                    print(line[line.index(TAG):].rstrip(), flush=True)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            say(f"{name}: still running after {timeout:.0f} s: stopped")
            rc = None
        finally:
            if proc.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(15)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
        reader.join(10)
    return rc == 0, time.time() - t0


def tail(path, n=15):
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def append_row(path, row):
    with open(path, "a") as f:  # short appends: lines from several processes do not interleave
        f.write(json.dumps(row) + "\n")


# -- the summary --------------------------------------------------------------------------------------------

UNITS = {"sft": "non-padding tokens/s", "grpo": "completions/s", "translate": "sentences/s"}


def summarize(rows, gpus):
    """One line per stage: the book's one-GPU path against its multi-GPU path, and the goal."""
    ok = {(r["stage"], r["config"]): r for r in rows if "throughput" in r and "error" not in r}
    lines = []
    pairs = [("sft", "1gpu", "2gpu", "book path"), ("translate", "1gpu", "2gpu", "book path, four test sets"),
             ("grpo", "1gpu", "2gpu-hf", "book path"), ("grpo", "1gpu-hf", "2gpu-hf", "same backend"),
             ("grpo", "1gpu", "2gpu", "the same backend on several processes (not the book's)")]
    for stage, one, many, what in pairs:
        a, b = ok.get((stage, one)), ok.get((stage, many))
        if not (a or b) or (many == "2gpu" and stage == "grpo" and not b):
            continue
        backends = f"{a['backend'] if a else '?'} on 1 GPU, {b['backend'] if b else '?'} on {gpus}"
        what = f"{what} ({backends})"
        ratio = round(b["throughput"] / a["throughput"], 2) if a and b else None
        goal = GOALS[stage] if what.startswith("book path") else None
        lines.append({"stage": stage, "comparison": what, "one_gpu": one, "several": many, "gpus": gpus,
                      "one_gpu_throughput": a and a["throughput"], "several_throughput": b and b["throughput"],
                      "unit": UNITS[stage], "speedup": ratio, "goal": goal,
                      "met": None if ratio is None or goal is None else ratio >= goal})
    return lines


def print_table(result):
    cols = ["stage", "config", "backend", "throughput", "unit", "seconds", "peak_gib_per_card", "note"]
    rows = [r for r in result["rows"] if r.get("stage") in UNITS or "error" in r or "skipped" in r]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        note = r.get("error") or r.get("skipped") or r.get("note", "")
        print("| " + " | ".join(str(r.get(c, "")) if c != "note" else str(note)[:80] for c in cols) + " |")
    print("\n| stage | comparison | 1 GPU | several | speedup | goal | met |\n|---|---|---|---|---|---|---|")
    for s in result["summary"]:
        print(f"| {s['stage']} | {s['comparison']} | {s['one_gpu_throughput']} | {s['several_throughput']} | "
              f"{s['speedup']} | {s['goal'] or ''} | {'' if s['met'] is None else s['met']} |")
    print(flush=True)


# -- the workers --------------------------------------------------------------------------------------------

def build_twin(args):
    from mtlib import data, tiny
    pairs = data.load_pairs(args.data)
    texts = list(pairs["train"]["en"][:4000]) + list(pairs["train"]["de"][:4000])
    out = Path(args.out) / "twin"
    t = time.time()
    if args.tiny:
        tiny.build_tiny_model(out, texts=texts)
    else:
        tiny.build_shape_twin(out, "meta-llama/Llama-3.2-3B-Instruct", texts=texts)
    say(f"model built in {time.time() - t:.0f} s")
    return 0


def bench(args):
    from mtlib import parallel
    state = parallel.init_process(cpu=args.tiny)  # pins the GPU, imports Unsloth first unless MTLIB_BACKEND=hf
    import torch

    from mtlib import data, modeling
    from mtlib.chapter import test_splits

    main_rank = state.is_main_process
    cuda = torch.cuda.is_available() and not args.tiny
    rows_path = Path(args.out) / "rows.jsonl"
    config = args.config

    def record(**row):
        row = {"config": config, "processes": state.num_processes, **row}
        if main_rank:
            append_row(rows_path, row)
            say(json.dumps(row))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def reset_peak():
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peaks():
        """Peak memory of every card (GiB), in rank order."""
        mine = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        return parallel.all_gather(mine, state)

    record(stage="env", **environment(torch, cuda))
    t = time.time()
    pairs = data.load_pairs(args.data)
    model, tok = modeling.load_model(args.twin, max_seq_length=512, load_in_4bit=not args.tiny)
    model = modeling.add_lora(model, r=16, alpha=16, gradient_checkpointing=False)
    backend = modeling.backend_of(model)
    record(stage="setup", what="load 4-bit + LoRA", backend=backend, seconds=round(time.time() - t, 1))

    from mtlib.train import StepClock

    def announce(st):
        if main_rank:
            say(f"{config} step {st.global_step}/{st.max_steps}")

    def stage_sft():
        from mtlib.train import SFTParams, build_sft_trainer
        steps = 6 if args.tiny else args.sft_steps
        batch = 4 if args.tiny else args.sft_batch
        params = SFTParams(per_device_train_batch_size=batch, gradient_accumulation_steps=1, max_steps=steps,
                           save_steps=10**6, warmup_steps=0, logging_steps=steps, padding_free=False,
                           train_sampling_strategy="group_by_length", pad_to_multiple_of=16,
                           optim="adamw_torch" if args.tiny else "adamw_8bit")
        split = pairs["train"].select(range(min(len(pairs["train"]), 2 * batch * steps * state.num_processes)))
        clock = StepClock(sync, on_step=announce)
        trainer = build_sft_trainer(model, tok, split, params, output_dir=Path(args.out) / f"sft-{config}",
                                    callbacks=[clock])
        trainer.args.include_num_input_tokens_seen = "non_padding"
        reset_peak()
        trainer.train()
        skip = 3 if len(clock.stamps) > 5 else 1
        sec = clock.stamps[-1] - clock.stamps[skip - 1]
        tokens = clock.tokens[-1] - clock.tokens[skip - 1]  # every process's tokens (the Trainer gathers them)
        timed = len(clock.stamps) - skip
        del trainer
        record(stage="sft", backend=backend, batch=f"{batch}x1 per card", steps_timed=timed,
               seconds=round(sec, 2), seconds_per_step=round(sec / timed, 3), throughput=round(tokens / sec),
               unit=UNITS["sft"], peak_gib_per_card=peaks(), note=f"first {skip} steps excluded")

    def stage_grpo():
        from mtlib.fastgen import unroute_generate
        from mtlib.train import GRPOParams, build_grpo_trainer
        per, accum = (4, 1) if args.tiny else map(int, args.grpo_batch.split("x"))
        steps = 4 if args.tiny else args.grpo_steps
        params = GRPOParams(per_device_train_batch_size=per, gradient_accumulation_steps=accum, num_generations=4,
                            max_completion_length=8 if args.tiny else 76, max_steps=steps, save_steps=10**6,
                            fast_generation=not args.tiny, optim="adamw_torch" if args.tiny else "adamw_8bit")
        clock = StepClock(sync, on_step=announce)
        split = pairs["train"].select(range(min(len(pairs["train"]), 4000)))
        trainer = build_grpo_trainer(model, tok, split, params, output_dir=Path(args.out) / f"grpo-{config}",
                                     callbacks=[clock])
        reset_peak()
        try:
            trainer.train()
        finally:
            unroute_generate(model)
        skip = 2 if len(clock.stamps) > 3 else 1
        sec = clock.stamps[-1] - clock.stamps[skip - 1]
        timed = len(clock.stamps) - skip
        completions = per * accum * state.num_processes * timed
        del trainer
        record(stage="grpo", backend=backend, batch=f"{per}x{accum} per card", steps_timed=timed,
               seconds=round(sec, 2), seconds_per_step=round(sec / timed, 2),
               throughput=round(completions / sec, 2), unit=UNITS["grpo"], peak_gib_per_card=peaks(),
               note=f"first {skip} steps excluded; {per * accum * state.num_processes} completions a step")

    def stage_translate():
        names = test_splits(pairs)
        n_new = 8 if args.tiny else args.new_tokens
        kw = dict(batch_size=24 if args.tiny else 1024, max_new_tokens=n_new, min_new_tokens=n_new,
                  fast_decode=True, progress=False)
        sources = {s: list(pairs[s]["en"][:24] if args.tiny else pairs[s]["en"]) for s in names}
        from mtlib.generate import translate  # a warm-up call on every process, not timed
        translate(model, tok, sources[names[0]][:16], batch_size=16, max_new_tokens=4, fast_decode=True, progress=False)
        reset_peak()
        per_split, setup, shards = {}, 0.0, []
        for s in names:
            translator = parallel.sharded_translator(state)
            parallel.all_gather(None, state)  # start together
            outputs, stats = translator(model, tok, sources[s], return_stats=True, **kw)
            if len(outputs) != len(sources[s]) or any(o is None for o in outputs):
                raise RuntimeError(f"{s}: {len(outputs)} outputs for {len(sources[s])} sentences")
            per_split[s] = round(stats.seconds, 2)
            setup = max(setup, stats.setup_seconds)
            shards.append([[x["start"], x["stop"]] for x in translator.shards])
        n = sum(len(v) for v in sources.values())
        total = sum(per_split.values())
        record(stage="translate", backend=backend, batch=str(kw["batch_size"]), sentences=n,
               seconds=round(total, 2), seconds_per_split=per_split, throughput=round(n / total, 1),
               unit=UNITS["translate"], peak_gib_per_card=peaks(), merged_copy_setup_s=round(setup, 2),
               shards=shards, note=f"{len(names)} test sets, {n_new} new tokens each, merged bf16 copy")

    stages = {"sft": stage_sft, "grpo": stage_grpo, "translate": stage_translate}
    for name in args.stages.split(","):
        try:
            stages[name]()
        except Exception as exc:  # noqa: BLE001  record it, keep measuring the rest
            traceback.print_exc()
            row = {"stage": name, "config": config, "processes": state.num_processes, "backend": backend,
                   "rank": state.process_index, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            append_row(rows_path, row)  # from whichever process failed
            say(json.dumps(row))
        reset_peak()
    if state.num_processes > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def environment(torch, cuda) -> dict:
    import platform
    from importlib import metadata
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "card": torch.cuda.get_device_name() if cuda else "cpu"}
    for name in ("transformers", "trl", "peft", "accelerate", "unsloth", "bitsandbytes", "datasets"):
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    return env


if __name__ == "__main__":
    from mtlib.parallel import exit_worker
    exit_worker(main())
