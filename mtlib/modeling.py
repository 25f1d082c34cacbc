"""Loading models (Unsloth 4-bit on CUDA, plain transformers elsewhere) and LoRA adapters.

On a GPU, import this module (``import mtlib.modeling``) before ``trl``: :func:`load_model` imports
Unsloth first thing, and Unsloth must be imported before transformers/trl to patch them.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .credentials import hf_token
from .errors import ConfigError
from .results import write_json

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BACKENDS = ("auto", "unsloth", "hf")
STAGES = ("base", "sft", "grpo")
PAD_FALLBACK = "<|finetune_right_pad_id|>"
ADAPTER_INFO = "mtlib_adapter.json"


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


BACKEND_ENV = "MTLIB_BACKEND"  # "hf": backend="auto" means the plain backend, and Unsloth is never imported


def _forced_backend() -> str | None:
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    return value if value in ("hf", "unsloth") else None


def local_device_index() -> int:
    """The CUDA device of this process: ``LOCAL_RANK`` under a launcher (accelerate launch, torchrun), else 0."""
    return int(os.environ.get("LOCAL_RANK", 0) or 0)


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1) or 1) > 1


# Unsloth's settings that mtlib changes, each kept when the environment already sets it. Unsloth reads them
# at import or at each GRPO loss. UNSLOTH_GRPO_SEQ_PACKING=0: GRPO's loss runs on the padded batch, not on
# one packed row of all its sequences (with its prefix grouper). Without flash-attn (torch 2.11, the H200
# image) the packed row runs one attention call per sequence: on the H200 it made the fast shape's step
# 2.5x slower (6.38 s against 2.59 s; benchmarks/results/grpo_settings_h200_2026-12-01). Both compute the
# same loss. UNSLOTH_BLOCK_COMPILE=0: training runs each decoder layer as it is instead of compiling it with
# torch.compile first. On the H200 the compilation took 25 s of SFT's first step (28.4 s against 2.8 s) and
# won 1% a step after it (0.398 against 0.403 s), too little for the book's 227 steps; GRPO's fast shape went
# from 55.8 to 73.9 completions/s (benchmarks/results/stage_probe_h200_2026-12-01).
UNSLOTH_SETTINGS = {"UNSLOTH_GRPO_SEQ_PACKING": "0", "UNSLOTH_BLOCK_COMPILE": "0"}


def _import_unsloth_early() -> None:
    """On a CUDA machine with Unsloth installed, import it with this module, before transformers/trl load."""
    if _forced_backend() == "hf":  # a process that must stay on the plain backend (mtlib.parallel's GRPO)
        return
    for name, value in UNSLOTH_SETTINGS.items():
        os.environ.setdefault(name, value)
    try:
        if _cuda():
            import unsloth  # noqa: F401
    except Exception:  # not installed, or no usable GPU: the plain backend will be used
        pass


_import_unsloth_early()


def _unsloth_available() -> bool:
    try:
        import unsloth  # noqa: F401  (must come before transformers/trl)
        return True
    except Exception:  # ImportError, or Unsloth refusing to run without a GPU
        return False


def resolve_backend(backend: str = "auto") -> str:
    """``"unsloth"`` when asked (or ``"auto"`` with CUDA and Unsloth installed), else ``"hf"``.

    ``$MTLIB_BACKEND`` (``hf`` or ``unsloth``) decides what ``"auto"`` means in this process.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto" and _forced_backend():
        backend = _forced_backend()
    if backend == "auto":
        return "unsloth" if _cuda() and _unsloth_available() else "hf"
    if backend == "unsloth" and not _unsloth_available():
        raise ConfigError("backend='unsloth' needs a CUDA GPU and `pip install unsloth`; use backend='hf' on CPU")
    return backend


def backend_of(model) -> str:
    """Which backend loaded ``model`` ("unsloth" or "hf")."""
    b = getattr(model, "mtlib_backend", None)
    if b:
        return b
    return "unsloth" if "unsloth" in type(model).__module__.lower() else "hf"


def _set_backend(model, backend: str):
    model.mtlib_backend = backend


def prepare_tokenizer(tokenizer):
    """Left padding (for batched generation), a pad token distinct from end-of-turn where possible, and a
    chat template that renders a fixed date (:func:`mtlib.prompts.fix_template_date`)."""
    from .prompts import fix_template_date
    fix_template_date(tokenizer)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = PAD_FALLBACK if PAD_FALLBACK in vocab else tokenizer.eos_token
    return tokenizer


def _dtype(dtype):
    import torch
    if isinstance(dtype, str):
        if not hasattr(torch, dtype):
            raise ConfigError(f"dtype must be a torch dtype name such as 'bfloat16', got {dtype!r}")
        dtype = getattr(torch, dtype)
    return dtype


