"""The fast translation path: a merged bf16 copy of the model, decoded by plain transformers.

Training keeps the 4-bit base + LoRA. For batched greedy decoding that is slow: every step dequantizes
the base, runs the adapter as extra matmuls, and (under Unsloth) goes through a decode path tuned for
small batches. :func:`merged_copy` builds, once per evaluation, an ordinary transformers model whose
weights are the dequantized base plus the folded-in LoRA update: the same function, in bf16, decoded
with large batches by ``model.generate``. :func:`grouped_decode_attention` is registered as the
``"mtlib_sdpa"`` attention: for one-token decode steps it reads each key/value head in place instead of
copying it once per query head (what transformers' sdpa does whenever a padding mask is present).

The path leans on private internals of transformers, PEFT, bitsandbytes and Unsloth; a rename there would
make it silently slower or wrong rather than fail. :func:`check_internals` (run on first use) verifies
them, and warns when the installed versions differ from :data:`WRITTEN_FOR`.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import logging
import sys
import traceback
import warnings
from importlib import metadata

from .errors import ConfigError, MtlibError

log = logging.getLogger(__name__)

ATTENTION = "mtlib_sdpa"


# -- the internals this module relies on ----------------------------------------------------------------

# The versions this module was written for and measured with: the pins of pyproject.toml
# (tests/test_fastgen.py keeps them in step, so a pin bump means re-checking this module).
WRITTEN_FOR = {"transformers": "5.17.0", "peft": "0.21.2", "bitsandbytes": "0.50.2",
               "unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9"}
UNSLOTH_STASH = "_unsloth_original_"    # where Unsloth keeps transformers' mask builders it wrapped
MASK_BUILDERS = ("create_causal_mask", "create_sliding_window_causal_mask")  # those Unsloth compiles
# What merged_state reads on each PEFT LoRA layer (where it reads with getattr defaults, a rename would go unseen).
LORA_ATTRIBUTES = ("base_layer", "lora_A", "lora_B", "scaling", "active_adapters", "merged", "disable_adapters",
                   "lora_magnitude_vector", "lora_embedding_A", "lora_bias", "fan_in_fan_out")
_OPTIONAL = ("bitsandbytes", "unsloth", "unsloth_zoo")  # checked only once imported (4-bit models, Unsloth)
_CHECKED: set = set()


def installed_versions() -> dict:
    """Installed versions of torch and of the libraries in :data:`WRITTEN_FOR` (None: not installed)."""
    out = {}
    for name in ("torch", *WRITTEN_FOR):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _internals_error(missing: list[str]) -> MtlibError:
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in installed_versions().items())
    written = ", ".join(f"{k} {v}" for k, v in WRITTEN_FOR.items())
    return MtlibError(
        "mtlib.fastgen (fast_decode) relies on private internals that the installed libraries lack: "
        + "; ".join(missing) + f". Installed: {versions}. It was written for {written}. Fix: install the "
        "versions pinned in pyproject.toml (pip install -r requirements.txt), or set fast_decode: false "
        "(GRPOParams.fast_generation=False) to use the model's own, slower decoding.")


def _module_internals() -> list[str]:
    """The module-level internals that are missing, each as ``"name (what needs it)"``."""
    missing = []

    def need(name, what, test):
        try:
            ok = bool(test())
        except Exception:  # an import or attribute error means the internal is gone
            ok = False
        if not ok:
            missing.append(f"{name} ({what})")

    import importlib
    import torch
    need("transformers.integrations.sdpa_attention.sdpa_attention_forward", "grouped_decode_attention's fallback",
         lambda: callable(importlib.import_module("transformers.integrations.sdpa_attention").sdpa_attention_forward))
    need("transformers.AttentionInterface.register", "registering the mtlib_sdpa attention",
         lambda: callable(importlib.import_module("transformers").AttentionInterface.register))
    need("transformers.masking_utils.ALL_MASK_ATTENTION_FUNCTIONS['sdpa']", "the mask of the mtlib_sdpa attention",
         lambda: callable(importlib.import_module("transformers.masking_utils").ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]))
    need("transformers.masking_utils.create_causal_mask", "the mask builder the merged copy calls",
         lambda: callable(importlib.import_module("transformers.masking_utils").create_causal_mask))
    need("transformers.generation.utils.create_masks_for_generate", "original_generation_masks",
         lambda: callable(importlib.import_module("transformers.generation.utils").create_masks_for_generate))
    need("transformers.PreTrainedModel._from_config", "building the merged copy without random init",
         lambda: callable(importlib.import_module("transformers").PreTrainedModel._from_config))
    need("transformers.PretrainedConfig._attn_implementation", "choosing the merged copy's attention",
         lambda: hasattr(importlib.import_module("transformers").PretrainedConfig, "_attn_implementation"))
    need("torch.nn.Module.load_state_dict(assign=True)", "loading the merged weights without a copy",
         lambda: "assign" in inspect.signature(torch.nn.Module.load_state_dict).parameters)
    need("torch.nn.Module.set_submodule", "rebuilding the rotary embeddings",
         lambda: callable(torch.nn.Module.set_submodule))
    need("peft.PeftModel.get_base_model", "reading the base model under the adapter",
         lambda: callable(importlib.import_module("peft").PeftModel.get_base_model))
    if "bitsandbytes" in sys.modules:  # a 4-bit model was loaded
        need("bitsandbytes.functional.dequantize_4bit", "dequantizing 4-bit weights",
             lambda: callable(importlib.import_module("bitsandbytes.functional").dequantize_4bit))
        need("bitsandbytes.nn.Params4bit.quant_state", "recognising 4-bit weights",
             lambda: "quant_state" in inspect.signature(importlib.import_module("bitsandbytes.nn").Params4bit.__new__)
             .parameters)
    if "unsloth" in sys.modules or "unsloth_zoo" in sys.modules:
        import transformers.masking_utils as masking_utils
        for name in MASK_BUILDERS:
            fn = getattr(masking_utils, name, None)
            wrapped = fn is not None and (getattr(fn, "__module__", None) != masking_utils.__name__
                                          or hasattr(fn, "__wrapped__"))
            if wrapped and not hasattr(masking_utils, UNSLOTH_STASH + name):
                missing.append(f"transformers.masking_utils.{UNSLOTH_STASH}{name} (Unsloth's stash of the "
                               f"original {name}, which it replaced: without it the merged copy calls Unsloth's "
                               f"compiled wrapper at every decode step, about 2x slower)")
    return missing


def _is_lora_layer(module) -> bool:
    return hasattr(module, "base_layer") and (hasattr(module, "lora_A")
                                             or any(c.__name__ == "LoraLayer" for c in type(module).__mro__))


def _lora_internals(model) -> list[str]:
    """The attributes :func:`merged_state` reads, missing from ``model``'s PEFT LoRA layers (one per class)."""
    missing, seen = [], set()
    for module in model.modules():
        kind = type(module)
        if kind not in seen and _is_lora_layer(module):
            seen.add(kind)
            missing += [f"{kind.__module__}.{kind.__name__}.{a} (merging the LoRA update)"
                        for a in LORA_ATTRIBUTES if not hasattr(module, a)]
    return missing


