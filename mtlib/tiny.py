"""Offline models: a tiny random Llama with a Llama-3-style chat tokenizer, and full-size "shape twins".

Both are built on the spot (no Hub), deterministically from a seed, and saved as ordinary Hugging Face
folders that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` (and ``mtlib.modeling.load_model``)
read like the real model. Their outputs mean nothing: they exist to run the pipeline end to end.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError, DataError

# Llama 3's special tokens in the order of their ids 128000..128010 (the tiny tokenizer puts them first).
SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
BOS, EOS, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"

# Llama 3.2's turns: each message in its headers, then the assistant's header when a reply is asked for.
_TURNS = (
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
# Llama 3.2's chat template for system/user/assistant turns, without the date lines and tool calls.
CHAT_TEMPLATE = "{{- bos_token }}" + _TURNS
# Llama 3.2-Instruct's own template less its tool calls, for shape twins: the system turn always there, with the
# knowledge-cutoff and today's-date lines (today's date unless a date_string is given, as the real model does).
LLAMA32_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
) + _TURNS

_LLAMA32_COMMON = dict(
    vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
    attention_bias=False, mlp_bias=False, initializer_range=0.02, tie_word_embeddings=True,
    rope_theta=500000.0,
    rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
)
# The configs of real models (from their config.json on the Hub), for shape twins.
KNOWN_CONFIGS = {
    "meta-llama/Llama-3.2-3B-Instruct": dict(_LLAMA32_COMMON, hidden_size=3072, intermediate_size=8192,
                                             num_hidden_layers=28, num_attention_heads=24,
                                             num_key_value_heads=8, head_dim=128),
    "meta-llama/Llama-3.2-1B-Instruct": dict(_LLAMA32_COMMON, hidden_size=2048, intermediate_size=8192,
                                             num_hidden_layers=16, num_attention_heads=32,
                                             num_key_value_heads=8, head_dim=64),
}
KNOWN_CONFIGS["unsloth/Llama-3.2-3B-Instruct"] = KNOWN_CONFIGS["meta-llama/Llama-3.2-3B-Instruct"]
KNOWN_CONFIGS["unsloth/Llama-3.2-1B-Instruct"] = KNOWN_CONFIGS["meta-llama/Llama-3.2-1B-Instruct"]

TINY_DEFAULTS = dict(vocab_size=1500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                     rope_theta=500000.0, tie_word_embeddings=True,
                     initializer_range=0.1)  # wider than Llama's 0.02 so greedy outputs vary
_ALIASES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads"}

_FALLBACK_TEXTS = [
    "A man in an orange hat starring at something.", "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Two young, White males are outside near many bushes.", "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "A little girl climbing into a wooden playhouse.", "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "A dog runs through the grass.", "Ein Hund rennt durch das Gras.",
]


def default_texts(n: int = 3000) -> list[str]:
    """The first ``n`` English and German training sentences of Multi30k (:func:`mtlib.data.default_raw_dir`),
    or a few built-in ones when that folder lacks them."""
    from .data import default_raw_dir
    raw = default_raw_dir()
    texts: list[str] = []
    if raw is not None:
        for lang in ("en", "de"):
            f = Path(raw) / f"train.{lang}.gz"
            if f.exists():
                with gzip.open(f, "rt", encoding="utf-8") as fh:
                    for i, line in enumerate(fh):
                        if i >= n:
                            break
                        texts.append(line.strip())
    return texts or list(_FALLBACK_TEXTS)


def _chat_texts() -> list[str]:
    """Texts of the prompts themselves, so the system prompt and headers tokenize compactly."""
    from .prompts import LANGUAGE_NAMES, PROMPT_DATE, system_prompt
    return [system_prompt(t, s) for s in ("en", "de") for t in LANGUAGE_NAMES if t != s] + [
        "system user assistant", f"Cutting Knowledge Date: December 2023\nToday Date: {PROMPT_DATE}"]


CHAT_TEXT_WEIGHT = 1  # how often the prompts' own texts count in the tiny tokenizer's training
# The shape twin's tokenizer: with these, Multi30k's SFT examples and GRPO prompts take about as many tokens as
# with Llama 3's own (benchmarks/twin_token_counts.py measures both), so the twin's timings are the real model's.
TWIN_TOKENIZER = dict(vocab_size=4000, chat_weight=100, chat_template=LLAMA32_CHAT_TEMPLATE)
TWIN_MARKER = "mtlib_twin.json"  # written last into a twin's folder: what it is a twin of, and how it was built


def build_tokenizer(texts=None, vocab_size: int = TINY_DEFAULTS["vocab_size"], special_tokens=SPECIAL_TOKENS,
                    chat_template: str = CHAT_TEMPLATE, chat_weight: int = CHAT_TEXT_WEIGHT):
    """A byte-level BPE tokenizer (GPT-2/Llama-3 style) trained on ``texts`` and the prompts' own texts
    (``chat_weight`` times), wrapped for transformers with ``chat_template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) if texts is not None else default_texts()
    if not texts or not all(isinstance(t, str) for t in texts):
        raise DataError("texts for the tiny tokenizer must be a non-empty list of strings")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    from .prompts import parallel_tokenization
    with parallel_tokenization():  # on every core, even after Unsloth's import (the same merges either way)
        tok.train_from_iterator(texts + _chat_texts() * chat_weight, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=chat_template, model_max_length=131072,
                                   clean_up_tokenization_spaces=False)
    return fast


