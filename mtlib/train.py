"""SFT and GRPO training with TRL, the original study's hyperparameters, run records and resume.

On a GPU import :mod:`mtlib.modeling` (which imports Unsloth) before this module imports ``trl``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import column, pair_columns
from .errors import ConfigError, MtlibError, TrainingError
from . import parameters
from .parameters import LOSS_TYPES, SCHEDULERS  # noqa: F401 (tests compare them with the schema)
from .prompts import template_date
from .modeling import TrainedModel, _cuda, add_lora, backend_of, base_name_of, save_adapter, trainable_summary
from .rewards import build_rewards

log = logging.getLogger(__name__)

USER_PROMPT_HEADER = "<|start_header_id|>user<|end_header_id|>\n\n"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _default_optim() -> str:
    return "adamw_8bit" if _cuda() else "adamw_torch"


def _book(stage: str, name: str):
    """A field that holds a book parameter: its default is the chapter's (declared once, in mtlib.parameters)."""
    value = parameters.trainer_defaults(stage)[name]
    if isinstance(value, list):
        return field(default_factory=lambda: list(value))
    return field(default=value)


@dataclass
class SFTParams:
    """Supervised fine-tuning: the original study's values (Unsloth's Llama 3.2 recipe), chapter 3's defaults.

    The fields marked ``_book`` are chapter 3's parameters (``mtlib.parameters``: defaults, bounds, names such
    as ``num_steps`` -> ``max_steps``); the rest are the trainer's own."""
    lr: float = _book("sft", "lr")
    per_device_train_batch_size: int = _book("sft", "per_device_train_batch_size")
    gradient_accumulation_steps: int = _book("sft", "gradient_accumulation_steps")
    warmup_steps: int = _book("sft", "warmup_steps")
    weight_decay: float = _book("sft", "weight_decay")
    lr_scheduler_type: str = _book("sft", "lr_scheduler_type")
    optim: str = field(default_factory=_default_optim)  # 8-bit AdamW needs bitsandbytes + CUDA
    max_steps: int = _book("sft", "max_steps")
    seed: int = _book("sft", "seed")
    logging_steps: int = _book("sft", "logging_steps")
    max_seq_length: int = _book("sft", "max_seq_length")
    packing: bool = False
    padding_free: bool | None = _book("sft", "padding_free")        # None: the backend decides (Unsloth: padding-free)
    train_sampling_strategy: str = _book("sft", "train_sampling_strategy")  # "group_by_length": similar lengths
    pad_to_multiple_of: int | None = None               # fewer distinct shapes for compiled blocks
    save_steps: int = 50                                # checkpoints (for resume) every N steps
    save_total_limit: int | None = 2

    def validate(self) -> "SFTParams":
        parameters.check_trainer(self, "sft")
        _validate_trainer_only(self)
        if self.train_sampling_strategy not in ("random", "sequential", "group_by_length"):
            raise ConfigError("SFTParams.train_sampling_strategy must be 'random', 'sequential' or "
                              f"'group_by_length', got {self.train_sampling_strategy!r}")
        _pad_multiple(self)
        return self


@dataclass
class GRPOParams:
    """GRPO/DAPO: the original study's values, chapter 4's defaults. Each optimisation step sees one prompt x
    num_generations.

    The fields marked ``_book`` are chapter 4's parameters (``mtlib.parameters``); the rest are the trainer's own.
    TRL 1.14: generation_batch_size = per_device_train_batch_size x gradient_accumulation_steps (one GPU) must be
    a multiple of num_generations; 2 x 2 = 4 = one prompt's group per step, as in the original."""
    loss_type: str = _book("grpo", "loss_type")
    beta: float = _book("grpo", "beta")                 # 0: no KL term, no reference model in memory
    epsilon: float = _book("grpo", "epsilon")
    epsilon_high: float = _book("grpo", "epsilon_high")  # DAPO's clip-higher
    num_generations: int = _book("grpo", "num_generations")
    max_completion_length: int = _book("grpo", "max_completion_length")
    temperature: float = _book("grpo", "temperature")
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    fast_generation: bool = _book("grpo", "fast_generation")  # completions from a merged bf16 copy (fastgen)
    pad_to_multiple_of: int | None = None               # prompts and completions padded: fewer distinct shapes
    lr: float = _book("grpo", "lr")
    max_steps: int = _book("grpo", "max_steps")
    per_device_train_batch_size: int = _book("grpo", "per_device_train_batch_size")
    gradient_accumulation_steps: int = _book("grpo", "gradient_accumulation_steps")
    rewards: list = _book("grpo", "rewards")            # names in mtlib.rewards.REWARDS, or functions
    reward_weights: list = _book("grpo", "reward_weights")
    warmup_steps: int = _book("grpo", "warmup_steps")
    weight_decay: float = _book("grpo", "weight_decay")
    lr_scheduler_type: str = _book("grpo", "lr_scheduler_type")
    optim: str = field(default_factory=_default_optim)
    seed: int = _book("grpo", "seed")
    logging_steps: int = _book("grpo", "logging_steps")
    save_steps: int = 50
    save_total_limit: int | None = 2

    def validate(self) -> "GRPOParams":
        parameters.check_trainer(self, "grpo")  # bounds, choices, epsilon_high >= epsilon, whole groups, weights
        _validate_trainer_only(self)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"GRPOParams.top_p must be in (0, 1], got {self.top_p!r}")
        _pad_multiple(self)
        if not self.rewards:
            raise ConfigError("GRPOParams.rewards must name at least one reward")
        from .rewards import REWARDS
        unknown = [r for r in self.rewards if not callable(r) and r not in REWARDS]
        if unknown:
            raise ConfigError(f"GRPOParams.rewards: unknown {unknown}; choose from {sorted(REWARDS)}")
        return self


