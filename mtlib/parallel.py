"""Several GPUs: data-parallel SFT and GRPO, and test sets split across GPUs, launched through Accelerate.

The chapters do not change; the profile key ``num_gpus`` (1 by default, ``auto``: every visible GPU) decides.
With one GPU nothing changes: training and translation run in the chapter's own process. With N > 1 the
chapter's process writes a *spec* (the model to load, its current LoRA adapter, the data, the parameters)
and runs ::

    accelerate launch --multi_gpu --num_processes N -m mtlib.parallel {sft,grpo,evaluate} --spec SPEC.json

Each process loads the model on its own GPU (``LOCAL_RANK``), so papermill, a plain Python session and
Colab can all drive it. **Training**: TRL's trainer under DistributedDataParallel; rank 0 writes the usual
run record and adapter (:class:`mtlib.results.Run`, ``<run>/adapter``), which the launching process then
loads back into its own model, so the chapter goes on as if it had trained in process. **Translation**:
each process translates one contiguous shard of each test set; the shards are gathered, put back in
order, and rank 0 scores them and writes one evaluation record per test set, as
:func:`mtlib.generate.evaluate` does (it *is* ``evaluate``, given a sharded translator).

Backends (:data:`MULTI_PROCESS_BACKEND`): Unsloth's 4-bit QLoRA SFT was run data-parallel (two H200s,
torchrun, TRL's SFTTrainer unchanged); its GRPO patches were not verified in several processes, so
multi-GPU GRPO runs on the plain transformers + PEFT + bitsandbytes backend. The run record names the
backend used and why (``config.json``: ``backend``, ``parallel.backend_note``; ``parallel.json``).

Several nodes follow the same pattern with Accelerate's usual settings (``--num_machines``,
``--machine_rank``, ``--main_process_ip``/``--main_process_port``, or an ``accelerate config`` file);
:func:`launch_command` builds the single-node command this module runs.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .errors import ConfigError, MtlibError, TrainingError
from .project import REPO_ROOT
from .prompts import template_date

TAG = "[mtlib.parallel]"              # lines the workers print for the launching process to show
STAGES = ("sft", "grpo", "evaluate")
CPU_ENV = "MTLIB_PARALLEL_CPU"          # "1": on a machine without CUDA, num_gpus N means N CPU processes (gloo)
# The backend of each stage's worker processes when several run ("auto": Unsloth where usable).
MULTI_PROCESS_BACKEND = {"sft": "auto", "grpo": "hf", "evaluate": "auto"}
BACKEND_NOTES = {
    ("sft", "unsloth"): "Unsloth's 4-bit QLoRA SFT runs data-parallel (each process on its own GPU, TRL's "
                        "SFTTrainer under DDP); seen working on two H200s.",
    ("grpo", "hf"): "GRPO on several processes runs on the plain transformers + PEFT + bitsandbytes backend: "
                    "Unsloth's GRPO patches are not verified with several processes.",
    ("grpo", "unsloth"): "Unsloth's GRPO on several processes was asked for explicitly: not verified.",
}


def backend_note(stage: str, backend: str, num_processes: int) -> str | None:
    """Why the worker processes use ``backend`` (None with one process: the in-process choice)."""
    if num_processes == 1:
        return None
    if backend == "hf" and stage != "grpo":
        return "the plain transformers + PEFT backend (no CUDA, or Unsloth not installed)"
    return BACKEND_NOTES.get((stage, backend), f"{backend} backend in every process")


# -- how many ------------------------------------------------------------------------------------------

def cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_processes_allowed() -> bool:
    """Whether ``num_gpus`` > 1 may run as CPU processes here (``$MTLIB_PARALLEL_CPU=1`` on a machine without
    CUDA: tests and laptops, with the gloo backend)."""
    return os.environ.get(CPU_ENV) == "1" and cuda_device_count() == 0


def resolve_num_gpus(value=1, where: str = "parameters") -> int:
    """``num_gpus`` as a number of processes: an int >= 1, or ``"auto"`` (every visible GPU, at least 1).

    The value is checked against its declaration (:data:`mtlib.parameters.SCHEMA`); more GPUs than the
    machine has is a ConfigError too, raised before any model loads. ``where`` names the profile or chapter.
    """
    from .parameters import check_value
    if value is None:
        return 1
    check_value("num_gpus", value, where)
    count = cuda_device_count()
    if value == "auto":
        return max(1, count)
    if value > 1 and value > count and not cpu_processes_allowed():
        raise ConfigError(f"{where}: parameter 'num_gpus' is {value} but this machine has {count} CUDA device(s): "
                          f"use num_gpus: auto or at most {max(1, count)}")
    return value


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``n`` items that process ``rank`` of ``world`` handles.

    The first ``n % world`` processes get one item more; together the slices cover ``range(n)`` once.
    """
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def batch_summary(stage: str, params, num_processes: int) -> dict:
    """What one optimizer step sees on ``num_processes`` processes, and at which learning rate.

    Each process keeps its per-device batch, so the effective batch grows with the number of processes
    while the learning rate stays the profile's; both are recorded so runs stay comparable.
    """
    per, accum = params.per_device_train_batch_size, params.gradient_accumulation_steps
    out = {"num_processes": num_processes, "per_device_batch_size": per, "grad_accum": accum,
           "effective_batch_size": per * accum * num_processes, "one_gpu_effective_batch_size": per * accum,
           "lr": params.lr, "num_steps": params.max_steps}
    if stage == "grpo":
        out["completions_per_step"] = out["effective_batch_size"]
        out["prompts_per_step"] = out["effective_batch_size"] // params.num_generations
    else:
        out["examples_seen"] = out["effective_batch_size"] * params.max_steps
    return out


