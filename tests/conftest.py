"""Shared pytest fixtures. Offline by design: no test may reach the Hugging Face Hub.

The model fixtures (a tiny random Llama, real Multi30k lines) are session-scoped: the tiny model is built
once for the whole run, however many modules use it.
"""
import gzip
import os
from pathlib import Path

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


def read_pairs(n=300, split="train"):
    """The first ``n`` (en, de) pairs of the Multi30k files the project ships."""
    from mtlib.data import SHIPPED_DIR as raw
    out = {}
    for lang in ("en", "de"):
        with gzip.open(Path(raw) / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            out[lang] = [next(f).strip() for _ in range(n)]
    return list(zip(out["en"], out["de"]))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama + chat tokenizer saved to disk (built once per session)."""
    from mtlib.tiny import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def pairs():
    """300 real Multi30k training pairs."""
    return read_pairs(300)


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


@pytest.fixture
def brief_grpo(tiny_dir, train_split, tmp_path):
    """``brief_grpo(fast_generation=True)``: a LoRA tiny model trained 3 GRPO steps on 8 pairs (a reward that varies
    with the completion's length, so the adapter moves); returns ``(model, params, rebuild)``, where ``rebuild(**changes)``
    builds another trainer for the same model with changed params (it is not trained)."""
    import dataclasses
    from mtlib.modeling import add_lora, load_model
    from mtlib.train import GRPOParams, build_grpo_trainer

    def varied(completions, **kw):
        return [len(c[0]["content"]) / 10 for c in completions]

    def run(fast_generation=True, before_training=None):
        model, tok = load_model(tiny_dir, backend="hf", load_in_4bit=False)
        model = add_lora(model, gradient_checkpointing=False)
        if before_training is not None:
            before_training(model)
        params = GRPOParams(max_steps=3, max_completion_length=8, lr=5e-2, save_steps=100,
                            fast_generation=fast_generation)
        build_grpo_trainer(model, tok, train_split.select(range(8)), params, tmp_path, rewards=[varied]).train()

        def rebuild(**changes):
            return build_grpo_trainer(model, tok, train_split.select(range(8)), dataclasses.replace(params, **changes),
                                      tmp_path / "b", rewards=[varied])
        return model, params, rebuild
    return run