def _attention_internals(model) -> list[str]:
    """Where ``model`` shares key/value heads, the attribute :func:`grouped_decode_attention` needs."""
    config = getattr(model, "config", None)
    kv_heads, heads = getattr(config, "num_key_value_heads", None), getattr(config, "num_attention_heads", None)
    if not (kv_heads and heads and kv_heads < heads):
        return []
    missing, seen = [], set()
    for module in model.modules():
        kind = type(module)
        if kind not in seen and kind.__name__.endswith("Attention") and hasattr(module, "head_dim"):
            seen.add(kind)
            if not hasattr(module, "num_key_value_groups"):
                missing.append(f"{kind.__module__}.{kind.__name__}.num_key_value_groups (grouped_decode_attention;"
                               f" without it every decode step copies the key/value cache)")
    return missing


def _warn_versions():
    installed = installed_versions()
    differ = {k: v for k, v in installed.items() if k in WRITTEN_FOR and v and v != WRITTEN_FOR[k]}
    if differ:
        warnings.warn("mtlib.fastgen was written for " + ", ".join(f"{k} {WRITTEN_FOR[k]}" for k in differ)
                      + "; installed: " + ", ".join(f"{k} {v}" for k, v in differ.items())
                      + ". The internals it uses are present, but check its speed and outputs, or install the "
                        "versions pinned in pyproject.toml.", stacklevel=3)


def check_internals(model=None) -> dict:
    """Verify the private internals the fast path relies on; returns :func:`installed_versions`.

    Checks transformers, torch and PEFT always, bitsandbytes and Unsloth where they are imported, and with
    ``model`` the attributes the merge reads on its LoRA layers and attention modules. Raises
    :class:`~mtlib.errors.MtlibError` naming each missing internal, the installed versions and the fix;
    warns when a version differs from :data:`WRITTEN_FOR`.
    """
    missing = _module_internals() + (_lora_internals(model) + _attention_internals(model)
                                     if model is not None else [])
    if missing:
        raise _internals_error(missing)
    _warn_versions()
    return installed_versions()