def choose_backend(stage: str, num_processes: int, backend: str | None = None) -> str:
    """The backend the worker processes load the model with: ``backend`` if given, else
    :data:`MULTI_PROCESS_BACKEND` (one process: the in-process choice, Unsloth where usable)."""
    from .modeling import resolve_backend
    return resolve_backend(backend or (MULTI_PROCESS_BACKEND[stage] if num_processes > 1 else "auto"))


# -- launching -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(stage: str, spec_path, num_processes: int, port: int | None = None) -> list[str]:
    """``accelerate launch`` of ``python -m mtlib.parallel STAGE --spec SPEC`` on ``num_processes`` processes."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes > 1:
        cmd += ["--multi_gpu"]  # the torchrun launcher; on CPU $ACCELERATE_USE_CPU makes the processes use gloo
    cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(port or free_port()),
            "-m", "mtlib.parallel", stage, "--spec", str(spec_path)]
    return cmd


def launch_env(backend: str, cpu: bool) -> dict:
    """The workers' environment: this one, plus the backend, CPU mode and mtlib on the path."""
    from .modeling import BACKEND_ENV
    env = dict(os.environ)
    env[BACKEND_ENV] = backend
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch(stage: str, spec_path, num_processes: int, backend: str, cpu: bool = False, log_path=None,
           timeout: float | None = None, echo=print) -> float:
    """Run the workers and wait; ``echo`` gets their progress lines. Returns the wall seconds.

    The whole output goes to ``log_path`` (default: next to the spec). A non-zero exit, or ``timeout``,
    raises TrainingError with the end of the log; an interrupt stops the workers too.
    """
    spec_path = Path(spec_path)
    log_path = Path(log_path or spec_path.with_name(f"{stage}.log"))
    cmd = launch_command(stage, spec_path, num_processes)
    echo(f"{TAG} {stage}: {num_processes} processes ({backend} backend{', CPU' if cpu else ''}); log: {log_path}")
    tail: collections.deque = collections.deque(maxlen=80)
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=launch_env(backend, cpu), start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                if TAG in line:  # after a progress bar's carriage return, maybe
                    echo(line[line.index(TAG):].rstrip("\n"))
            log.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:  # timeout or KeyboardInterrupt: stop every worker, not only the launcher
            _kill(proc)
            reader.join(5)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise TrainingError(f"{stage} on {num_processes} processes ran past {timeout} s and was stopped; "
                                    f"log: {log_path}") from None
            raise
        reader.join(30)
    seconds = time.time() - t0
    if rc != 0:
        raise TrainingError(f"{stage} on {num_processes} processes failed (exit {rc}); full log: {log_path}\n"
                            + _error_excerpt(list(tail)))
    return seconds


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]:\s*)?([\w.]+(Error|Exception|Interrupt)|KeyboardInterrupt)\b(:|$)")


