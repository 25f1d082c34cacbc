"""YAML parameter profiles: one declared schema for every chapter's ``parameters`` cell, and its checks.

A profile (``profiles/<name>.yaml``) overrides the chapters' parameters. Its top level holds

* ``description`` (text) and ``requires_cuda`` (bool): about the profile itself;
* ``<parameter>: value``: applies to every chapter whose parameters cell has that name;
* ``<chapter>: {<parameter>: value}`` (e.g. ``03_sft: {lr: 1e-4}``): applies to that chapter only.

Everything is checked against :data:`SCHEMA` before anything runs: an unknown key, a wrong type or an
impossible value raises :class:`~mtlib.errors.ConfigError` naming the key and the profile file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")   # TRL GRPOConfig.loss_type values this book supports
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
CHAPTERS = ("01_data", "02_metrics", "03_sft", "04_grpo", "05_results", "06_gpu_speed")

# Measured with the smoke model (tests/test_train.py): SFT on 16 tokens keeps no example at all ("num_samples=0"
# inside torch), on 64 most examples lose their translation, from 128 every prompt fits with room to spare.
MIN_SEQ_LENGTH = 128

_DATA = ("01_data", "02_metrics", "03_sft", "04_grpo")
_TRAIN = ("03_sft", "04_grpo")
_RUNS = ("03_sft", "04_grpo", "05_results")


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its type, bounds and the chapters whose parameters cell holds it."""
    kind: str                      # "str", "int", "float", "bool", "list[str]", "list[float]"
    chapters: tuple[str, ...]
    help: str
    optional: bool = False         # None allowed
    min: float | None = None       # inclusive lower bound
    max: float | None = None       # inclusive upper bound
    above: float | None = None     # exclusive lower bound (e.g. lr > 0)
    choices: tuple | None = None


SCHEMA: dict[str, Param] = {
    # every chapter
    "profile": Param("str", CHAPTERS, "name of the profile the chapter ran with (display only)", optional=True),
    # data
    "dataset": Param("str", _DATA, '"multi30k" (the official release: en/de shipped, fr/cs downloaded), a local '
                     'folder or file, or a Hub dataset id'),
    "dataset_revision": Param("str", _DATA, "Hub dataset commit, tag or branch to pin (None: the newest)",
                              optional=True),
    "src_lang": Param("str", _DATA, "source language code"),
    "tgt_lang": Param("str", _DATA, "target language code"),
    "n_examples": Param("int", CHAPTERS[:5], "how many example rows to show", min=1, max=100),
    # runs
    "runs_root": Param("str", _RUNS, "folder of the run records (None: Google Drive when mounted on Colab, "
                       "else ./runs)", optional=True),
    "build_id": Param("str", _RUNS, "the build whose runs the chapter writes and reads (set by the book runner; "
                      "None: every run in runs_root)", optional=True),
    "benchmark_files": Param("list[str]", ("06_gpu_speed",), "GPU benchmark results: names in benchmarks/results/ or paths"),
    "paths_file": Param("str", ("06_gpu_speed",), "measured translation paths: a name in benchmarks/results/ or a path"),
    "grpo_file": Param("str", ("06_gpu_speed",), "measured GRPO step phases: a name in benchmarks/results/ or a path"),
    "n_bootstrap": Param("int", ("05_results",), "paired-bootstrap resamples for significance", min=10),
    # model
    "model": Param("str", _TRAIN, 'Hub model id or local path; "tiny" builds a tiny random model (smoke only); '
                   '"twin:<hub id>" builds that model\'s shape with random weights (GPU checks, no download)'),
    "model_revision": Param("str", _TRAIN, "Hub model commit, tag or branch to pin (None: the newest)",
                            optional=True),
    "max_seq_length": Param("int", _TRAIN, f"longest sequence the model sees, in tokens (at least {MIN_SEQ_LENGTH}: "
                            "the chat prompt alone takes up to 100)", min=MIN_SEQ_LENGTH),
    "load_in_4bit": Param("bool", _TRAIN, "load the base model quantized to 4 bits (CUDA only)"),
    "lora_r": Param("int", _TRAIN, "LoRA rank", min=1),
    "lora_alpha": Param("int", _TRAIN, "LoRA scaling numerator (alpha / r scales the update)", min=1),
    "lora_dropout": Param("float", _TRAIN, "dropout on the LoRA branch", min=0.0, max=0.9),
    "seed": Param("int", _TRAIN, "random seed for sampling, LoRA init and training", min=0),
    # data sizes
    "train_size": Param("int", _TRAIN, "training pairs to use (None: the whole split)", optional=True, min=1),
    "test_size": Param("int", _TRAIN, "test sentences to translate (None: the whole split)", optional=True, min=1),
    # optimisation
    "num_steps": Param("int", _TRAIN, "optimizer steps", min=1),
    "batch_size": Param("int", _TRAIN, "per-device training batch size", min=1),
    "grad_accum": Param("int", _TRAIN, "gradient accumulation steps", min=1),
    "lr": Param("float", _TRAIN, "peak learning rate", above=0.0, max=1.0),
    "warmup_steps": Param("int", _TRAIN, "linear warm-up steps", min=0),
    "weight_decay": Param("float", _TRAIN, "AdamW weight decay", min=0.0, max=1.0),
    "lr_scheduler": Param("str", _TRAIN, "learning-rate schedule", choices=SCHEDULERS),
    "logging_steps": Param("int", _TRAIN, "log the loss/rewards every N steps", min=1),
    "gradient_checkpointing": Param("bool", _TRAIN, "recompute activations in the backward pass (saves memory, "
                                    "costs time; the fast GPU profile turns it off)"),
    "padding_free": Param("bool", ("03_sft",), "SFT batches without pad tokens (None: the backend decides)",
                          optional=True),
    "group_by_length": Param("bool", ("03_sft",), "batch SFT examples of similar length (less padding)"),
    # translation
    "eval_batch_size": Param("int", _TRAIN, "sentences translated per batch", min=1),
    "max_new_tokens": Param("int", _TRAIN, "longest translation generated, in tokens", min=1),
    "fast_decode": Param("bool", _TRAIN, "translate (and sample GRPO completions) with a merged bf16 copy of "
                         "the model (mtlib.fastgen; about 6 GB more GPU memory for a 3B model)"),
    # GRPO / DAPO
    "from_sft": Param("bool", ("04_grpo",), "start GRPO from this build's newest SFT adapter (trained here "
                      "first when there is none)"),
    "sft_steps": Param("int", ("04_grpo",), "SFT steps when chapter 4 runs alone and finds no SFT adapter",
                       min=1),
    "num_generations": Param("int", ("04_grpo",), "completions sampled per prompt (the group)", min=2),
    "max_completion_length": Param("int", ("04_grpo",), "longest sampled completion, in tokens", min=1),
    "temperature": Param("float", ("04_grpo",), "sampling temperature during GRPO", above=0.0, max=5.0),
    "beta": Param("float", ("04_grpo",), "KL coefficient (0: no reference model)", min=0.0),
    "epsilon": Param("float", ("04_grpo",), "lower clipping range", above=0.0, max=1.0),
    "epsilon_high": Param("float", ("04_grpo",), "upper clipping range (DAPO clip-higher)", above=0.0, max=1.0),
    "loss_type": Param("str", ("04_grpo",), "loss aggregation", choices=LOSS_TYPES),
    "rewards": Param("list[str]", ("04_grpo",), "reward functions by name (mtlib.rewards.REWARDS)"),
    "reward_weights": Param("list[float]", ("04_grpo",), "weight of each reward (None: all 1)", optional=True),
}