def _positive(params, name, minimum=1):
    v = getattr(params, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{type(params).__name__}.{name} must be an integer >= {minimum}, got {v!r}")


def _pad_multiple(p):
    if p.pad_to_multiple_of is not None:
        _positive(p, "pad_to_multiple_of")


def _validate_trainer_only(p):
    """Rules for the fields that are not book parameters (theirs are in mtlib.parameters)."""
    _positive(p, "save_steps")
    if p.optim in ("adamw_8bit", "paged_adamw_8bit") and not _cuda():
        raise ConfigError(f"{type(p).__name__}.optim={p.optim!r} needs CUDA (bitsandbytes); use 'adamw_torch'")


def params_from_dict(cls, values: dict | None):
    """``cls(**values)`` with a ConfigError naming any unknown field, then validated."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    return cls(**values).validate()


def _precision() -> dict:
    import torch
    if not torch.cuda.is_available():
        return {"bf16": False, "fp16": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16}


def _common_args(p, output_dir) -> dict:
    return dict(output_dir=str(output_dir), learning_rate=p.lr, per_device_train_batch_size=p.per_device_train_batch_size,
                gradient_accumulation_steps=p.gradient_accumulation_steps, warmup_steps=p.warmup_steps,
                weight_decay=p.weight_decay, lr_scheduler_type=p.lr_scheduler_type, optim=p.optim,
                max_steps=p.max_steps, seed=p.seed, logging_steps=p.logging_steps, save_strategy="steps",
                save_steps=p.save_steps, save_total_limit=p.save_total_limit, report_to="none",
                gradient_checkpointing=False,  # add_lora() already set it up (Unsloth's or PEFT's)
                logging_nan_inf_filter=False,  # log NaN losses as they are, for the NaN guard
                dataloader_pin_memory=_cuda(),
                **_data_parallel_args(), **_precision())


def _data_parallel_args() -> dict:
    """Under a data-parallel launcher (mtlib.parallel): every LoRA weight gets a gradient each step, so DDP
    need not search the graph for unused parameters (a PEFT model would otherwise make the Trainer ask it to)."""
    from .modeling import _distributed
    return {"ddp_find_unused_parameters": False} if _distributed() else {}


def _ensure_lora(model):
    if hasattr(model, "peft_config"):
        return model
    log.info("model has no LoRA adapters: adding them with add_lora() defaults")
    return add_lora(model)


def sft_dataset(split, src_lang="en", tgt_lang="de"):
    """Conversational prompt/completion rows: TRL computes the loss on the completion (the translation) only."""
    from .prompts import inference_messages
    if "prompt" in split.column_names and "completion" in split.column_names:
        return split
    if "messages" in split.column_names:
        return split.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                         remove_columns=split.column_names, desc="SFT prompt/completion")
    pair_columns(split, src_lang, tgt_lang)
    return split.map(lambda r: {"prompt": inference_messages(r[src_lang], tgt_lang, src_lang),
                                "completion": [{"role": "assistant", "content": r[tgt_lang]}]},
                     remove_columns=split.column_names, desc="SFT prompt/completion")


def _sft_text_dataset(split, tokenizer, src_lang, tgt_lang):
    """Unsloth path: whole conversations as text (BOS left to the tokenizer); masked by train_on_responses_only.
    The conversations are rendered in one chat-template call, not one per row."""
    from datasets import Dataset
    from .prompts import sft_messages
    if "messages" in split.column_names:
        conversations = column(split, "messages")
    else:
        sources, targets = pair_columns(split, src_lang, tgt_lang)
        conversations = [sft_messages(s, t, tgt_lang, src_lang) for s, t in zip(sources, targets)]
    texts = tokenizer.apply_chat_template(conversations, tokenize=False) if conversations else []
    bos = tokenizer.bos_token or ""
    return Dataset.from_dict({"text": [t[len(bos):] if bos and t.startswith(bos) else t for t in texts]})


class NaNGuard:
    """Trainer callback: stop with TrainingError as soon as a logged loss is NaN or infinite."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Guard(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                for key in ("loss", "grad_norm"):
                    value = (logs or {}).get(key)
                    if value is not None and not math.isfinite(float(value)):
                        raise TrainingError(f"non-finite {key} at step {state.global_step} ({value}): lower the "
                                            f"learning rate or check the data")
        return _Guard()


class StepClock:
    """Trainer callback for timing: at the end of each optimizer step, after ``sync()`` (on a GPU,
    ``torch.cuda.synchronize``), it appends the time to ``stamps``, the input tokens seen so far to ``tokens`` and
    the step's seconds to ``step_seconds``, then calls ``on_step(state)`` if given."""

    def __new__(cls, sync=None, on_step=None):
        import time

        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self):
                self.stamps, self.tokens, self.step_seconds = [], [], []
                self._began = None

            def on_step_begin(self, args, state, control, **kwargs):
                self._began = time.time()

            def on_step_end(self, args, state, control, **kwargs):
                if sync is not None:
                    sync()
                now = time.time()
                self.stamps.append(now)
                self.tokens.append(state.num_input_tokens_seen)
                self.step_seconds.append(round(now - (self._began or now), 3))
                if on_step is not None:
                    on_step(state)
        return _Clock()


