"""The book's parameters, each declared once: type, default, bounds, explanation, chapters and trainer field.

Everything else is derived from :data:`SCHEMA`:

* each chapter's ``parameters`` cell (:func:`parameters_cell`; ``make sync`` writes it into ``notebooks/NN_*.py``
  and ``tests/test_parameters.py`` fails when a cell differs from it);
* the checks of a profile or an edited cell (:func:`check_value`, :func:`check_parameters`; used by
  :mod:`mtlib.profiles` and :func:`mtlib.chapter.header`);
* the defaults of the book's fields of :class:`mtlib.train.SFTParams` (chapter ``03_sft``) and
  :class:`mtlib.train.GRPOParams` (chapter ``04_grpo``), and the checks their ``.validate()`` applies to those
  fields (:func:`trainer_defaults`, :func:`check_trainer`);
* the mapping of a chapter's short names to the trainers' fields (:func:`trainer_values`: ``num_steps`` ->
  ``max_steps``, ``batch_size`` -> ``per_device_train_batch_size`` ...).

Adding a parameter: one ``Param`` entry below (in the order the cells list it), then ``make sync``.
"""
from __future__ import annotations

import copy
import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

CHAPTERS = ("01_data", "02_metrics", "03_sft", "04_grpo", "05_results", "06_gpu_speed")
TRAINERS = {"sft": "03_sft", "grpo": "04_grpo"}  # trainer dataclass -> the chapter whose defaults it takes
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")   # TRL GRPOConfig.loss_type values this book supports
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")

# Measured with the smoke model (tests/test_train.py): SFT on 16 tokens keeps no example at all ("num_samples=0"
# inside torch), on 64 most examples lose their translation, from 128 every prompt fits with room to spare.
MIN_SEQ_LENGTH = 128

MODEL = "meta-llama/Llama-3.2-3B-Instruct"
SFT_STEPS = 200  # the seed recipe's SFT steps: chapter 3's num_steps and chapter 4's sft_steps

_DATA = ("01_data", "02_metrics", "03_sft", "04_grpo")
_TRAIN = ("03_sft", "04_grpo")
_RUNS = ("03_sft", "04_grpo", "05_results")
_BOTH = ("sft", "grpo")


@dataclass(frozen=True)
class Param:
    """One notebook parameter, declared once.

    ``default`` and ``cell_help`` are a single value, or ``{chapter: value}`` where the chapters differ.
    ``help`` explains the parameter in the chapter's parameter table and in error messages; ``cell_help`` is
    the comment of its line in the parameters cell (None: ``help``; a newline continues it on the next line,
    as does a comment longer than :data:`CELL_WIDTH` allows).
    """
    kind: str                      # "str", "int", "float", "bool", "list[str]", "list[float]", "gpus" (int or "auto")
    default: Any
    chapters: tuple[str, ...]
    help: str
    cell_help: str | dict | None = None
    optional: bool = False         # None allowed
    min: float | None = None       # inclusive lower bound
    max: float | None = None       # inclusive upper bound
    above: float | None = None     # exclusive lower bound (e.g. lr > 0)
    choices: tuple | None = None
    # The trainer dataclasses that take it ("sft": SFTParams, "grpo": GRPOParams), under which field name (None:
    # the same), and how a chapter's value becomes the field's (None: as it is; a field so converted, with
    # trainer-only values, is checked by its dataclass). trainer_min: the trainers' lower bound where it is
    # looser than the chapters' (max_seq_length: the trainer checks the data itself).
    train: tuple[str, ...] = ()
    field: str | None = None
    to_field: Callable[[Any], Any] | None = None
    trainer_min: float | None = None

    def default_for(self, chapter: str) -> Any:
        """The default in ``chapter`` (a fresh copy of a list)."""
        value = self.default[chapter] if isinstance(self.default, dict) else self.default
        return copy.deepcopy(value)

    def comment(self, chapter: str) -> str:
        """The comment of this parameter's line in ``chapter``'s parameters cell."""
        text = self.cell_help[chapter] if isinstance(self.cell_help, dict) else self.cell_help
        return self.help if text is None else text