def _error_excerpt(lines: list[str], n: int = 12) -> str:
    """The end of the first worker traceback (its exception line last), rather than the launcher's."""
    found = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line)
             and "ChildFailedError" not in line and "CalledProcessError" not in line]
    end = (found or [len(lines) - 1])[0] + 1
    return "\n".join(lines[max(0, end - n):end])


# -- the launching side: training ---------------------------------------------------------------------

def run_sft(model, tokenizer, train_split, params=None, num_processes: int = 2, runs_root="runs", name: str = "sft",
            src_lang: str = "en", tgt_lang: str = "de", config: dict | None = None, max_seq_length: int | None = None,
            load_in_4bit: bool | None = None, gradient_checkpointing: bool | None = None, backend: str | None = None,
            cpu: bool | None = None, timeout: float | None = None, echo=print):
    """:func:`mtlib.train.run_sft` on ``num_processes`` data-parallel processes; the same run record and adapter.

    ``model`` (with LoRA adapters, or a TrainedModel) stays in this process; its current adapter is the
    start, and the trained adapter is loaded back into it. ``max_seq_length`` (default: ``params``'),
    ``load_in_4bit`` and ``gradient_checkpointing`` (default: read from ``model``) say how the workers load it.
    """
    from .train import SFTParams
    params = (params or SFTParams()).validate()
    return _train("sft", model, tokenizer, train_split, params, num_processes, runs_root, name, src_lang, tgt_lang,
                  config, max_seq_length or params.max_seq_length, load_in_4bit, gradient_checkpointing, backend, cpu,
                  timeout, echo, rewards=None)


def run_grpo(model, tokenizer, train_split, params=None, num_processes: int = 2, runs_root="runs",
             name: str = "grpo", rewards=None, src_lang: str = "en", tgt_lang: str = "de", config: dict | None = None,
             max_seq_length: int = 512, load_in_4bit: bool | None = None, gradient_checkpointing: bool | None = None,
             backend: str | None = None, cpu: bool | None = None, timeout: float | None = None, echo=print):
    """:func:`mtlib.train.run_grpo` on ``num_processes`` data-parallel processes (plain backend by default,
    see :data:`MULTI_PROCESS_BACKEND`); ``model`` may be a TrainedModel from SFT (its adapter is continued).

    ``rewards`` must be names (:data:`mtlib.rewards.REWARDS`): functions cannot travel to other processes.
    """
    from .train import GRPOParams
    params = (params or GRPOParams()).validate()
    return _train("grpo", model, tokenizer, train_split, params, num_processes, runs_root, name, src_lang, tgt_lang,
                  config, max_seq_length, load_in_4bit, gradient_checkpointing, backend, cpu, timeout, echo,
                  rewards=rewards)


