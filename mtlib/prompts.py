"""Chat prompts for translation: the system prompt and message builders for inference, SFT and GRPO."""
from __future__ import annotations

import contextlib
import os

# Llama 3.x chat templates write "Today Date: <today>" into the system turn unless ``date_string`` is
# given, so the same profile would build different prompts on different days. Every tokenizer mtlib
# loads renders this date instead (the templates' own fallback); run records store it.
PROMPT_DATE = "26 Jul 2024"
_DATE_LINE = '{%- if date_string is not defined %}{%- set date_string = "' + "{date}" + '" %}{%- endif %}\n'

LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "cs": "Czech", "es": "Spanish",
    "it": "Italian", "nl": "Dutch", "pt": "Portuguese", "pl": "Polish", "ru": "Russian",
    "tr": "Turkish", "ja": "Japanese", "zh": "Chinese", "ar": "Arabic",
}


def _primary(code: str) -> str:
    """The primary subtag of a language code, lower case (``"fr-CA"``, ``"FR_ca"`` -> ``"fr"``)."""
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"language code must be a non-empty string, got {code!r}")
    return code.strip().lower().replace("_", "-").split("-")[0]


def language_name(code: str) -> str:
    """English name of a language code (``"de"`` -> ``"German"``, ``"fr-CA"`` -> ``"French"``: a region subtag
    is ignored, case too); an unknown code is returned as given, so prose still names the language."""
    return LANGUAGE_NAMES.get(_primary(code), code.strip())


# What a chatty model writes before its answer, per target language: the length reward's example in
# chapter 4. Languages without an entry get the English one (a chatty model often answers in English).
PREAMBLES = {
    "en": "Here is the translation: ", "de": "Hier ist die Übersetzung: ", "fr": "Voici la traduction : ",
    "cs": "Zde je překlad: ", "es": "Aquí está la traducción: ", "it": "Ecco la traduzione: ",
    "nl": "Hier is de vertaling: ", "pt": "Aqui está a tradução: ",
}


def preamble(tgt_lang: str) -> str:
    """"Here is the translation: " in the target language (:data:`PREAMBLES`), else in English."""
    return PREAMBLES.get(_primary(tgt_lang), PREAMBLES["en"])


def system_prompt(tgt_lang: str = "de", src_lang: str = "en") -> str:
    """The original study's instruction: translate the user's text and answer with the translation only."""
    tgt, src = language_name(tgt_lang), language_name(src_lang)
    return (f"You are a helpful assistant that translates {src} text into {tgt}. "
            f"Reply with the {tgt} translation only, without explanations or notes.")


def inference_messages(source: str, tgt_lang: str = "de", src_lang: str = "en") -> list[dict]:
    """System + user turn: what the model sees when asked to translate ``source``."""
    return [{"role": "system", "content": system_prompt(tgt_lang, src_lang)},
            {"role": "user", "content": source}]


def sft_messages(source: str, reference: str, tgt_lang: str = "de", src_lang: str = "en") -> list[dict]:
    """Inference messages plus the reference translation as the assistant's answer (the SFT target)."""
    return inference_messages(source, tgt_lang, src_lang) + [{"role": "assistant", "content": reference}]


def grpo_example(source: str, reference: str, tgt_lang: str = "de", src_lang: str = "en") -> dict:
    """A GRPO row: the chat prompt, and the reference kept apart for the reward functions."""
    return {"prompt": inference_messages(source, tgt_lang, src_lang), "reference": reference}


def to_sft_dataset(split, src_lang: str = "en", tgt_lang: str = "de"):
    """Map a split with language columns to a ``messages`` column for TRL's SFTTrainer."""
    return split.map(lambda row: {"messages": sft_messages(row[src_lang], row[tgt_lang], tgt_lang, src_lang)},
                     remove_columns=split.column_names, desc="SFT messages")


def to_grpo_dataset(split, src_lang: str = "en", tgt_lang: str = "de"):
    """Map a split with language columns to ``prompt`` + ``reference`` columns for TRL's GRPOTrainer."""
    return split.map(lambda row: grpo_example(row[src_lang], row[tgt_lang], tgt_lang, src_lang),
                     remove_columns=split.column_names, desc="GRPO prompts")


def fix_template_date(tokenizer, date: str = PROMPT_DATE):
    """Make ``tokenizer``'s chat template render ``date`` rather than today's date (idempotent); returns it.

    A ``date_string`` passed to ``apply_chat_template`` still wins; templates without a date are unchanged
    in what they render."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return tokenizer
    line = _DATE_LINE.replace("{date}", date)
    if template.startswith("{%- if date_string is not defined %}{%- set date_string = "):
        template = template.split("\n", 1)[1]
    tokenizer.chat_template = line + template
    tokenizer.mtlib_prompt_date = date
    return tokenizer


def template_date(tokenizer) -> str | None:
    """The date :func:`fix_template_date` gave ``tokenizer`` (None if it was not fixed)."""
    return getattr(tokenizer, "mtlib_prompt_date", None)


PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"


@contextlib.contextmanager
def parallel_tokenization():
    """Fast tokenizers use every core inside the block. Importing Unsloth sets ``TOKENIZERS_PARALLELISM=false``
    (to silence the warning of forked workers), which leaves bulk encoding on one core; the setting is back
    on exit, so a process forked later still tokenizes serially, as Unsloth wants."""
    before = os.environ.get(PARALLELISM_ENV)
    os.environ[PARALLELISM_ENV] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARALLELISM_ENV, None)
        else:
            os.environ[PARALLELISM_ENV] = before


def token_counts(tokenizer, texts) -> list[int]:
    """Tokens in each text, without special tokens added: one batch call (a fast tokenizer encodes it on every
    core, without building Python lists of ids)."""
    texts = list(texts)
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        with parallel_tokenization():
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def grpo_token_lengths(tokenizer, rows) -> dict:
    """Token counts of GRPO rows: ``{"prompt": [...], "reference": [...]}``, each prompt as the model reads
    it (its chat template with the assistant's header)."""
    from .data import column
    rendered = tokenizer.apply_chat_template(column(rows, "prompt"), add_generation_prompt=True, tokenize=False)
    return {"prompt": token_counts(tokenizer, rendered), "reference": token_counts(tokenizer, column(rows, "reference"))}