def load_model(name_or_path, max_seq_length: int = 512, load_in_4bit: bool = True, dtype=None,
               backend: str = "auto", revision: str | None = None):
    """Load ``(model, tokenizer)`` from the Hub or a local folder.

    ``backend``: "unsloth" (FastLanguageModel, 4-bit QLoRA kernels, CUDA only), "hf" (transformers;
    4-bit through bitsandbytes on CUDA, full precision on CPU) or "auto" (Unsloth when usable).
    ``revision`` pins a Hub commit, tag or branch.
    """
    backend = resolve_backend(backend)  # imports unsloth first when it is used
    dtype = _dtype(dtype)
    token = hf_token()
    pinned = {"revision": revision} if revision else {}
    if max_seq_length is None or int(max_seq_length) <= 0:
        raise ConfigError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(name_or_path), max_seq_length=max_seq_length, dtype=dtype,
            load_in_4bit=load_in_4bit, token=token, **pinned, **_unsloth_device_map())
        contiguous_head_input(model)
    else:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        kwargs: dict[str, Any] = {**({"token": token} if token else {}), **pinned}
        if _cuda():
            dtype = dtype or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            kwargs["device_map"] = {"": local_device_index()}  # each data-parallel process: its own GPU
            if load_in_4bit:
                from transformers import BitsAndBytesConfig
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype)
        else:
            if load_in_4bit:
                log.info("4-bit loading needs CUDA (bitsandbytes): loading %s in full precision on CPU", name_or_path)
            dtype = dtype or torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **({"token": token} if token else {}), **pinned)
        tokenizer.model_max_length = max_seq_length
    _set_backend(model, backend)
    return model, prepare_tokenizer(tokenizer)


def _unsloth_device_map() -> dict:
    """Under a data-parallel launcher each process loads onto its own GPU; otherwise Unsloth's default."""
    return {"device_map": {"": local_device_index()}} if _distributed() else {}


def _contiguous_input(module, args):
    return (args[0].contiguous(),) + tuple(args[1:]) if args and hasattr(args[0], "contiguous") else args


def contiguous_head_input(model, on: bool = True):
    """Hand the output layer a contiguous input (idempotent; ``on=False`` removes it); returns ``model``.

    Unsloth's decode step can pass ``lm_head`` a strided ``(batch, 1, hidden)`` view; torch.matmul then
    expands the vocabulary matrix into a batched matmul that reads it once per sequence (a ~70 ms step
    at batch 500 on an H100, half of Unsloth's batched decode time). A contiguous input makes it one GEMM.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return model
    handle = getattr(head, "_mtlib_contiguous_input", None)
    if on and handle is None:
        head._mtlib_contiguous_input = head.register_forward_pre_hook(_contiguous_input)
    elif not on and handle is not None:
        handle.remove()
        head._mtlib_contiguous_input = None
    return model


def add_lora(model, r: int = 16, alpha: int = 16, dropout: float = 0.0, target_modules=LORA_TARGETS,
             gradient_checkpointing: bool = True, seed: int = 3407):
    """Wrap ``model`` with LoRA adapters on ``target_modules`` (rank ``r``, scale ``alpha/r``); returns the PEFT model."""
    from .parameters import check_value  # the chapters' rules for these values, declared once
    r, alpha, dropout = (check_value(name, value, "add_lora") for name, value in
                         (("lora_r", r), ("lora_alpha", alpha), ("lora_dropout", dropout)))
    backend = backend_of(model)
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        peft_model = FastLanguageModel.get_peft_model(
            model, r=r, target_modules=list(target_modules), lora_alpha=alpha, lora_dropout=dropout, bias="none",
            use_gradient_checkpointing="unsloth" if gradient_checkpointing else False, random_state=seed)
    else:
        import torch
        from peft import LoraConfig, get_peft_model
        model = _prepare_for_training(model, gradient_checkpointing)
        torch.manual_seed(seed)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                            bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
    _set_backend(peft_model, backend)
    return peft_model


def _prepare_for_training(model, gradient_checkpointing: bool):
    """Plain backend: k-bit preparation for a quantized base, and gradient checkpointing if asked."""
    from peft import prepare_model_for_kbit_training
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def trainable_summary(model) -> dict:
    """Trainable vs total parameter counts: {"trainable", "total", "share"} (share in [0, 1])."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}


def base_name_of(model) -> str | None:
    """The base model's name or path, as recorded in the model (or its PEFT wrapper) config."""
    peft_cfg = getattr(model, "peft_config", None)
    if peft_cfg:
        name = next(iter(peft_cfg.values())).base_model_name_or_path
        if name:
            return str(name)
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_name_or_path", None) or getattr(model, "name_or_path", None)