def _train(stage, model, tokenizer, train_split, params, num_processes, runs_root, name, src_lang, tgt_lang, config,
           max_seq_length, load_in_4bit, gradient_checkpointing, backend, cpu, timeout, echo, rewards):
    import dataclasses

    from .modeling import TrainedModel, base_name_of, save_adapter
    from .results import Run
    from .train import _ensure_lora

    if rewards is not None:
        if any(callable(r) for r in rewards):
            raise ConfigError("rewards for several processes must be names in mtlib.rewards.REWARDS, not functions")
        params = dataclasses.replace(params, rewards=list(rewards), reward_weights=params.reward_weights
                                     if len(params.reward_weights) == len(rewards) else [1.0] * len(rewards))
        params.validate()
    extra = {}
    if isinstance(model, TrainedModel):
        if stage == "grpo":
            extra = {"from_stage": model.stage, "from_run": model.run_dir, "from_adapter": model.adapter_dir}
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        model = model.model
    model = _ensure_lora(model)
    cpu = _use_cpu(cpu)
    backend = choose_backend(stage, num_processes, backend)
    base_name = base_name_of(model)
    load = {"max_seq_length": int(max_seq_length),
            "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)) if load_in_4bit is None else load_in_4bit,
            "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", True))
            if gradient_checkpointing is None else gradient_checkpointing,
            "backend": backend}
    parallel = {**batch_summary(stage, params, num_processes), "launcher": "accelerate launch", "backend": backend,
                "backend_note": backend_note(stage, backend, num_processes)}
    run = Run.create(stage, {"model": base_name, "backend": backend, "params": asdict(params),
                             "prompt_date": template_date(tokenizer), "n_train": len(train_split), "src_lang": src_lang, "tgt_lang": tgt_lang, **extra,
                             **(config or {}), "num_processes": num_processes, "parallel": parallel},
                     root=runs_root, name=name)
    work = run.path / "launch"
    work.mkdir()
    try:
        save_adapter(model, tokenizer, work / "start_adapter", stage=stage, base_name=base_name)
        train_split.save_to_disk(str(work / "train"))
        spec = {"stage": stage, "cpu": cpu, "run_dir": str(run.path), "adapter": str(work / "start_adapter"),
                "train": str(work / "train"), "load": load, "params": asdict(params), "src_lang": src_lang,
                "tgt_lang": tgt_lang}
        (work / "spec.json").write_text(json.dumps(spec, indent=1, default=str))
        seconds = launch(stage, work / "spec.json", num_processes, backend, cpu=cpu, timeout=timeout, echo=echo)
    except BaseException as exc:
        if run.status != "finished":
            run.fail(exc)
        raise
    if run.status != "finished":
        raise TrainingError(f"{stage} on {num_processes} processes exited without finishing run {run.path}")
    info = run.read_json("parallel.json") or {}
    run.write_json("parallel.json", {**info, "launch_seconds": seconds})
    load_adapter_weights(model, run.path / "adapter")
    for path in (work / "start_adapter", work / "train"):  # the spec and the log stay with the record
        shutil.rmtree(path, ignore_errors=True)
    return TrainedModel(model, tokenizer, stage=stage, run_dir=run.path, adapter_dir=run.path / "adapter",
                        base_name=base_name)


def _use_cpu(cpu: bool | None) -> bool:
    return cuda_device_count() == 0 if cpu is None else bool(cpu)


