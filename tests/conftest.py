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
    """The real Multi30k raw folder ($MULTI30K_DIR or ../shared/data/multi30k/raw); fails, never skips."""
    from mtlib.data import default_raw_dir

    path = default_raw_dir()
    if path is None or not path.is_dir():
        pytest.fail(f"Multi30k raw folder not found ({path}): set MULTI30K_DIR to the folder holding "
                    "train.en.gz, train.de.gz, val.*, test_2016_flickr.*", pytrace=False)
    return path