def _generation_config(tokenizer):
    from transformers import GenerationConfig
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    # As Llama-3.2-Instruct's generation_config.json: sampling by default (translate() asks for greedy).
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=ids,
                            pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.6, top_p=0.9)


def _token_ids(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def build_tiny_model(out_dir, texts=None, seed: int = 0, **config) -> Path:
    """Build and save a tiny random LlamaForCausalLM + tokenizer; same seed and texts give identical files.

    ``config`` overrides :data:`TINY_DEFAULTS` (``vocab_size`` is the tokenizer's BPE size;
    ``num_layers``/``num_heads``/``num_kv_heads`` are accepted as short names).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(TINY_DEFAULTS)
    for k, v in config.items():
        cfg[_ALIASES.get(k, k)] = v
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ConfigError(f"hidden_size ({cfg['hidden_size']}) must be divisible by num_attention_heads "
                          f"({cfg['num_attention_heads']})")
    out = Path(out_dir)
    _check_replaceable(out)
    tokenizer = build_tokenizer(texts, vocab_size=cfg.pop("vocab_size"))
    model_cfg = LlamaConfig(vocab_size=len(tokenizer), **cfg, **_token_ids(tokenizer))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_cfg).eval()
    model.generation_config = _generation_config(tokenizer)
    with _complete_folder(out) as tmp:  # written aside, renamed into place once every file is there
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


MANIFEST = "mtlib_tiny.json"  # written last: every file of the model folder with its size


def is_complete(out_dir) -> bool:
    """Whether ``out_dir`` holds a whole model folder written by :func:`build_tiny_model` (every file its
    manifest lists, at its recorded size); False for a folder left half-written by an interrupted save."""
    out = Path(out_dir)
    try:
        files = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
        return bool(files) and all((out / name).is_file() and (out / name).stat().st_size == size
                                   for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _check_replaceable(out: Path) -> None:
    """Refuse to replace a non-empty folder that is not a model folder (a mistyped path must not lose files)."""
    if out.is_dir() and any(out.iterdir()) and not any((out / n).exists() for n in (MANIFEST, "config.json",
                                                                                     "tokenizer.json")):
        raise ConfigError(f"{out} exists and holds other files; give the tiny model an empty or new folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give the tiny model a folder")


class _complete_folder:
    """``with _complete_folder(out) as tmp``: fill ``tmp``; on success a manifest is added and ``tmp`` replaces
    ``out`` (an older or half-written ``out`` is removed); on failure ``tmp`` is removed and ``out`` untouched."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        files = {p.name: p.stat().st_size for p in sorted(self.tmp.iterdir()) if p.is_file()}
        (self.tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def twin_config(model: str = "meta-llama/Llama-3.2-3B-Instruct", tokenizer=None):
    """The LlamaConfig of a known real model (see :data:`KNOWN_CONFIGS`), special-token ids from ``tokenizer``."""
    from transformers import LlamaConfig
    if model not in KNOWN_CONFIGS:
        raise ConfigError(f"no shape known for {model!r}; known: {sorted(KNOWN_CONFIGS)}")
    cfg = dict(KNOWN_CONFIGS[model])
    if tokenizer is not None:
        if len(tokenizer) > cfg["vocab_size"]:
            raise ConfigError(f"tokenizer has {len(tokenizer)} tokens, more than {model}'s vocab_size")
        cfg.update(_token_ids(tokenizer))
    return LlamaConfig(**cfg, dtype="bfloat16")


def twin_tokenizer(texts=None):
    """The shape twin's tokenizer (:data:`TWIN_TOKENIZER`) trained on ``texts``."""
    return build_tokenizer(texts, **TWIN_TOKENIZER)


def _twin_recipe(model: str, save_weights: bool) -> dict:
    return {"twin_of": model, "weights": save_weights, "tokenizer": {k: v for k, v in TWIN_TOKENIZER.items()
                                                                     if k != "chat_template"},
            "chat_template": "Llama 3.2" if TWIN_TOKENIZER["chat_template"] == LLAMA32_CHAT_TEMPLATE else "other"}


def is_current_twin(out_dir, model: str) -> bool:
    """Whether ``out_dir`` holds a whole shape twin of ``model`` with weights, built as this mtlib builds them
    (an interrupted build, or one of an older recipe, is built again)."""
    try:
        return json.loads((Path(out_dir) / TWIN_MARKER).read_text(encoding="utf-8")) == _twin_recipe(model, True)
    except (OSError, ValueError):
        return False


def build_shape_twin(out_dir, model: str = "meta-llama/Llama-3.2-3B-Instruct", texts=None, seed: int = 0,
                     save_weights: bool = True, device: str | None = None) -> Path:
    """Save a random model with the exact config of ``model`` (bf16) plus the twin's tokenizer.

    Measures memory and speed like the real model without downloading it. ``save_weights=False`` writes
    only config, tokenizer and generation config (cheap: for checking shapes). Weights are initialised on
    ``device`` (CUDA when available, else CPU): the 3B twin takes about 6.4 GB.
    """
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / TWIN_MARKER).unlink(missing_ok=True)
    tokenizer = twin_tokenizer(texts)
    config = twin_config(model, tokenizer)
    gen = _generation_config(tokenizer)
    if save_weights:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        with torch.device(device):
            net = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
        net.generation_config = gen
        net.save_pretrained(out)
        del net
    else:
        config.save_pretrained(out)
        gen.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / TWIN_MARKER).write_text(json.dumps(_twin_recipe(model, save_weights)) + "\n")
    return out