def build_sft_trainer(model, tokenizer, train_split, params: SFTParams | None = None, output_dir="sft-out",
                      eval_split=None, src_lang: str = "en", tgt_lang: str = "de", callbacks=None):
    """A TRL SFTTrainer whose loss covers only the assistant's translation (and its end-of-turn token)."""
    params = (params or SFTParams()).validate()
    backend = backend_of(model)
    model = _ensure_lora(model)
    from trl import SFTConfig, SFTTrainer
    args = SFTConfig(**_common_args(params, output_dir), max_length=params.max_seq_length,
                     packing=params.packing, pad_to_multiple_of=params.pad_to_multiple_of,
                     train_sampling_strategy=params.train_sampling_strategy,
                     **({} if params.padding_free is None else {"padding_free": params.padding_free}))
    if backend == "unsloth":
        from unsloth.chat_templates import train_on_responses_only
        args.dataset_text_field = "text"
        train = _sft_text_dataset(train_split, tokenizer, src_lang, tgt_lang)
        evals = _sft_text_dataset(eval_split, tokenizer, src_lang, tgt_lang) if eval_split is not None else None
        trainer = SFTTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=train,
                             eval_dataset=evals, callbacks=callbacks)
        trainer = train_on_responses_only(trainer, instruction_part=USER_PROMPT_HEADER,
                                          response_part=ASSISTANT_HEADER)
    else:
        args.completion_only_loss = True
        train = sft_dataset(train_split, src_lang, tgt_lang)
        evals = sft_dataset(eval_split, src_lang, tgt_lang) if eval_split is not None else None
        trainer = SFTTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=train,
                             eval_dataset=evals, callbacks=callbacks)
    if trainer.train_dataset is not None and len(trainer.train_dataset) == 0:
        raise ConfigError(f"max_seq_length={params.max_seq_length} tokens cuts every one of the {len(train_split)} "
                          f"training examples before its translation, so none is left to learn from; raise "
                          f"max_seq_length (the chat prompt alone takes about 100 tokens)")
    return trainer


def grpo_dataset(split, src_lang="en", tgt_lang="de"):
    """``prompt`` (chat messages) + ``reference`` rows for GRPOTrainer."""
    from .prompts import to_grpo_dataset
    if "prompt" in split.column_names and "reference" in split.column_names:
        return split
    pair_columns(split, src_lang, tgt_lang)
    return to_grpo_dataset(split, src_lang, tgt_lang)


