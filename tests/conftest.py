"""Shared pytest fixtures. Offline by design: no test may reach the Hugging Face Hub."""
import os

# Before anything imports huggingface_hub/datasets (they read these once, at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def raw_dir():
    """The Multi30k en/de files the project ships (mtlib/corpora/multi30k)."""
    from mtlib.data import SHIPPED_DIR

    return SHIPPED_DIR