def chapter_names(chapter: str) -> list[str]:
    """Names the schema expects in ``chapter``'s parameters cell."""
    if chapter not in CHAPTERS:
        raise ConfigError(f"unknown chapter {chapter!r}; chapters are {', '.join(CHAPTERS)}")
    return [name for name, p in SCHEMA.items() if chapter in p.chapters]


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and value.strip() != ""
    if kind.startswith("list["):
        item = kind[5:-1]
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(_type_ok(item, v) for v in value)
    raise AssertionError(f"schema kind {kind!r}")


def check_value(name: str, value: Any, where: str = "parameters") -> Any:
    """Check one parameter against the schema; returns the value (floats as float), raises ConfigError."""
    if name not in SCHEMA:
        raise ConfigError(f"{where}: unknown parameter {name!r}; known parameters: {', '.join(SCHEMA)}")
    p = SCHEMA[name]
    if value is None:
        if p.optional:
            return None
        raise ConfigError(f"{where}: parameter {name!r} must be set (a {p.kind}), got null/None")
    if not _type_ok(p.kind, value):
        raise ConfigError(f"{where}: parameter {name!r} must be a {p.kind} ({p.help}), "
                          f"got {value!r} ({type(value).__name__})")
    if p.kind == "float":
        value = float(value)
    if p.choices is not None and value not in p.choices:
        raise ConfigError(f"{where}: parameter {name!r} must be one of {', '.join(map(str, p.choices))}, got {value!r}")
    for v in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(v, str) or isinstance(v, bool):
            continue
        if p.min is not None and v < p.min:
            raise ConfigError(f"{where}: parameter {name!r} must be >= {p.min} ({p.help}), got {v!r}")
        if p.above is not None and v <= p.above:
            raise ConfigError(f"{where}: parameter {name!r} must be > {p.above} ({p.help}), got {v!r}")
        if p.max is not None and v > p.max:
            raise ConfigError(f"{where}: parameter {name!r} must be <= {p.max} ({p.help}), got {v!r}")
    return value