def build_grpo_trainer(model, tokenizer, train_split, params: GRPOParams | None = None, output_dir="grpo-out",
                       rewards=None, src_lang: str = "en", tgt_lang: str = "de", callbacks=None):
    """A TRL GRPOTrainer with the rewards named in ``params.rewards`` (or ``rewards``: names or functions).

    ``model`` may be a fresh LoRA model or one continued from an SFT adapter
    (``load_trained(sft_run, trainable=True).model``).
    """
    params = (params or GRPOParams()).validate()
    if rewards is not None:
        params = dataclasses.replace(params, rewards=list(rewards),
                                     reward_weights=params.reward_weights if len(params.reward_weights) == len(rewards)
                                     else [1.0] * len(rewards))
    model = _ensure_lora(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters: load the SFT adapter with "
                          "load_trained(..., trainable=True)")
    from trl import GRPOConfig, GRPOTrainer
    args = GRPOConfig(**_common_args(params, output_dir), loss_type=params.loss_type, beta=params.beta,
                      epsilon=params.epsilon, epsilon_high=params.epsilon_high,
                      num_generations=params.num_generations, max_completion_length=params.max_completion_length,
                      temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                      repetition_penalty=params.repetition_penalty, reward_weights=list(params.reward_weights),
                      pad_to_multiple_of=params.pad_to_multiple_of)
    funcs = build_rewards(params.rewards, tokenizer)
    tokenizer.padding_side = "left"
    from .generate import drop_max_length
    drop_max_length(model)  # TRL sets max_new_tokens: a max_length beside it only adds a warning per step
    from .fastgen import route_generate, unroute_generate
    if params.fast_generation:
        route_generate(model)
    else:
        unroute_generate(model)
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=grpo_dataset(train_split, src_lang,
                                                                                              tgt_lang),
                       processing_class=tokenizer, callbacks=callbacks)


def _terminal_progress(trainer) -> None:
    """In a book build (``MTLIB_TERMINAL_PROGRESS``, set by :mod:`mtlib.book`): a text progress bar on stderr,
    with the latest loss/reward, which the runner shows on the terminal and strips from the notebook, instead
    of the HTML progress table that transformers puts into a notebook (and so into the published chapter)."""
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: f"{v:.4g}" for k, v in (logs or {}).items()
                     if k in ("loss", "reward", "grad_norm") and isinstance(v, (int, float))}
            if self.training_bar is not None and shown:
                self.training_bar.set_postfix(shown, refresh=False)

    trainer.remove_callback(NotebookProgressCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarOnly)


# -- runs -----------------------------------------------------------------------------------------------

def _find_resumable(runs_root, stage) -> Path | None:
    from .results import read_json
    root = Path(runs_root)
    if not root.is_dir():
        return None
    for path in sorted((p for p in root.iterdir() if p.is_dir() and f"-{stage}-" in p.name), reverse=True):
        try:
            status = (read_json(path / "status.json") or {}).get("status")
        except MtlibError:  # a damaged record: not a run to continue
            continue
        if status != "finished" and list((path / "checkpoints").glob("checkpoint-*")):
            return path
    return None


def trainer_record(trainer) -> dict:
    """What ran: the trainer's class (TRL's, or Unsloth's patched copy of it) and its effective arguments."""
    cls = type(trainer)
    return {"trainer_class": f"{cls.__module__}.{cls.__qualname__}",
            "args_class": f"{type(trainer.args).__module__}.{type(trainer.args).__qualname__}",
            "args": trainer.args.to_dict()}


@contextlib.contextmanager
def training_session(empty_cache: bool = True):
    """Where every training here runs: CUDA's caching allocator emptied first, so that what a translation left
    cached does not slow the first steps (benchmarks/results/stage_probe_h200_2026-12-02). The attention stays
    torch's choice, cuDNN's included: unlike decoding, training was faster with it there."""
    import torch
    if empty_cache and torch.cuda.is_available():
        torch.cuda.empty_cache()
    yield


