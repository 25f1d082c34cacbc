"""Shared model fixtures for the model-half tests (tiny random Llama, real Multi30k lines).

Test modules import the fixtures (``from model_fixtures import tiny_dir, pairs``); the builds are cached
per process, so the tiny model is built once for the whole session however many modules use it.
"""
import gzip
from pathlib import Path

import pytest

_CACHE = {}


def read_pairs(n=300, split="train"):
    """The first ``n`` (en, de) pairs of the real Multi30k raw files."""
    from mtlib.data import default_raw_dir
    raw = default_raw_dir()
    if raw is None:
        pytest.fail("Multi30k raw folder not found: set MULTI30K_DIR", pytrace=False)
    out = {}
    for lang in ("en", "de"):
        with gzip.open(Path(raw) / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            out[lang] = [next(f).strip() for _ in range(n)]
    return list(zip(out["en"], out["de"]))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama + chat tokenizer saved to disk (built once per session)."""
    if "tiny" not in _CACHE:
        from mtlib.tiny import build_tiny_model
        _CACHE["tiny"] = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    return _CACHE["tiny"]


@pytest.fixture(scope="session")
def pairs():
    """300 real Multi30k training pairs."""
    if "pairs" not in _CACHE:
        _CACHE["pairs"] = read_pairs(300)
    return _CACHE["pairs"]


@pytest.fixture(scope="session")
def train_split(pairs):
    """A datasets.Dataset with ``en``/``de`` columns (64 real pairs)."""
    from datasets import Dataset
    return Dataset.from_dict({"en": [p[0] for p in pairs[:64]], "de": [p[1] for p in pairs[:64]]})


@pytest.fixture
def tiny(tiny_dir):
    """A fresh (model, tokenizer) of the tiny model on the plain backend."""
    from mtlib.modeling import load_model
    return load_model(tiny_dir, backend="hf", load_in_4bit=False)