def _group_by_length(on: bool) -> str:
    return "group_by_length" if on else "random"


_RUNS_NONE = "(None: Google Drive if mounted, else ./runs)"

# In the order the parameters cells list them.
SCHEMA: dict[str, Param] = {
    "profile": Param("str", None, CHAPTERS, "name of the profile the chapter ran with (display only)",
                     "name of the profile the runner used (display only)", optional=True),
    # model
    "model": Param("str", MODEL, _TRAIN, 'Hub model id or local path; "tiny" builds a tiny random model (smoke '
                   'only); "twin:<hub id>" builds that model\'s shape with random weights (GPU checks, no download)',
                   'Hub id or local path; "tiny": tiny random model,\n'
                   '"twin:<id>": that model\'s shape with random weights'),
    "model_revision": Param("str", None, _TRAIN, "Hub model commit, tag or branch to pin (None: the newest)",
                            "Hub model commit/tag to pin (None: newest)", optional=True),
    # data
    "dataset": Param("str", "multi30k", _DATA, '"multi30k" (the official release: en/de shipped, fr/cs downloaded), '
                     'a local folder or file, or a Hub dataset id',
                     '"multi30k" (en/de shipped; fr/cs downloaded), a local path or a Hub id'),
    "dataset_revision": Param("str", None, _DATA, "Hub dataset commit, tag or branch to pin (None: the newest)",
                              "Hub dataset commit/tag to pin (None: newest)", optional=True),
    "src_lang": Param("str", "en", _DATA, "source language code", "source language"),
    "tgt_lang": Param("str", "de", _DATA, "target language code", "target language"),
    # runs
    "runs_root": Param("str", None, _RUNS, "folder of the run records (None: Google Drive when mounted on Colab, "
                       "else ./runs)", {
                           "03_sft": f"where run records (config, scores, translations, adapter) go\n{_RUNS_NONE}",
                           "04_grpo": f"where run records go; the SFT adapter is looked up here\n{_RUNS_NONE}",
                           "05_results": f"this build's runs folder {_RUNS_NONE}"}, optional=True),
    "build_id": Param("str", None, _RUNS, "the build whose runs the chapter writes and reads (set by the book runner; "
                      "None: every run in runs_root)", {
                          "03_sft": "the build these runs belong to (set by the book runner; None: no build)",
                          "04_grpo": "this build: only its SFT adapter is continued\n(None: any run in runs_root)",
                          "05_results": "read only this build's runs (set by the book runner; None: every run)"},
                      optional=True),
    "from_sft": Param("bool", True, ("04_grpo",), "start GRPO from this build's newest SFT adapter (trained here "
                      "first when there is none)",
                      "continue the newest SFT adapter in runs_root (trained here first if none)"),
    "sft_steps": Param("int", SFT_STEPS, ("04_grpo",), "SFT steps when chapter 4 runs alone and finds no SFT adapter",
                       f"SFT steps when no SFT adapter is found (the seed recipe's {SFT_STEPS})", min=1),
    "seed": Param("int", 3407, _TRAIN, "random seed for sampling, LoRA init and training",
                  "seed for the data sample, LoRA initialisation and training", min=0, train=_BOTH),
    "max_seq_length": Param("int", 512, _TRAIN, f"longest sequence the model sees, in tokens (at least "
                            f"{MIN_SEQ_LENGTH}: the chat prompt alone takes up to 100)", {
                                "03_sft": "longest training example, in tokens",
                                "04_grpo": "longest prompt plus completion, in tokens"},
                            min=MIN_SEQ_LENGTH, train=("sft",), trainer_min=1),
    "load_in_4bit": Param("bool", True, _TRAIN, "load the base model quantized to 4 bits (CUDA only)",
                          "QLoRA: base weights in 4 bits (CUDA only)"),
    "lora_r": Param("int", 16, _TRAIN, "LoRA rank",
                    {"03_sft": "LoRA rank", "04_grpo": "LoRA rank (used only when no SFT adapter is found)"}, min=1),
    "lora_alpha": Param("int", 16, _TRAIN, "LoRA scaling numerator (alpha / r scales the update)",
                        {"03_sft": "LoRA alpha (the update is scaled by alpha / r)", "04_grpo": "LoRA alpha"}, min=1),
    "lora_dropout": Param("float", 0.0, _TRAIN, "dropout on the LoRA branch", min=0.0, max=0.9),
    # data sizes
    "train_size": Param("int", None, _TRAIN, "training pairs to use (None: the whole split)", {
                            "03_sft": "training pairs (None: all 29,000)",
                            "04_grpo": "training prompts (None: all 29,000; training stops after num_steps)"},
                        optional=True, min=1),
    "test_size": Param("int", None, _TRAIN, "test sentences to translate (None: the whole split)",
                       "sentences per test set (None: all)", optional=True, min=1),
    # optimisation
    "num_steps": Param("int", {"03_sft": SFT_STEPS, "04_grpo": 500}, _TRAIN, "optimizer steps", min=1,
                       train=_BOTH, field="max_steps"),
    "batch_size": Param("int", {"03_sft": 4, "04_grpo": 2}, _TRAIN, "per-device training batch size",
                        {"03_sft": "per-device batch size", "04_grpo": "completions per device per micro-batch"},
                        min=1, train=_BOTH, field="per_device_train_batch_size"),
    "grad_accum": Param("int", {"03_sft": 4, "04_grpo": 2}, _TRAIN, "gradient accumulation steps", {
                            "03_sft": "gradient accumulation steps (effective batch: batch_size x grad_accum)",
                            "04_grpo": "micro-batches per step (batch_size x grad_accum completions per step)"},
                        min=1, train=_BOTH, field="gradient_accumulation_steps"),
    "num_generations": Param("int", 4, ("04_grpo",), "completions sampled per prompt (the group)",
                             "completions sampled per prompt: the group", min=2, train=("grpo",)),
    "lr": Param("float", {"03_sft": 2e-4, "04_grpo": 5e-6}, _TRAIN, "peak learning rate", above=0.0, max=1.0,
                train=_BOTH),
    "warmup_steps": Param("int", {"03_sft": 5, "04_grpo": 0}, _TRAIN, "linear warm-up steps", min=0, train=_BOTH),
    "weight_decay": Param("float", {"03_sft": 0.01, "04_grpo": 0.0}, _TRAIN, "AdamW weight decay", min=0.0, max=1.0,
                          train=_BOTH),
    "lr_scheduler": Param("str", "linear", _TRAIN, "learning-rate schedule",
                          {"03_sft": "learning-rate schedule after warm-up", "04_grpo": "learning-rate schedule"},
                          choices=SCHEDULERS, train=_BOTH, field="lr_scheduler_type"),
    "logging_steps": Param("int", 1, _TRAIN, "log the loss/rewards every N steps",
                           {"03_sft": "log the loss every N steps", "04_grpo": "log rewards every N steps"},
                           min=1, train=_BOTH),
    "num_gpus": Param("gpus", 1, _TRAIN, 'GPUs to train and translate on, data-parallel (1: this process; "auto": '
                      "every visible GPU; more than one launches worker processes through Accelerate)",
                      'GPUs, data-parallel (1: this process; "auto": every visible GPU)', min=1),
    "gradient_checkpointing": Param("bool", True, _TRAIN, "recompute activations in the backward pass (saves "
                                    "memory, costs time; the fast GPU profile turns it off)",
                                    "recompute activations in the backward pass (saves memory, costs time)"),
    "padding_free": Param("bool", None, ("03_sft",), "SFT batches without pad tokens (None: the backend decides)",
                          "batches without pad tokens (None: the backend decides)", optional=True, train=("sft",)),
    "group_by_length": Param("bool", False, ("03_sft",), "batch SFT examples of similar length (less padding)",
                             "batch examples of similar length (less padding)", train=("sft",),
                             field="train_sampling_strategy", to_field=_group_by_length),
    # GRPO / DAPO
    "loss_type": Param("str", "bnpo", ("04_grpo",), "loss aggregation", "token-level loss aggregation (DAPO)",
                       choices=LOSS_TYPES, train=("grpo",)),
    "beta": Param("float", 0.0, ("04_grpo",), "KL coefficient (0: no reference model)", min=0.0, train=("grpo",)),
    "epsilon": Param("float", 0.2, ("04_grpo",), "lower clipping range", above=0.0, max=1.0, train=("grpo",)),
    "epsilon_high": Param("float", 0.28, ("04_grpo",), "upper clipping range (DAPO clip-higher)", above=0.0,
                          max=1.0, train=("grpo",)),
    "max_completion_length": Param("int", 76, ("04_grpo",), "longest sampled completion, in tokens",
                                   "longest sampled translation, in tokens", min=1, train=("grpo",)),
    "temperature": Param("float", 0.9, ("04_grpo",), "sampling temperature during GRPO", "sampling temperature",
                         above=0.0, max=5.0, train=("grpo",)),
    # the trainer also takes reward functions: GRPOParams.validate checks its rewards itself
    "rewards": Param("list[str]", ["bleu", "length"], ("04_grpo",), "reward functions by name (mtlib.rewards.REWARDS)",
                     "reward functions (mtlib.rewards.REWARDS)", train=("grpo",), to_field=list),
    "reward_weights": Param("list[float]", [1.0, 1.0], ("04_grpo",), "weight of each reward (None: all 1)",
                            "weight of each reward", optional=True, train=("grpo",)),
    # translation
    "eval_batch_size": Param("int", 64, _TRAIN, "sentences translated per batch", min=1),
    "fast_decode": Param("bool", False, _TRAIN, "translate (and sample GRPO completions) with a merged bf16 copy of "
                         "the model (mtlib.fastgen; about 6 GB more GPU memory for a 3B model)",
                         "decode with a merged bf16 copy of the model (mtlib.fastgen)", train=("grpo",),
                         field="fast_generation"),
    "max_new_tokens": Param("int", 128, _TRAIN, "longest translation generated, in tokens", {
                                "03_sft": "longest translation, in tokens",
                                "04_grpo": "longest translation at evaluation, in tokens"}, min=1),
    # results
    "n_bootstrap": Param("int", 1000, ("05_results",), "paired-bootstrap resamples for significance",
                         "paired-bootstrap resamples per comparison", min=10),
    "n_examples": Param("int", 5, CHAPTERS[:5], "how many example rows to show", {
                            "01_data": "example pairs to show", "02_metrics": "example rows to show",
                            **dict.fromkeys(_RUNS, "translations to show side by side")}, min=1, max=100),
    # GPU speed appendix
    "benchmark_files": Param("list[str]", ["h100_run6.json"], ("06_gpu_speed",),
                             "GPU benchmark results: names in benchmarks/results/ or paths",
                             "measured results, in benchmarks/results/ (names there, or paths)"),
    "paths_file": Param("str", "h100_translate_paths.json", ("06_gpu_speed",),
                        "measured translation paths: a name in benchmarks/results/ or a path",
                        "measured translation paths (a name there, or a path)"),
    "grpo_file": Param("str", "grpo_seed_vs_fast_h200_2026-12-02/grpo_seed_vs_fast_h200.json", ("06_gpu_speed",),
                       "measured GRPO step phases: a name in benchmarks/results/ or a path",
                       "measured GRPO step phases (a name there, or a path)"),
    "book_run": Param("str", "gpu_check_h200_2026-12-02_run10", ("06_gpu_speed",),
                      "the book command run on a GPU (benchmarks/gpu_check.sh): a folder in benchmarks/results/",
                      "the book command on a GPU (a folder there)"),
    "then_and_now_run": Param("str", "then_and_now_h200_2026-12-03", ("06_gpu_speed",),
                              "the book command of today's code and of an earlier commit on one machine "
                              "(benchmarks/gpu_then_and_now.sh): a folder in benchmarks/results/",
                              "today's code and an earlier one on one machine (a folder there)"),
    "multi_gpu_file": Param("str", "multi_gpu.json", ("06_gpu_speed",),
                            "one GPU against two (benchmarks/gpu_multi.py's output): a name in benchmarks/results/ "
                            "or a path; shown only if it exists", "one GPU against two (shown if measured)"),
}