def _run(stage, build, model, tokenizer, params, runs_root, name, resume, config, callbacks, run=None):
    """Train in a run folder. ``run``: a folder made by the caller (mtlib.parallel: the launching process made
    it, rank 0 keeps it, the other ranks pass a record that writes nothing); otherwise a new one, or resume."""
    from transformers.trainer_utils import get_last_checkpoint
    from .results import Run

    base_name = base_name_of(model)
    if run is not None:
        pass
    elif resume:
        run_dir = Path(resume) if not isinstance(resume, bool) else _find_resumable(runs_root, stage)
        if run_dir is None or not (run_dir / "checkpoints").is_dir() \
                or not get_last_checkpoint(str(run_dir / "checkpoints")):
            raise TrainingError(f"resume: no {stage} run with a checkpoint under {runs_root}"
                                if isinstance(resume, bool) else f"resume: no checkpoint in {run_dir}/checkpoints")
        run = Run.open(run_dir)
        run._status("running", resumed=True)
    else:
        run = Run.create(stage, {"model": base_name, "backend": backend_of(model), "params": asdict(params),
                                 "prompt_date": template_date(tokenizer), **(config or {})}, root=runs_root, name=name)
    output_dir = run.path / "checkpoints"
    trainer = None
    try:
        trainer = build(output_dir, [NaNGuard(), *(callbacks or [])])
        run.write_json("trainer.json", trainer_record(trainer))
        if os.environ.get("MTLIB_TERMINAL_PROGRESS"):
            _terminal_progress(trainer)
        run.write_json("trainable.json", trainable_summary(trainer.model))
        checkpoint = get_last_checkpoint(str(output_dir)) if resume else None
        with run.timer("train"), training_session():
            result = trainer.train(resume_from_checkpoint=checkpoint)
        run.write_json("log_history.json", trainer.state.log_history)
        adapter_dir = run.path / "adapter"
        if getattr(run, "records", True):  # rank 0 of a data-parallel run, or the only process
            save_adapter(trainer.model, tokenizer, adapter_dir, stage=stage, base_name=base_name)
        run.write_json("train_result.json", {"global_step": trainer.state.global_step,
                                             "training_loss": result.training_loss, **(result.metrics or {})})
        run.finish()
    except BaseException as exc:  # KeyboardInterrupt too: the run stays on disk, marked failed, resumable
        if trainer is not None:
            run.write_json("log_history.json", trainer.state.log_history)
        run.fail(exc)
        raise
    finally:
        from .fastgen import unroute_generate
        unroute_generate(model)  # GRPO's fast_generation routes generate() only while it trains
    trained = TrainedModel(trainer.model, tokenizer, stage=stage, run_dir=run.path, adapter_dir=adapter_dir,
                           base_name=base_name)
    trained.extra["trainer"] = trainer
    return trained


def run_sft(model, tokenizer, train_split, params: SFTParams | None = None, runs_root="runs", name: str = "sft",
            eval_split=None, resume=False, src_lang: str = "en", tgt_lang: str = "de", config: dict | None = None,
            callbacks=None, run=None) -> TrainedModel:
    """Train with SFT in a new run folder (or ``resume=True``: continue the last interrupted SFT run).

    Writes config, log_history.json (loss per step), timings, the adapter (``<run>/adapter``) and status.
    ``run``: an existing :class:`~mtlib.results.Run` to train in (``mtlib.parallel``'s worker processes).
    """
    params = (params or SFTParams()).validate()
    if isinstance(model, TrainedModel):
        model = model.model

    def build(output_dir, cbs):
        return build_sft_trainer(model, tokenizer, train_split, params, output_dir, eval_split=eval_split,
                                 src_lang=src_lang, tgt_lang=tgt_lang, callbacks=cbs)
    return _run("sft", build, model, tokenizer, params, runs_root, name, resume,
                {"n_train": len(train_split), "src_lang": src_lang, "tgt_lang": tgt_lang, **(config or {})},
                callbacks, run=run)


def run_grpo(model, tokenizer, train_split, params: GRPOParams | None = None, runs_root="runs", name: str = "grpo",
             rewards=None, resume=False, src_lang: str = "en", tgt_lang: str = "de", config: dict | None = None,
             callbacks=None, run=None) -> TrainedModel:
    """Train with GRPO in a new run folder; ``model`` may be a TrainedModel from SFT (its adapter is continued).

    ``run``: an existing :class:`~mtlib.results.Run` to train in (``mtlib.parallel``'s worker processes).
    """
    params = (params or GRPOParams()).validate()
    extra = {}
    if isinstance(model, TrainedModel):
        extra = {"from_stage": model.stage, "from_run": model.run_dir, "from_adapter": model.adapter_dir}
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        model = model.model
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)

    def build(output_dir, cbs):
        return build_grpo_trainer(model, tokenizer, train_split, params, output_dir, rewards=rewards,
                                  src_lang=src_lang, tgt_lang=tgt_lang, callbacks=cbs)
    return _run("grpo", build, model, tokenizer, params, runs_root, name, resume,
                {"n_train": len(train_split), "src_lang": src_lang, "tgt_lang": tgt_lang, **extra, **(config or {})},
                callbacks, run=run)