def check_parameters(params: dict, chapter: str | None = None, where: str = "parameters") -> dict:
    """Check a mapping of parameters (and that ``chapter`` uses each one); returns the checked copy."""
    allowed = set(chapter_names(chapter)) if chapter else set(SCHEMA)
    out = {}
    for name, value in params.items():
        if name not in allowed:
            if name in SCHEMA:
                raise ConfigError(f"{where}: parameter {name!r} is not a parameter of chapter {chapter} "
                                  f"(it belongs to {', '.join(SCHEMA[name].chapters)})")
            raise ConfigError(f"{where}: unknown parameter {name!r}; known parameters: {', '.join(sorted(allowed))}")
        out[name] = check_value(name, value, where)
    _check_combinations(out, where)
    return out


def _check_combinations(params: dict, where: str) -> None:
    """Rules that involve two parameters."""
    lo, hi = params.get("epsilon"), params.get("epsilon_high")
    if lo is not None and hi is not None and hi < lo:
        raise ConfigError(f"{where}: parameter 'epsilon_high' ({hi}) must be >= 'epsilon' ({lo})")
    batch, accum, group = params.get("batch_size"), params.get("grad_accum"), params.get("num_generations")
    if batch is not None and accum is not None and group is not None and (batch * accum) % group:
        raise ConfigError(f"{where}: parameter 'num_generations' ({group}) must divide batch_size x grad_accum "
                          f"({batch} x {accum} = {batch * accum}): each step samples whole groups")
    rewards, weights = params.get("rewards"), params.get("reward_weights")
    if rewards is not None and weights is not None and len(rewards) != len(weights):
        raise ConfigError(f"{where}: parameter 'reward_weights' has {len(weights)} weights "
                          f"for {len(rewards)} rewards {rewards}")


# YAML 1.1 (PyYAML) reads ``1e-4`` as a string: its floats need a dot (``1.0e-4``). YAML 1.2, and everyone
# writing a learning rate, accept ``1e-4``; so does this loader. It also refuses a key given twice in one
# mapping (PyYAML silently keeps the last one).
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                          |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                          |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X)


class ProfileLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads YAML 1.2 floats (``1e-4``) and refuses duplicate keys."""


ProfileLoader.yaml_implicit_resolvers = {  # a deep copy: add_implicit_resolver would append to SafeLoader's lists
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ProfileLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1}, again on line "
                f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


ProfileLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text_or_file):
    """Parse profile YAML (a string or an open file) with :class:`ProfileLoader`: ``1e-4`` is a float, a repeated
    key is an error."""
    return yaml.load(text_or_file, Loader=ProfileLoader)  # noqa: S506 - a SafeLoader subclass


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"profile file {p} does not exist")
        return p.resolve()
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(q.stem for q in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {str(name_or_path)!r}: no {candidate}; shipped profiles: {', '.join(known)}")
    return candidate


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imported lazily: torch is slow to import)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load_profile(name_or_path: str | Path, check_device: bool = True) -> dict:
    """Read and validate a profile (shipped name or YAML path).

    Returns ``{"name", "path", "description", "requires_cuda", "parameters", "chapters"}`` where
    ``parameters`` applies to every chapter that has the name and ``chapters`` maps a chapter to its
    own overrides. With ``check_device``, a profile with ``requires_cuda: true`` raises ConfigError on a
    machine without CUDA.
    """
    path = _resolve(name_or_path)
    where = f"profile {path}"
    try:
        with open(path, encoding="utf-8") as f:  # a file, so that YAML's messages name it
            raw = read_yaml(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of parameter: value, got {type(raw).__name__}")
    description = raw.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be text")
    requires_cuda = raw.pop("requires_cuda", False)
    if not isinstance(requires_cuda, bool):
        raise ConfigError(f"{where}: 'requires_cuda' must be true or false, got {requires_cuda!r}")
    shared, chapters = {}, {}
    for key, value in raw.items():
        if key in CHAPTERS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping of parameter: value")
            chapters[key] = check_parameters(value, key, f"{where}, section {key}")
        else:
            shared[key] = check_value(key, value, where)
    _check_combinations(shared, where)
    for chapter in CHAPTERS:  # the merged view each chapter will see must hold together too
        _check_combinations({**{k: v for k, v in shared.items() if chapter in SCHEMA[k].chapters},
                             **chapters.get(chapter, {})}, f"{where}, chapter {chapter}")
    profile = {"name": path.stem, "path": str(path), "description": description,
               "requires_cuda": requires_cuda, "parameters": shared, "chapters": chapters}
    if check_device:
        check_cuda(profile)
    return profile


def check_cuda(profile: dict) -> None:
    """Raise ConfigError when the profile says ``requires_cuda: true`` and no CUDA device is visible."""
    if profile.get("requires_cuda") and not cuda_available():
        raise ConfigError(f"profile {profile['path']}: 'requires_cuda' is true but this machine has no CUDA "
                          f"device; use the smoke profile on CPU (--profile smoke)")


def chapter_parameters(profile: dict, chapter: str) -> dict:
    """The parameters papermill passes to ``chapter``: shared values it uses, its own section, the profile name."""
    names = set(chapter_names(chapter))
    params = {k: v for k, v in profile["parameters"].items() if k in names}
    params.update(profile["chapters"].get(chapter, {}))
    params["profile"] = profile["name"]
    return params