# --------------------------------------------------------------------------- chapters

def chapter_names(chapter: str) -> list[str]:
    """Names the schema expects in ``chapter``'s parameters cell, in the cell's order."""
    if chapter not in CHAPTERS:
        raise ConfigError(f"unknown chapter {chapter!r}; chapters are {', '.join(CHAPTERS)}")
    return [name for name, p in SCHEMA.items() if chapter in p.chapters]


def defaults(chapter: str) -> dict:
    """``chapter``'s parameters with their defaults (what its parameters cell assigns)."""
    return {name: SCHEMA[name].default_for(chapter) for name in chapter_names(chapter)}


# --------------------------------------------------------------------------- checks

def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str) and value.strip() != ""
    if kind == "gpus":  # a count, or "auto"
        return value == "auto" or _type_ok("int", value)
    if kind.startswith("list["):
        item = kind[5:-1]
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(_type_ok(item, v) for v in value)
    raise AssertionError(f"schema kind {kind!r}")


def check_value(name: str, value: Any, where: str = "parameters", trainer: bool = False) -> Any:
    """Check one parameter against the schema; returns the value (floats as float), raises ConfigError.

    ``trainer``: the value of a trainer dataclass's field (``trainer_min`` replaces ``min`` where declared)."""
    if name not in SCHEMA:
        raise ConfigError(f"{where}: unknown parameter {name!r}; known parameters: {', '.join(SCHEMA)}")
    p = SCHEMA[name]
    if value is None:
        if p.optional:
            return None
        raise ConfigError(f"{where}: parameter {name!r} must be set (a {p.kind}), got null/None")
    if not _type_ok(p.kind, value):
        finite = " (finite)" if "float" in p.kind else ""
        kind = "positive integer or 'auto'" if p.kind == "gpus" else p.kind
        raise ConfigError(f"{where}: parameter {name!r} must be a{finite} {kind} ({p.help}), "
                          f"got {value!r} ({type(value).__name__})")
    if p.kind == "float":
        value = float(value)
    if p.choices is not None and value not in p.choices:
        raise ConfigError(f"{where}: parameter {name!r} must be one of {', '.join(map(str, p.choices))}, got {value!r}")
    low = p.trainer_min if trainer and p.trainer_min is not None else p.min
    for v in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(v, str) or isinstance(v, bool):
            continue
        if low is not None and v < low:
            raise ConfigError(f"{where}: parameter {name!r} must be >= {low} ({p.help}), got {v!r}")
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
    check_combinations(out, where)
    return out