def save_adapter(model, tokenizer, path, stage: str | None = None, base_name: str | None = None) -> Path:
    """Save the LoRA adapter and tokenizer to ``path``; adapter_config.json names the base model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "peft_config"):
        raise ConfigError("save_adapter needs a model with LoRA adapters (call add_lora first)")
    base_name = base_name or base_name_of(model)
    for cfg in model.peft_config.values():
        if base_name:
            cfg.base_model_name_or_path = str(base_name)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    write_json(path / ADAPTER_INFO, {"stage": stage, "base_name": base_name, "backend": backend_of(model)})
    return path


@dataclass
class TrainedModel:
    """A model ready for evaluation, labelled with the stage that produced it ("base", "sft" or "grpo")."""
    model: Any
    tokenizer: Any
    stage: str = "base"
    run_dir: Path | None = None
    adapter_dir: Path | None = None
    base_name: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")

    def __iter__(self):  # model, tokenizer = trained
        return iter((self.model, self.tokenizer))


def as_trained(model_or_trained, tokenizer=None) -> TrainedModel:
    """A TrainedModel from a TrainedModel, a ``(model, tokenizer)`` pair, or model + tokenizer (stage "base")."""
    if isinstance(model_or_trained, TrainedModel):
        return model_or_trained
    if isinstance(model_or_trained, tuple) and len(model_or_trained) == 2 and tokenizer is None:
        model_or_trained, tokenizer = model_or_trained
    if tokenizer is None:
        raise ConfigError("pass a TrainedModel, a (model, tokenizer) pair, or model and tokenizer")
    return TrainedModel(model_or_trained, tokenizer, stage="base", base_name=base_name_of(model_or_trained))


def find_adapter_dir(run_or_adapter_dir) -> Path:
    """The adapter folder of a run folder (``<run>/adapter``) or the folder itself."""
    p = Path(run_or_adapter_dir)
    for cand in (p, p / "adapter"):
        if (cand / "adapter_config.json").exists():
            return cand
    raise ConfigError(f"no LoRA adapter (adapter_config.json) in {p} or {p / 'adapter'}")


def load_trained(run_or_adapter_dir, max_seq_length: int = 512, load_in_4bit: bool = True, dtype=None,
                 backend: str = "auto", trainable: bool = False, base_name: str | None = None,
                 gradient_checkpointing: bool = True, revision: str | None = None) -> TrainedModel:
    """Load base model + saved adapter (from a run folder or adapter folder) as a TrainedModel.

    ``trainable=True`` keeps the adapter's weights trainable, to continue training it (SFT -> GRPO), with
    gradient checkpointing as in :func:`add_lora` when ``gradient_checkpointing``.
    ``base_name`` overrides the base model recorded in adapter_config.json (e.g. a moved local folder).
    ``revision`` pins the Hub commit, tag or branch of the base model (a profile's ``model_revision``); None: the
    revision recorded in adapter_config.json (PEFT's ``revision`` field), else the newest. A base model that is a
    local folder has one version: a revision is then ignored, with a warning. The revision actually used is set
    as the adapter's ``revision`` (so an adapter trained further records it in its adapter_config.json) and kept in
    ``TrainedModel.extra["model_revision"]``.
    """
    adapter_dir = find_adapter_dir(run_or_adapter_dir)
    info = json.loads((adapter_dir / ADAPTER_INFO).read_text()) if (adapter_dir / ADAPTER_INFO).exists() else {}
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = base_name or info.get("base_name") or acfg.get("base_model_name_or_path")
    recorded = acfg.get("revision")
    if revision and recorded and revision != recorded:
        log.warning("the adapter in %s was trained on revision %s of %s; loading revision %s as asked",
                    adapter_dir, recorded, base, revision)
    revision = revision or recorded
    if revision and base and Path(str(base)).is_dir():
        import warnings
        warnings.warn(f"revision {revision!r} ignored: the base model {base} is a local folder (a folder has one "
                      f"version; the run records its path)", stacklevel=2)
        revision = None
    backend = resolve_backend(backend)
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        if base_name:
            raise ConfigError("base_name override is not supported on the unsloth backend")
        checkpointing = "unsloth" if trainable and gradient_checkpointing else False
        if revision:  # Unsloth drops the revision when it loads a base through an adapter: load the base pinned
            from peft import PeftModel
            model, tokenizer = load_model(base, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit,
                                          dtype=dtype, backend="unsloth", revision=revision)
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
            model = FastLanguageModel.patch_peft_model(model, use_gradient_checkpointing=checkpointing)
        else:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=str(adapter_dir), max_seq_length=max_seq_length, dtype=_dtype(dtype),
                load_in_4bit=load_in_4bit, token=hf_token(), use_gradient_checkpointing=checkpointing,
                **_unsloth_device_map())
            tokenizer = prepare_tokenizer(tokenizer)
        contiguous_head_input(model)
        _set_backend(model, "unsloth")
    else:
        from peft import PeftModel
        model, tokenizer = load_model(base, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit,
                                      dtype=dtype, backend="hf", revision=revision)
        if trainable:
            _prepare_for_training(model, gradient_checkpointing)
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
        _set_backend(model, "hf")
    for cfg in getattr(model, "peft_config", {}).values():
        cfg.revision = revision  # the base revision actually loaded, saved with an adapter trained further
    if trainable:
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    stage = info.get("stage") or "sft"
    run_dir = adapter_dir.parent if adapter_dir.name == "adapter" else None
    trained = TrainedModel(model, tokenizer, stage=stage, run_dir=run_dir, adapter_dir=adapter_dir, base_name=base)
    trained.extra["model_revision"] = revision
    return trained
