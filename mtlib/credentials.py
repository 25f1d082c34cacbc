"""Secrets in one place: where the Hugging Face token comes from, which values count as secrets, and how
records and the built book are kept free of them.

The token is read by :func:`hf_token` and never passed as a notebook parameter (papermill would publish it).
:func:`scrub` redacts it from run records (:meth:`mtlib.results.Run.write_json`); :func:`find_secret` is the
book runner's last check that no output file contains it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

REDACTED = "<redacted>"
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# A Hugging Face access token: ``hf_`` and 30 or more letters and digits (34 in the tokens issued today).
HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")
# Any other value counts as a secret only from this length on: placeholders such as ``none``, ``0`` or
# ``changeme`` are not secrets, and searching outputs for them would fail a build for nothing.
MIN_SECRET_LENGTH = 16
# Other token shapes a record may carry: GitHub tokens, and any credential sent as an HTTP bearer header.
TOKEN_SHAPES = (HF_TOKEN_PATTERN, re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), re.compile(r"github_pat_\w{30,}"),
                re.compile(r"\bBearer\s+\S{16,}"))
# Keys whose value is a secret, by their words (``HF_TOKEN``, ``accessToken`` -> hf/token, access/token): any of
# these words, a pair such as api + key, or ``token`` as the last word unless a tokenizer's special token
# (``pad_token``). ``tokenizer``, ``tokenizer_revision`` and ``max_new_tokens`` are no secrets.
_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "credential", "credentials", "apikey", "authorization"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("auth", "key"), ("secret", "key")}
_SPECIAL_TOKEN_WORDS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "image", "audio", "video",
                        "boi", "eoi", "start", "end"}


def hf_token() -> str | None:
    """The Hugging Face token from $HF_TOKEN / $HUGGING_FACE_HUB_TOKEN or Colab's secrets; None if absent.

    Never pass it as a notebook parameter (papermill would publish it) and never print it.
    """
    for var in TOKEN_VARS:
        if os.environ.get(var):
            return os.environ[var]
    try:
        from google.colab import userdata  # type: ignore
        return userdata.get("HF_TOKEN") or None
    except Exception:  # not on Colab, or the secret is missing / not shared with this notebook
        return None


def looks_like_secret(value) -> bool:
    """Whether ``value`` could be a real credential: a Hugging Face token, or any string of 16+ characters."""
    if not isinstance(value, str):
        return False
    value = value.strip()
    return bool(HF_TOKEN_PATTERN.fullmatch(value)) or len(value) >= MIN_SECRET_LENGTH


def secret_values() -> list[str]:
    """The secrets of this process that must appear in no record or output: the token variables' values
    and Colab's ``HF_TOKEN``, each only when it :func:`looks_like_secret` (a placeholder such as ``none`` is
    not searched for)."""
    values = [os.environ.get(var) for var in TOKEN_VARS]
    try:
        values.append(hf_token())
    except Exception:  # a Colab secret lookup may fail outside a notebook
        pass
    return [v.strip() for v in dict.fromkeys(values) if looks_like_secret(v)]


def _key_words(key) -> list[str]:
    """``HF_TOKEN`` -> [hf, token]; ``accessToken`` -> [access, token]; ``api-key`` -> [api, key]."""
    return [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()) if w]


def _secret_key(key) -> bool:
    words = _key_words(key)
    if not words:
        return False
    if _SECRET_WORDS & set(words) or _SECRET_PAIRS & set(zip(words, words[1:])) or words == ["auth"]:
        return True
    return words[-1] == "token" and (len(words) == 1 or words[-2] not in _SPECIAL_TOKEN_WORDS)


def _secret_text(value: str, secrets: Iterable[str]) -> bool:
    return any(shape.search(value) for shape in TOKEN_SHAPES) or any(s in value for s in secrets)


def scrub(obj, _secrets=None):
    """Copy of ``obj`` with secret values replaced by :data:`REDACTED`.

    Redacted: a string under a secret-looking key (``token``, ``hf_token``, ``access_token``, ``HF_TOKEN``,
    ``api_key``, ``client_secret``, ``password`` ...: see :func:`_secret_key`), any string that contains something
    shaped like a token (:data:`TOKEN_SHAPES`: ``hf_`` + 30 or more letters and digits, GitHub tokens, a bearer
    header), and any string containing one of :func:`secret_values`. Kept: keys that merely contain "token"
    (``tokenizer``, ``tokenizer_revision``, ``max_new_tokens``), tokenizer special tokens (``pad_token``) and
    harmless ``hf_`` names (``hf_home``, ``hf_transfer``).
    """
    secrets = secret_values() if _secrets is None else list(_secrets)
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(v, str) and (_secret_key(k) or _secret_text(v, secrets))
                    else scrub(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str) and _secret_text(obj, secrets):
        return REDACTED
    return obj


def find_secret(root, secrets: str | Iterable[str] | None = None) -> list[Path]:
    """Files under ``root`` that contain a secret (the HF token must never be published).

    ``secrets``: one value or several, searched as given; by default :func:`secret_values` (so nothing is
    searched, and nothing found, when the token is unset or a placeholder).
    """
    if secrets is None:
        secrets = secret_values()
    elif isinstance(secrets, str):
        secrets = [secrets]
    needles = [s.encode() for s in secrets if s]
    if not needles:
        return []

    def leaks(path: Path) -> bool:
        data = path.read_bytes()
        return any(n in data for n in needles)
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and leaks(p))