def check_combinations(params: dict, where: str, names: dict | None = None) -> None:
    """Rules that involve two parameters (of a chapter, a profile, or a trainer dataclass's fields; ``names``
    maps a parameter to the field name the message should use)."""
    n = {k: (names or {}).get(k, k) for k in ("epsilon", "epsilon_high", "batch_size", "grad_accum",
                                              "num_generations", "rewards", "reward_weights")}
    lo, hi = params.get("epsilon"), params.get("epsilon_high")
    if lo is not None and hi is not None and hi < lo:
        raise ConfigError(f"{where}: parameter '{n['epsilon_high']}' ({hi}) must be >= '{n['epsilon']}' ({lo})")
    batch, accum, group = params.get("batch_size"), params.get("grad_accum"), params.get("num_generations")
    if batch is not None and accum is not None and group is not None and (batch * accum) % group:
        raise ConfigError(f"{where}: parameter '{n['num_generations']}' ({group}) must divide {n['batch_size']} x "
                          f"{n['grad_accum']} ({batch} x {accum} = {batch * accum}): each step samples whole groups")
    rewards, weights = params.get("rewards"), params.get("reward_weights")
    if rewards is not None and weights is not None and len(rewards) != len(weights):
        raise ConfigError(f"{where}: parameter '{n['reward_weights']}' has {len(weights)} weights "
                          f"for {len(rewards)} rewards {rewards}")