def load_adapter_weights(model, adapter_dir) -> None:
    """Copy a saved LoRA adapter's weights into ``model`` (same LoRA configuration), in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise TrainingError(f"no trained adapter at {path}")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise TrainingError(f"the adapter at {path} does not fit the model: unexpected {unexpected[:3]}")


# -- the launching side: evaluation -------------------------------------------------------------------

def evaluate_splits(trained, splits: dict, num_processes: int = 2, runs_root="runs", name: str | None = None,
                    src_lang: str = "en", tgt_lang: str = "de", batch_size: int = 64, max_new_tokens: int = 128,
                    config: dict | None = None, max_seq_length: int = 512, load_in_4bit: bool | None = None,
                    backend: str | None = None, cpu: bool | None = None, timeout: float | None = None, echo=print,
                    **translate_kwargs) -> dict:
    """:func:`mtlib.generate.evaluate` of every split in ``splits`` ({name: Dataset}), each split's sentences
    shared out over ``num_processes`` processes; one run record per split. Returns {split: Evaluation}."""
    from datasets import DatasetDict

    import pandas as pd

    from .generate import Evaluation, TranslateStats
    from .modeling import as_trained, base_name_of, save_adapter
    from .results import read_json

    trained = as_trained(trained)
    cpu = _use_cpu(cpu)
    backend = choose_backend("evaluate", num_processes, backend)
    Path(runs_root).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".launch-evaluate-", dir=runs_root))
    model = trained.model
    adapter = None
    if hasattr(model, "peft_config"):  # its current weights, whatever they are (saved or not)
        adapter = str(save_adapter(model, trained.tokenizer, work / "adapter", stage=trained.stage,
                                   base_name=base_name_of(model)))
    DatasetDict(dict(splits)).save_to_disk(str(work / "splits"))
    spec = {"stage": "evaluate", "cpu": cpu, "model": base_name_of(model), "adapter": adapter,
            "load": {"max_seq_length": int(max_seq_length), "backend": backend,
                     "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False))
                     if load_in_4bit is None else load_in_4bit},
            "record": {"stage": trained.stage, "base_name": trained.base_name, "run_dir": trained.run_dir,
                       "adapter_dir": trained.adapter_dir},
            "splits": str(work / "splits"), "split_names": list(splits), "runs_root": str(runs_root),
            "name": name, "src_lang": src_lang, "tgt_lang": tgt_lang, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "config": {**(config or {}), "num_processes": num_processes},
            "translate_kwargs": translate_kwargs, "result": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec, indent=1, default=str))
    launch("evaluate", work / "spec.json", num_processes, backend, cpu=cpu, timeout=timeout, echo=echo)
    result = read_json(work / "result.json")
    if not result or set(result) != set(splits):
        raise MtlibError(f"the evaluation processes did not report every split; see {work}")
    out = {}
    for split, run_dir in result.items():
        run_dir = Path(run_dir)
        (run_dir / "launch").mkdir(exist_ok=True)  # the workers' log stays with each record
        shutil.copy2(work / "evaluate.log", run_dir / "launch" / "evaluate.log")
        with open(run_dir / "translations.jsonl", encoding="utf-8") as f:  # as written: no dtype guessing
            translations = pd.DataFrame([json.loads(line) for line in f])
        scores = read_json(run_dir / "metrics.json")[split]
        out[split] = Evaluation(metrics=scores, translations=translations, run_dir=run_dir, stage=trained.stage,
                                stats=TranslateStats(**read_json(run_dir / "translate_stats.json")),
                                per_split={split: scores})
    shutil.rmtree(work, ignore_errors=True)  # kept above on failure, for the log
    return out


# -- the worker side ----------------------------------------------------------------------------------

class _NoRecord:
    """The run record of a non-main process: rank 0 writes the real one, the others write nothing."""
    records = False

    def __init__(self, path):
        self.path = Path(path)

    def write_json(self, *args, **kwargs):
        return None

    def timer(self, phase):
        import contextlib
        return contextlib.nullcontext()

    def finish(self, *args, **kwargs):
        return self

    def fail(self, exc):
        return self

    def _status(self, *args, **kwargs):
        return None


def init_process(cpu: bool = False):
    """Join the process group (NCCL on GPUs, gloo on CPU) with this process pinned to its GPU; returns
    Accelerate's ``PartialState`` (``process_index``, ``num_processes``, ``is_main_process``)."""
    import torch
    from .modeling import local_device_index
    cpu = cpu or not torch.cuda.is_available()
    if not cpu:
        torch.cuda.set_device(local_device_index())  # before Unsloth's import touches a device
    from . import modeling  # noqa: F401  (Unsloth before transformers/trl, unless $MTLIB_BACKEND=hf)
    from accelerate import PartialState
    return PartialState(cpu=cpu)


def all_gather(obj, state) -> list:
    """``obj`` of every process, in rank order (one process: ``[obj]``)."""
    if state.num_processes == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * state.num_processes
    dist.all_gather_object(out, obj)
    return out


def _peak_memory() -> dict:
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"device": torch.cuda.get_device_name(), "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
                "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}
    from .results import peak_memory_gb
    return {"device": "cpu", **peak_memory_gb()}


