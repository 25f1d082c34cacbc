"""Tiny offline models: deterministic, Llama-3 chat format, loadable; shape twins have the real config."""
import hashlib
import os
from pathlib import Path

import pytest

from mtlib.errors import ConfigError
from mtlib.prompts import inference_messages, sft_messages
from mtlib.tiny import KNOWN_CONFIGS, build_shape_twin, build_tiny_model


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_files(tmp_path, tiny_dir, pairs):
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny_dir)
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _digest(other) != _digest(tiny_dir)


def test_loads_with_auto_classes_and_llama3_chat_format(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok) <= 2000
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == \
        ("<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")
    text = tok.apply_chat_template(sft_messages("A dog runs.", "Ein Hund rennt."), tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are")
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\nA dog runs.<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\nEin Hund rennt.<|eot_id|>")
    prompt = tok.apply_chat_template(inference_messages("A dog runs."), tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("A dog runs.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot in model.generation_config.eos_token_id
    # byte-level BPE: German text round-trips exactly
    s = "Zwei Männer stehen am Straßenrand."
    assert tok.decode(tok(s, add_special_tokens=False).input_ids) == s


def test_shape_twin_config_matches_llama_3_2_3b(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    out = build_shape_twin(tmp_path / "twin", save_weights=False)
    cfg = AutoConfig.from_pretrained(out)
    want = KNOWN_CONFIGS["meta-llama/Llama-3.2-3B-Instruct"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == \
        (3072, 28, 24, 8, 8192, 128256, 131072)
    assert cfg.tie_word_embeddings and want["rope_scaling"]["rope_type"] == "llama3"
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["rope_theta"] == 500000.0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 3.2e9 < n < 3.22e9  # Llama-3.2-3B: 3.21B parameters (tied embeddings)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) < cfg.vocab_size and cfg.eos_token_id == tok.eos_token_id


def test_small_twin_with_weights_loads(tmp_path, monkeypatch):
    """A full build on CPU, shrunk via the config table so the test stays small."""
    import torch
    from transformers import AutoModelForCausalLM
    _small_twin_config(monkeypatch)
    out = build_shape_twin(tmp_path / "small", model="test/small", texts=["ein Hund", "a dog"] * 50)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 4096
    assert next(model.parameters()).dtype == torch.bfloat16


def _small_twin_config(monkeypatch):
    from mtlib import tiny
    small = dict(KNOWN_CONFIGS["meta-llama/Llama-3.2-1B-Instruct"], hidden_size=64, intermediate_size=64,
                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=4096)
    monkeypatch.setitem(tiny.KNOWN_CONFIGS, "test/small", small)


def test_twin_speaks_llama_3_2s_chat_format():
    """The twin's template is Llama 3.2's: a system turn, always there, with the knowledge-cutoff and date lines
    (test_prompts checks the date is the book's, not today's)."""
    from mtlib import prompts, tiny
    tok = prompts.fix_template_date(tiny.twin_tokenizer(["ein Hund", "a dog"] * 50))
    text = tok.apply_chat_template(sft_messages("A dog runs.", "Ein Hund rennt."), tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                    f"{prompts.system_prompt()}<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nA dog runs.<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nEin Hund rennt.<|eot_id|>")
    no_system = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert no_system.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting")
    assert no_system.endswith("Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
                              "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_twin_reads_about_as_many_tokens_as_llama_3():
    """On test 2016, the twin's SFT examples and GRPO prompts are within 5% of Llama 3's token counts as
    measured with Llama 3's own tokenizer (benchmarks/twin_token_counts.py, results committed); the tiny
    tokenizer it had before read a third more."""
    import json
    from benchmarks.twin_token_counts import rendered_texts, twin_counts
    from mtlib import data, prompts, tiny
    from mtlib.project import REPO_ROOT
    measured = json.loads((REPO_ROOT / "benchmarks/results/twin_tokens_2026-12-02/token_counts.json").read_text())
    pairs = data.load_pairs()
    tok = prompts.fix_template_date(tiny.twin_tokenizer(list(pairs["train"]["en"]) + list(pairs["train"]["de"])))
    counts = twin_counts(tok, rendered_texts(pairs, tok))
    assert counts == pytest.approx(measured["twin"])  # the committed twin counts are this code's
    for name in ("sft_example", "grpo_prompt", "system_prompt"):
        assert counts[name] == pytest.approx(measured["llama3"][name], rel=0.05), name
    assert measured["tiny"]["sft_example"] > 1.3 * measured["llama3"]["sft_example"]


def test_twin_of_an_older_recipe_is_built_again(tmp_path, monkeypatch):
    """resolve_model builds a twin once; a twin folder left by an interrupted build or by an older mtlib (another
    tokenizer) is built again rather than timed with the wrong tokens."""
    import json
    from mtlib import chapter, tiny
    _small_twin_config(monkeypatch)
    runs_root = tmp_path / "build" / "runs"
    texts = ["ein Hund", "a dog"] * 50
    folder = Path(chapter.resolve_model("twin:test/small", runs_root, texts=texts))
    assert tiny.is_current_twin(folder, "test/small") and not tiny.is_current_twin(folder, "test/other")
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert chapter.resolve_model("twin:test/small", runs_root, texts=texts) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == built, "a current twin is reused"
    old = {"twin_of": "test/small", "weights": True}  # the marker the twin of 1,500 tokens left
    (folder / tiny.TWIN_MARKER).write_text(json.dumps(old))
    assert not tiny.is_current_twin(folder, "test/small")
    chapter.resolve_model("twin:test/small", runs_root, texts=texts)
    assert tiny.is_current_twin(folder, "test/small")
    assert (folder / "model.safetensors").stat().st_mtime_ns != built, "the old twin was built again"
    from transformers import AutoTokenizer
    assert "Cutting Knowledge Date" in AutoTokenizer.from_pretrained(folder).chat_template


def test_unknown_twin_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="Llama-3.2-3B-Instruct"):
        build_shape_twin(tmp_path, model="meta-llama/Nope", save_weights=False)


def test_half_written_tiny_model_is_detected_and_rebuilt(tmp_path, monkeypatch):
    """The smoke build's tiny model is saved aside and renamed into place; a folder left half-written (by an
    interrupted save of an earlier version, or damaged since) is not trusted but built again."""
    from mtlib import chapter, tiny
    texts = [f"a small text number {i} ." for i in range(200)]
    runs_root = tmp_path / "build" / "runs"
    model_dir = Path(chapter.resolve_model("tiny", runs_root, texts=texts))
    assert tiny.is_complete(model_dir) and (model_dir / tiny.MANIFEST).exists()
    digest = _digest(model_dir)

    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a kill during save_pretrained
    assert not tiny.is_complete(model_dir)
    with pytest.warns(UserWarning, match="incomplete"):
        assert Path(chapter.resolve_model("tiny", runs_root, texts=texts)) == model_dir
    assert tiny.is_complete(model_dir) and _digest(model_dir) == digest

    (model_dir / tiny.MANIFEST).unlink()  # a folder written by the old code: config.json but no manifest
    assert not tiny.is_complete(model_dir)

    def killed(*a, **k):
        raise KeyboardInterrupt  # the save is interrupted half-way
    from transformers import PreTrainedTokenizerBase
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(fresh, texts=texts)
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.*")), "nothing half-written is left behind"
    with pytest.raises(ConfigError, match="holds other files"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        build_tiny_model(tmp_path / "mine", texts=texts)


def test_tokenizer_trains_the_same_merges_after_unsloths_import(monkeypatch, pairs):
    """Unsloth's import sets TOKENIZERS_PARALLELISM=false; the BPE is trained inside parallel_tokenization all the
    same, learns the same merges as with the variable unset, and leaves the variable as it found it."""
    from mtlib.prompts import PARALLELISM_ENV
    from mtlib.tiny import build_tokenizer
    import mtlib.prompts as prompts
    texts = [s for pair in pairs for s in pair]
    entered, real = [], prompts.parallel_tokenization
    monkeypatch.setattr(prompts, "parallel_tokenization", lambda: entered.append(1) or real())
    monkeypatch.delenv(PARALLELISM_ENV, raising=False)
    unset = build_tokenizer(texts, vocab_size=600).backend_tokenizer.to_str()
    monkeypatch.setenv(PARALLELISM_ENV, "false")
    assert build_tokenizer(texts, vocab_size=600).backend_tokenizer.to_str() == unset
    assert os.environ[PARALLELISM_ENV] == "false" and entered == [1, 1]