# --------------------------------------------------------------------------- trainers

def _trained(stage: str) -> dict[str, Param]:
    if stage not in TRAINERS:
        raise ConfigError(f"unknown trainer {stage!r}; trainers are {', '.join(TRAINERS)}")
    return {name: p for name, p in SCHEMA.items() if stage in p.train}


def trainer_fields(stage: str) -> dict[str, str]:
    """{parameter: field of the trainer dataclass} for ``stage`` ("sft" or "grpo")."""
    return {name: p.field or name for name, p in _trained(stage).items()}


def trainer_defaults(stage: str) -> dict:
    """{field: default} of the book's fields of ``stage``'s trainer dataclass: its chapter's defaults."""
    chapter = TRAINERS[stage] if stage in TRAINERS else None
    out = {}
    for name, p in _trained(stage).items():
        value = p.default_for(chapter)
        out[p.field or name] = p.to_field(value) if p.to_field and value is not None else value
    return out


def trainer_values(params: dict, stage: str) -> dict:
    """A chapter's parameters as ``stage``'s trainer fields (short names mapped; None: the trainer's default)."""
    out = {}
    for name, p in _trained(stage).items():
        value = params.get(name)
        if value is None:
            continue
        value = list(value) if isinstance(value, (list, tuple)) else value
        out[p.field or name] = p.to_field(value) if p.to_field else value
    if "rewards" in out and "reward_weights" not in out:  # reward_weights None: every reward weighs 1
        out["reward_weights"] = [1.0] * len(out["rewards"])
    return out