def sharded_translator(state, echo=None):
    """A :func:`mtlib.generate.translate` replacement for ``evaluate(translator=...)``: every process translates
    its contiguous shard; the shards are gathered and concatenated in order. Each process must call it with
    the same sentences. Returns ``(outputs, TranslateStats)`` on every process (the stats summed over shards,
    ``seconds`` the wall time until the last shard arrived); the per-process details are in ``.shards``."""
    from .generate import TranslateStats, translate

    def run(model, tokenizer, sources, return_stats=False, progress=True, **kwargs):
        sources = list(sources)
        t0 = time.time()
        start, stop = shard_bounds(len(sources), state.num_processes, state.process_index)
        payload = {"rank": state.process_index, "start": start, "stop": stop, "outputs": [], "stats": None,
                   "error": None}
        try:
            if stop > start:
                outputs, stats = translate(model, tokenizer, sources[start:stop], return_stats=True,
                                           progress=progress and state.is_main_process, **kwargs)
                payload.update(outputs=outputs, stats=stats.__dict__)
        except Exception as exc:  # every process must reach the gather, or the others would wait forever
            payload["error"] = f"{type(exc).__name__}: {exc}"
        payload["seconds"] = time.time() - t0
        payload.update(_peak_memory())
        shards = all_gather(payload, state)
        failed = [s for s in shards if s["error"]]
        if failed:
            raise MtlibError("translation failed in " + "; ".join(f"process {s['rank']}: {s['error']}" for s in failed))
        covered = [i for s in shards for i in range(s["start"], s["stop"])]
        if covered != list(range(len(sources))):  # each sentence exactly once, in order
            raise MtlibError(f"the shards do not cover the {len(sources)} sentences once each, in order")
        outputs = [o for s in shards for o in s["outputs"]]
        done = [s["stats"] for s in shards if s["stats"]]
        stats = TranslateStats(
            n=len(sources), truncated=sum(s["truncated"] for s in done),
            batch_size_used=min((s["batch_size_used"] for s in done), default=kwargs.get("batch_size", 0)),
            oom_retries=sum(s["oom_retries"] for s in done), seconds=time.time() - t0,
            new_tokens=sum(s["new_tokens"] for s in done), setup_seconds=max((s["setup_seconds"] for s in done),
                                                                             default=0.0))
        run.shards = [{k: v for k, v in s.items() if k != "outputs"} for s in shards]
        if echo and state.is_main_process:
            echo(f"{TAG} translated {len(sources)} sentences on {state.num_processes} processes in "
                 f"{stats.seconds:.1f} s")
        return (outputs, stats) if return_stats else outputs

    run.shards = []
    return run


def _echo(line):
    print(line, flush=True)


def _progress_callback(stage, state):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, st, control, logs=None, **kwargs):
            if state.is_main_process and logs:
                shown = "  ".join(f"{k} {v:.4g}" for k, v in logs.items() if isinstance(v, (int, float)) and k in
                                  ("loss", "reward", "learning_rate", "grad_norm"))
                if shown:
                    _echo(f"{TAG} {stage} step {st.global_step}/{st.max_steps}  {shown}")
    return Progress()


def _train_worker(stage, spec, state):
    from datasets import load_from_disk

    from . import modeling, train
    from .results import Run

    load = spec["load"]
    trained = modeling.load_trained(spec["adapter"], max_seq_length=load["max_seq_length"],
                                    load_in_4bit=load["load_in_4bit"], backend=load["backend"], trainable=True,
                                    gradient_checkpointing=load["gradient_checkpointing"])
    backend = modeling.backend_of(trained.model)
    if state.is_main_process:
        _echo(f"{TAG} {stage}: model loaded on {state.num_processes} processes ({backend} backend)")
    split = load_from_disk(spec["train"])
    cls = train.SFTParams if stage == "sft" else train.GRPOParams
    params = train.params_from_dict(cls, spec["params"])
    if state.is_main_process:
        run = Run.open(spec["run_dir"])
        run.write_json("config.json", {**(run.read_json("config.json") or {}), "backend": backend})
    else:
        run = _NoRecord(spec["run_dir"])
    common = dict(src_lang=spec["src_lang"], tgt_lang=spec["tgt_lang"], run=run,
                  callbacks=[_progress_callback(stage, state)])
    t0 = time.time()
    if stage == "sft":
        train.run_sft(trained.model, trained.tokenizer, split, params, **common)
    else:
        train.run_grpo(trained.model, trained.tokenizer, split, params, **common)
    ranks = all_gather({"rank": state.process_index, "seconds": time.time() - t0, "backend": backend,
                        **_peak_memory()}, state)
    if state.is_main_process:
        run.write_json("parallel.json", {"num_processes": state.num_processes, "backend": backend,
                                         "distributed_type": str(state.distributed_type), "ranks": ranks})
        _echo(f"{TAG} {stage}: finished, run {run.path}")