def _check_once(model):
    """:func:`check_internals` for the fast path: module internals once per set of imported libraries."""
    key = tuple(name in sys.modules for name in _OPTIONAL)
    if key not in _CHECKED:
        check_internals()
        _CHECKED.add(key)
    missing = _lora_internals(model)
    if missing:
        raise _internals_error(missing)


def grouped_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' sdpa attention, except one-token decode steps with grouped KV heads and a mask.

    There the ``n_heads / n_kv_heads`` query heads that share a KV head are laid out as that head's
    queries (a decode query sees every unmasked key, so they need no causal order) and one SDPA call
    reads the cache as it is, without ``repeat_kv``'s copy of the whole cache on every layer and step.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, n_heads, q_len, head_dim = query.shape
    if q_len != 1 or groups == 1 or attention_mask is None or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    n_kv = key.shape[1]
    q = query.reshape(batch, n_kv, groups, head_dim)  # query head h uses KV head h // groups
    mask = attention_mask[:, :, -1:, :]               # (batch, 1, 1, kv): the same for every head
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, n_heads, 1, head_dim).transpose(1, 2), None


def register_attention() -> str:
    """Register :func:`grouped_decode_attention` with transformers as ``"mtlib_sdpa"``; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    AttentionInterface.register(ATTENTION, grouped_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return ATTENTION


def _patched(module) -> bool:
    """True when a class defined in ``module`` has a method defined elsewhere (Unsloth replaces forwards)."""
    for obj in vars(module).values():
        if inspect.isclass(obj) and obj.__module__ == module.__name__:
            for fn in vars(obj).values():
                if inspect.isfunction(fn) and fn.__module__ != module.__name__ and "transformers" not in fn.__module__:
                    return True
    return False


def _unsloth_mask_originals() -> dict:
    """transformers' mask builders that Unsloth wrapped (it compiles them), by name: {name: original}.

    Unsloth replaces ``transformers.masking_utils.create_causal_mask`` and friends with wrappers around
    ``torch.compile``-d versions and keeps the originals as ``_unsloth_original_<name>``.
    """
    import transformers.masking_utils as masking_utils
    prefix = UNSLOTH_STASH
    return {n[len(prefix):]: getattr(masking_utils, n) for n in dir(masking_utils) if n.startswith(prefix)}


_FRESH_MODULES: dict = {}


def pristine_class(cls):
    """``cls`` as transformers defines it, free of Unsloth's patches.

    When Unsloth patched the classes of ``cls``'s module or wrapped transformers' mask builders, the
    module is imported afresh (once per process) and its mask builders are rebound to the originals.
    """
    if not cls.__module__.startswith("transformers."):
        raise ConfigError(f"fast_decode needs a model class defined by transformers, got {cls.__module__}."
                          f"{cls.__name__}; use fast_decode=False")
    module = sys.modules[cls.__module__]
    originals = _unsloth_mask_originals()
    if not _patched(module) and not originals:
        return cls
    if cls.__module__ not in _FRESH_MODULES:
        spec = importlib.util.find_spec(cls.__module__)
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
        for name, original in originals.items():
            if name in vars(fresh):
                setattr(fresh, name, original)
        _FRESH_MODULES[cls.__module__] = fresh
        log.info("using a fresh import of %s (Unsloth patched it) for the merged copy", cls.__module__)
    return getattr(_FRESH_MODULES[cls.__module__], cls.__name__)


@contextlib.contextmanager
def original_generation_masks():
    """Within the block, transformers builds attention masks with its own functions instead of Unsloth's
    compiled wrappers (``generate`` calls them once per step); the wrappers are restored afterwards."""
    import transformers.generation.utils as generation_utils
    import transformers.masking_utils as masking_utils
    originals = _unsloth_mask_originals()
    targets = [(masking_utils, name) for name in originals]
    if "create_masks_for_generate" in originals:
        targets.append((generation_utils, "create_masks_for_generate"))
    saved = [(module, name, getattr(module, name)) for module, name in targets]
    for module, name in targets:
        setattr(module, name, originals[name])
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


# The SDPA backends the merged copy decodes with: all but cuDNN's, whose attention builds an execution plan for
# every new shape, and every decode step is one (the key length grows by one token). On the H200 a first pass
# over test 2018 (1,071 sentences, 128 tokens each) took 28.5 s with it and 13.3 s without, in one process
# (benchmarks/results/stage_probe_h200_2026-12-01).
DECODE_SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def sdpa_without_cudnn():
    """``torch.nn.attention.sdpa_kernel`` restricted to :data:`DECODE_SDPA_BACKENDS` (no cuDNN's attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, name) for name in DECODE_SDPA_BACKENDS])


@contextlib.contextmanager
def decoding_kernels():
    """Within the block the merged copy decodes with the kernels it is meant for: transformers' own mask
    builders (:func:`original_generation_masks`) and SDPA without cuDNN's attention (:func:`sdpa_without_cudnn`)."""
    with original_generation_masks(), sdpa_without_cudnn():
        yield


def _dense_weight(layer):
    """The weight of a linear layer as a dense tensor (bitsandbytes 4-bit weights dequantized)."""
    w = layer.weight
    if getattr(w, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf
        return bnbf.dequantize_4bit(w.data, w.quant_state)
    return w.data


def _merged_tensors(model, dtype, lora_only: bool = False):
    """``(name, tensor)`` for each parameter of ``model``'s base with every LoRA update folded in, one at a time
    (``lora_only``: only the weights that carry an adapter, the ones training changes)."""
    import torch
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    skip, converted = (), {}
    for name, module in base.named_modules():
        if skip and name.startswith(skip):
            continue
        prefix = f"{name}." if name else ""
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            _check_mergeable(name, module)
            skip = (prefix,)
            layer = module.base_layer
            w = _dense_weight(layer).to(torch.float32)
            # merged adapters are already in the base weight; disabled ones do not count
            active = [] if getattr(module, "merged", False) or getattr(module, "disable_adapters", False) \
                else module.active_adapters
            for key in active:
                if key in module.lora_A:
                    a, b = module.lora_A[key].weight, module.lora_B[key].weight
                    w = w + (b.to(torch.float32) @ a.to(torch.float32)) * module.scaling[key]
            yield prefix + "weight", w.to(dtype)
            if getattr(layer, "bias", None) is not None and not lora_only:
                yield prefix + "bias", layer.bias.data.to(dtype)
            continue
        if lora_only:
            continue
        if getattr(getattr(module, "weight", None), "quant_state", None) is not None:
            yield prefix + "weight", _dense_weight(module).to(dtype)
            if getattr(module, "bias", None) is not None:
                yield prefix + "bias", module.bias.data.to(dtype)
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in converted:  # tied weights (embeddings = output layer) stay one tensor
                converted[id(p)] = p.data.to(dtype) if p.is_floating_point() else p.data
            yield prefix + pname, converted[id(p)]


def merged_state(model, dtype) -> dict:
    """Parameters of ``model`` (a PEFT LoRA model or a plain one) with every LoRA update folded in.

    Keys are the base model's parameter names (``model.layers.0.self_attn.q_proj.weight``, ...).
    """
    return dict(_merged_tensors(model, dtype))


def refresh_merged(copy, model):
    """Write ``model``'s current LoRA updates into ``copy`` (a :func:`merged_copy` of it) in place; returns ``copy``.

    Only the weights that carry an adapter are recomputed, one at a time, into the tensors ``copy`` already holds
    (their addresses stay, so decode steps recorded as CUDA graphs stay valid). The rest ``copy`` shares with
    ``model`` or holds unchanged: training moves only the adapters.
    """
    import torch
    dtype = next(copy.parameters()).dtype
    with torch.no_grad():
        for name, tensor in _merged_tensors(model, dtype, lora_only=True):
            copy.get_parameter(name).copy_(tensor)
    return copy


def _check_mergeable(name, module):
    """Refuse the LoRA variants whose update is not ``B @ A * scaling`` on a plain weight."""
    reasons = []
    if len(getattr(module, "lora_magnitude_vector", ()) or ()):
        reasons.append("DoRA")
    if len(getattr(module, "lora_embedding_A", ()) or ()):
        reasons.append("LoRA on embeddings")
    if any((getattr(module, "lora_bias", {}) or {}).values()):
        reasons.append("lora_bias")
    if getattr(module, "fan_in_fan_out", False):
        reasons.append("fan_in_fan_out weights")
    if reasons:
        raise ConfigError(f"fast_decode cannot merge {name} ({', '.join(reasons)} is not supported); "
                          "use fast_decode=False")


def merged_copy(model, dtype=None, attention: str | None = ATTENTION):
    """A plain transformers model computing ``model`` (4-bit base + LoRA) with merged dense weights.

    Weights with a LoRA update or a 4-bit base are new tensors (6 GB for a 3B model in bf16), built
    straight into the copy (no second, randomly initialised model); the others (embeddings, norms) are
    shared with ``model`` when the dtype matches. It is for inference: free it
    with ``del`` and build a new one after further training. ``attention``: the attention implementation of the copy (default
    :data:`ATTENTION`, registered here; ``None`` keeps transformers' sdpa).
    """
    import torch
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "config"):
        raise ConfigError("merged_copy needs a transformers model (or a PEFT model around one)")
    _check_once(model)
    device = next(base.parameters()).device
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = copy.deepcopy(base.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    if attention:
        register_attention()
    config._attn_implementation = attention or "sdpa"
    config.use_cache = True
    with torch.no_grad():
        state = merged_state(model, dtype)
    cls = pristine_class(type(base))
    with torch.device("meta"):  # no memory and no random init: the weights come from ``state``
        fresh = cls._from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) \
        else set()
    if unexpected or set(missing) - tied:
        raise ConfigError(f"merged_copy: parameters did not line up (missing {sorted(set(missing) - tied)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]})")
    if tied:
        fresh.tie_weights()
    if attention == ATTENTION and (missing := _attention_internals(fresh)):
        raise _internals_error(missing)
    _materialize_buffers(fresh, config, device)
    fresh.generation_config = copy.deepcopy(getattr(base, "generation_config", fresh.generation_config))
    return fresh.eval()


def _materialize_buffers(fresh, config, device):
    """Rebuild, on ``device``, the submodules whose buffers (rotary frequencies) are still on the meta device."""
    import torch
    for name, sub in list(fresh.named_modules()):
        if not any(b.is_meta for b in sub.buffers(recurse=False)):
            continue
        try:
            with torch.device(device):
                rebuilt = type(sub)(config=getattr(sub, "config", config))
        except TypeError as exc:
            raise ConfigError(f"merged_copy: cannot rebuild {name} ({type(sub).__name__}) on {device}: {exc}") from exc
        fresh.set_submodule(name, rebuilt)
    left = [n for n, t in list(fresh.named_parameters()) + list(fresh.named_buffers()) if t.is_meta]
    if left:
        raise ConfigError(f"merged_copy: no value for {left[:5]}")



def route_generate(model, graphs: bool = True):
    """Send ``model.generate(...)`` through a :func:`merged_copy` that follows the adapter; returns ``model``.

    For trainers that generate with the model they train (TRL's GRPOTrainer): the copy is built at the first
    call and refreshed in place from the current adapter at each later one (:func:`refresh_merged`); it stays
    allocated (6.4 GB for a 3B model in bf16) until :func:`unroute_generate`. ``graphs``: on a CUDA GPU, replay
    the decode steps from CUDA graphs (:mod:`mtlib.decode_graphs`), over one cache kept from step to step.
    :func:`unroute_generate` restores the model's own ``generate`` (Unsloth's, where it set one).
    """
    routed = getattr(model, "_mtlib_routed_generate", None)
    if routed is not None:
        routed["graphs"] = graphs
        return model
    _check_once(model)  # before training starts, not at its first generation
    had_own = "generate" in vars(model)
    own = model.generate
    state = {"own": own, "had_own": had_own, "copy": None, "graphs": graphs}

    def generate(*args, **kwargs):
        from . import decode_graphs
        if state["copy"] is None:
            state["copy"] = merged_copy(model)
        else:
            refresh_merged(state["copy"], model)
        runner = state["copy"]
        try:
            with decoding_kernels():
                if state["graphs"] and not args:
                    return decode_graphs.generate(runner, keep=True, **kwargs)
                return runner.generate(*args, **kwargs)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)  # frames would keep tensors of the step alive
            raise

    generate.__doc__ = f"model.generate through a merged copy (mtlib.fastgen.route_generate)\n\n{own.__doc__ or ''}"
    model._mtlib_routed_generate = state
    model.generate = generate
    return model


def unroute_generate(model):
    """Undo :func:`route_generate`, freeing its merged copy (a no-op for a model that is not routed)."""
    state = getattr(model, "_mtlib_routed_generate", None)
    if state is not None:
        if state["had_own"]:
            model.generate = state["own"]
        else:
            del model.generate
        if state["copy"] is not None:
            from . import decode_graphs
            decode_graphs.uninstall(state["copy"])
            state["copy"] = None
        model._mtlib_routed_generate = None
    return model