def check_trainer(obj, stage: str) -> None:
    """Check a trainer dataclass's book fields by their parameters' rules, then the rules tying two together.

    A field filled through ``to_field`` holds trainer values (``train_sampling_strategy``, reward functions):
    its dataclass checks it."""
    cls = type(obj).__name__
    values = {}
    for name, p in _trained(stage).items():
        field = p.field or name
        value = getattr(obj, field)
        values[name] = value if p.to_field else check_value(name, value, f"{cls}.{field}", trainer=True)
    check_combinations(values, cls, trainer_fields(stage))


# --------------------------------------------------------------------------- the parameters cell

CELL_MARK = '# %% tags=["parameters"]'
COMMENT_COLUMN = 35   # where the comments start ...
ALIGN_LIMIT = 40      # ... or after the longest assignment up to this length (longer ones: two spaces)
CELL_WIDTH = 110      # longer comments continue on the next line, aligned


def literal(value: Any) -> str:
    """A default as the parameters cell writes it: strings in double quotes, ``2e-4`` rather than ``0.0002``."""
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value and value.isprintable() else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, float) and value != 0 and math.isfinite(value) and abs(value) < 1e-3:
        for digits in range(17):
            text = f"{value:.{digits}e}"
            if float(text) == value:
                mantissa, exponent = text.split("e")
                return f"{mantissa}e{int(exponent)}"
    return repr(value)


def parameters_cell(chapter: str) -> str:
    """``chapter``'s parameters cell, as its py:percent source holds it: ``name = default  # comment`` lines."""
    lines = [(f"{name} = {literal(SCHEMA[name].default_for(chapter))}", SCHEMA[name].comment(chapter))
             for name in chapter_names(chapter)]
    column = max([COMMENT_COLUMN] + [len(a) + 2 for a, _ in lines if len(a) <= ALIGN_LIMIT])
    out = [CELL_MARK]
    for assign, comment in lines:
        start = max(column, len(assign) + 2)
        parts = [part for line in comment.splitlines() for part in
                 textwrap.wrap(line, CELL_WIDTH - start - 2, break_long_words=False, break_on_hyphens=False)]
        out.append(assign.ljust(start) + "# " + parts[0] if parts else assign)
        out.extend(" " * start + "# " + part for part in parts[1:])
    return "\n".join(out) + "\n"