def _evaluate_worker(spec, state):
    from datasets import load_from_disk

    from . import modeling
    from .generate import decoding_model
    from .results import write_json

    load, record = spec["load"], spec["record"]
    if spec["adapter"]:
        model, tokenizer = modeling.load_trained(spec["adapter"], max_seq_length=load["max_seq_length"],
                                                 load_in_4bit=load["load_in_4bit"], backend=load["backend"])
    else:
        model, tokenizer = modeling.load_model(spec["model"], max_seq_length=load["max_seq_length"],
                                               load_in_4bit=load["load_in_4bit"], backend=load["backend"])
    trained = modeling.TrainedModel(model, tokenizer, stage=record["stage"], base_name=record["base_name"],
                                    run_dir=Path(record["run_dir"]) if record["run_dir"] else None,
                                    adapter_dir=Path(record["adapter_dir"]) if record["adapter_dir"] else None)
    splits = load_from_disk(spec["splits"])
    translator = sharded_translator(state, echo=_echo)
    kwargs = dict(src_lang=spec["src_lang"], tgt_lang=spec["tgt_lang"], batch_size=spec["batch_size"],
                  max_new_tokens=spec["max_new_tokens"], **spec["translate_kwargs"])
    result = {}
    with decoding_model(model, kwargs.get("fast_decode", False)) as runner:  # one merged copy for every test set
        kwargs["decoder"] = runner
        _evaluate_each(spec, state, trained, splits, translator, kwargs, result)
    if state.is_main_process:
        write_json(spec["result"], result)


def _evaluate_each(spec, state, trained, splits, translator, kwargs, result):
    from . import modeling
    from .generate import evaluate
    from .results import Run
    model, tokenizer = trained.model, trained.tokenizer
    for name in spec["split_names"]:
        split = splits[name]
        n = len(split)
        shards = [shard_bounds(n, state.num_processes, r) for r in range(state.num_processes)]
        if state.is_main_process:
            ev = evaluate(trained, split, name=spec["name"], runs_root=spec["runs_root"], split_name=name,
                          config={**spec["config"], "shards": shards}, translator=translator, **kwargs)
            Run.open(ev.run_dir).write_json("parallel.json", {
                "num_processes": state.num_processes, "backend": modeling.backend_of(model),
                "distributed_type": str(state.distributed_type), "ranks": translator.shards})
            result[name] = str(ev.run_dir)
            _echo(f"{TAG} evaluate {name}: BLEU {ev.metrics['bleu']:.2f} ({n} sentences)")
        else:  # the same call evaluate() makes on rank 0, for this process's shard
            from .data import pair_columns
            sources, _ = pair_columns(split, spec["src_lang"], spec["tgt_lang"])
            translator(model, tokenizer, sources, return_stats=True, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtlib.parallel",
                                 description="A worker process of a multi-GPU run (started by accelerate launch).")
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--spec", required=True, help="the JSON spec the launching process wrote")
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    state = init_process(cpu=bool(spec.get("cpu")))
    try:
        if args.stage == "evaluate":
            _evaluate_worker(spec, state)
        else:
            _train_worker(args.stage, spec, state)
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def exit_worker(code: int):
    """End a worker process whose work is written and whose process group is destroyed, skipping the interpreter's
    teardown: in it gloo's threads abort now and then on CPU ("terminate called without an active exception"),
    seen in one two-process GRPO test run in eight and in benchmarks/gpu_multi.py after its last stage."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_worker(main())  # an error raises in main, with its traceback and exit status 1
