"""Where a fast GRPO step spends its time, on a CUDA host (the 3B shape twin in 4-bit + LoRA r16).

For a few batch shapes of the fast recipe it runs GRPO steps and splits each step's wall time into
the trainer's phases: sampling the completions (``generate``, through the merged copy), scoring them
(rewards, advantages and, where TRL needs them, old-policy log-probabilities: the rest of
``_generate_and_score_completions``), the loss forward (``compute_loss``) and the backward pass plus
optimizer (the rest of the step).

    python -m benchmarks.gpu_grpo_breakdown --out OUT_DIR [--shapes 32x4,64x2,128x1]
    python -m benchmarks.gpu_grpo_breakdown --out OUT_DIR --tiny     (CPU check)

Unsloth's GRPO loss has switches read from the environment (``UNSLOTH_GRPO_SEQ_PACKING=0``: the padded
batch instead of one packed row; ``UNSLOTH_GRPO_PREFIX_GROUPER=0``); the row records the ones set, so one
call per setting compares them. ``--profile``: torch.profiler's table of one more step after the timed ones.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships) or a raw folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--twin", default=None, help="reuse a shape twin built earlier")
    ap.add_argument("--shapes", default="32x4,64x2,128x1",
                    help="per-device batch x accumulation (fast recipe), or seed (the original recipe, 2x2)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--skip", type=int, default=1, help="warm-up steps left out (Unsloth compiles per new shape)")
    ap.add_argument("--max-completion", type=int, default=None,
                    help="longest completion (default: the book's); the random twin never stops early")
    ap.add_argument("--pad-multiple", type=int, default=None, help="GRPOParams.pad_to_multiple_of")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one step after the timed ones, per shape")
    ap.add_argument("--no-graphs", action="store_true",
                    help="decode the completions eagerly (default: decode steps replayed from CUDA graphs)")
    ap.add_argument("--label", default="", help="a name for this setting in the rows")
    ap.add_argument("--train-no-cudnn", action="store_true",
                    help="the loss's attention without cuDNN's (as the merged copy decodes; default: torch's choice)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from mtlib import modeling  # noqa: F401  (Unsloth first)
    import os
    import torch

    from mtlib import data, fastgen, tiny
    from mtlib.modeling import add_lora, load_model
    from mtlib.train import GRPOParams, build_grpo_trainer, training_session
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available() and not args.tiny
    train = data.load_pairs(args.data)["train"]
    twin = Path(args.twin or out / "twin")
    if not (twin / "config.json").exists():
        build = tiny.build_tiny_model if args.tiny else tiny.build_shape_twin
        build(twin, texts=list(train["en"][:4000]) + list(train["de"][:4000]))
    rows = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    clock = defaultdict(float)

    def timed(obj, name, phase):
        inner = getattr(obj, name, None)
        if inner is None:
            return

        def wrapper(*a, **k):
            sync()
            t = time.time()
            result = inner(*a, **k)
            sync()
            clock[phase] += time.time() - t
            return result
        setattr(obj, name, wrapper)

    class Steps(TrainerCallback):
        def __init__(self, profile_step=None):
            self.marks, self.start, self.profile_step, self.profiler = [], None, profile_step, None

        def on_train_begin(self, a, state, c, **kw):
            self.start = time.time()

        def on_step_begin(self, a, state, c, **kw):
            if self.profile_step is not None and state.global_step + 1 == self.profile_step:
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.profiler = torch.profiler.profile(activities=acts)
                self.profiler.__enter__()

        def on_step_end(self, a, state, c, **kw):
            sync()
            self.marks.append((time.time(), dict(clock)))
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)

    for shape in args.shapes.split(","):
        seed = shape == "seed"  # the original study's recipe: 2 x 2, gradient checkpointing, the model's own decoding
        bs, acc = (2, 2) if seed else (int(x) for x in shape.split("x"))
        model, tok = load_model(str(twin), max_seq_length=512, load_in_4bit=True, backend="hf" if args.tiny else "auto")
        model = add_lora(model, r=16, alpha=16, gradient_checkpointing=seed)
        params = GRPOParams(max_steps=args.steps + args.profile, save_steps=10_000, per_device_train_batch_size=bs,
                            gradient_accumulation_steps=acc, fast_generation=not seed,
                            max_completion_length=args.max_completion or (8 if args.tiny else 76),
                            pad_to_multiple_of=args.pad_multiple)
        steps = Steps(profile_step=args.steps + 1 if args.profile else None)  # one step more, not timed
        trainer = build_grpo_trainer(model, tok, train.select(range(4000)), params, output_dir=out / f"grpo-{shape}",
                                     callbacks=[steps])
        if args.no_graphs and params.fast_generation:
            from mtlib.fastgen import route_generate
            route_generate(trainer.model, graphs=False)
        clock.clear()
        timed(trainer.model, "generate", "generate")
        timed(trainer, "_generate_and_score_completions", "generate_and_score")
        timed(trainer, "compute_loss", "loss_forward")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        restricted = fastgen.sdpa_without_cudnn() if args.train_no_cudnn else contextlib.nullcontext()
        with training_session(), restricted:
            trainer.train()  # as mtlib.train runs every training
        (t0, c0), (t1, c1) = steps.marks[args.skip - 1], steps.marks[args.steps - 1]  # warm-up steps left out
        n = args.steps - args.skip
        per = {k: (c1.get(k, 0.0) - c0.get(k, 0.0)) / n for k in ("generate", "generate_and_score", "loss_forward")}
        step_s = (t1 - t0) / n
        times = [steps.start] + [m[0] for m in steps.marks]
        unsloth_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("UNSLOTH_GRPO")}
        row = dict(shape=shape, label=args.label, unsloth_env=unsloth_env, train_sdpa="no cuDNN" if args.train_no_cudnn else None,
                   decode_graphs=params.fast_generation and not args.no_graphs,
                   max_completion_length=params.max_completion_length, pad_to_multiple_of=args.pad_multiple,
                   steps_timed=n, warmup_seconds=round(t0 - steps.start, 2), step_seconds=[round(b - a, 2) for a, b in zip(times, times[1:])],
                   seconds_per_step=round(step_s, 2),
                   completions_per_s=round(bs * acc / step_s, 2),
                   generate_s=round(per["generate"], 2),
                   score_s=round(per["generate_and_score"] - per["generate"], 2),
                   loss_forward_s=round(per["loss_forward"], 2),
                   backward_and_optimizer_s=round(step_s - per["generate_and_score"] - per["loss_forward"], 2),
                   peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None)
        from mtlib import decode_graphs
        graphs = decode_graphs.installed((getattr(trainer.model, "_mtlib_routed_generate", None) or {}).get("copy"))
        row["decode_graph_stats"] = dict(graphs.stats, record_seconds=round(graphs.stats["record_seconds"], 2)) \
            if graphs is not None else None
        rows.append(row)
        print(json.dumps(row), flush=True)
        if steps.profiler is not None:
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            table = steps.profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            (out / f"profile_{args.label or 'run'}_{shape}.txt").write_text(table)
            print(table[:6000], flush=True)
        (out / f"grpo_breakdown{'_' + args.label if args.label else ''}.json").write_text(json.dumps(
            {"rows": rows, "card": torch.cuda.get_device_name(0) if cuda else "cpu"}, indent=1))
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
