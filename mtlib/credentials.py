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
_SECRET_KEY_WORDS = ("token", "secret", "password", "api_key")
_SPECIAL_TOKEN_KEY = re.compile(r"(pad|eos|bos|unk|sep|cls|mask)_token")  # tokenizer settings, not secrets


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


def _secret_key(key) -> bool:
    k = str(key).lower()
    if _SPECIAL_TOKEN_KEY.fullmatch(k):
        return False
    return any(w in k for w in _SECRET_KEY_WORDS)


def _secret_text(value: str, secrets: Iterable[str]) -> bool:
    return bool(HF_TOKEN_PATTERN.search(value)) or any(s in value for s in secrets)


def scrub(obj, _secrets=None):
    """Copy of ``obj`` with secret values replaced by :data:`REDACTED`.

    Redacted: a string under a key that contains ``token``/``secret``/``password``/``api_key`` (except
    tokenizer special-token names such as ``pad_token``), any string that contains something shaped like
    a Hugging Face token (``hf_`` + 30 or more letters and digits), and any string containing one of
    :func:`secret_values`. Harmless ``hf_`` names (``hf_home``, ``hf_transfer``) are kept.
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
