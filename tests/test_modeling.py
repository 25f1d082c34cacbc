"""Loading on the plain backend, LoRA, adapters on disk."""
import json

import pytest
import torch

from mtlib import modeling
from mtlib.errors import ConfigError
from mtlib.modeling import LORA_TARGETS, TrainedModel, add_lora, load_trained, save_adapter, trainable_summary


def test_load_model_cpu_plain_backend(tiny):
    model, tok = tiny
    assert modeling.backend_of(model) == "hf"
    assert next(model.parameters()).dtype == torch.float32  # 4-bit asked, but no CUDA: full precision
    assert tok.padding_side == "left"
    assert tok.pad_token == "<|finetune_right_pad_id|>" and tok.pad_token_id != tok.eos_token_id


def test_missing_pad_token_gets_llama_pad(tiny_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = None
    assert tok.pad_token is None
    assert modeling.prepare_tokenizer(tok).pad_token == "<|finetune_right_pad_id|>"


def test_backend_choice():
    assert modeling.resolve_backend("auto") == "hf"  # no CUDA here
    with pytest.raises(ConfigError, match="unsloth"):
        modeling.resolve_backend("unsloth")
    with pytest.raises(ConfigError, match="backend"):
        modeling.resolve_backend("vllm")


def test_add_lora_wraps_all_projections(tiny):
    model, _ = tiny
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = add_lora(model, r=4, alpha=8, gradient_checkpointing=False)
    summary = trainable_summary(peft_model)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    wrapped = {n.split(".")[-2] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert wrapped == set(LORA_TARGETS)
    # r=4 on 7 projections x 2 layers: (in + out) * r parameters each
    cfg = model.config
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_layer = 4 * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    assert summary["trainable"] == per_layer * cfg.num_hidden_layers
    assert summary["total"] == total_before + summary["trainable"]
    assert 0 < summary["share"] < 1


def test_lora_validation(tiny):
    with pytest.raises(ConfigError, match="rank"):
        add_lora(tiny[0], r=0)


def test_adapter_round_trip(tmp_path, tiny, tiny_dir):
    model, tok = tiny
    peft_model = add_lora(model, r=4, gradient_checkpointing=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # make the adapter change the output
    ids = tok(["A dog runs."], return_tensors="pt").input_ids
    peft_model.eval()
    want = peft_model(ids).logits
    save_adapter(peft_model, tok, tmp_path / "run" / "adapter", stage="sft")
    cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_dir)

    loaded = load_trained(tmp_path / "run", backend="hf")
    assert isinstance(loaded, TrainedModel)
    assert (loaded.stage, loaded.run_dir, loaded.base_name) == ("sft", tmp_path / "run", str(tiny_dir))
    got = loaded.model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not any(p.requires_grad for n, p in loaded.model.named_parameters() if "lora_" in n)
    with loaded.model.disable_adapter():
        assert not torch.allclose(loaded.model(ids).logits, want, atol=1e-3)
    again = load_trained(tmp_path / "run" / "adapter", backend="hf", trainable=True)
    lora = [p for n, p in again.model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    assert trainable_summary(again.model)["trainable"] == sum(p.numel() for p in lora)
    assert again.model.base_model.model.is_gradient_checkpointing  # continued training checkpoints too
    plain = load_trained(tmp_path / "run", backend="hf", trainable=True, gradient_checkpointing=False)
    assert not plain.model.base_model.model.is_gradient_checkpointing


def test_load_trained_without_adapter_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json"):
        load_trained(tmp_path)


def test_trained_model_stage_is_checked(tiny):
    with pytest.raises(ConfigError, match="stage"):
        TrainedModel(*tiny, stage="dpo")
    m, t = TrainedModel(*tiny)
    assert m is tiny[0] and t is tiny[1]



def _saved_adapter(tmp_path, tiny, base_name=None):
    model, tok = tiny
    save_adapter(add_lora(model, r=4, gradient_checkpointing=False), tok, tmp_path / "run" / "adapter", stage="sft",
                 base_name=base_name)
    return tmp_path / "run"


def test_load_trained_ignores_a_revision_for_a_local_base_with_a_warning(tmp_path, tiny, tiny_dir):
    """A local folder has one version: a pinned revision is ignored (warned), and none is recorded as used."""
    run = _saved_adapter(tmp_path, tiny)
    with pytest.warns(UserWarning, match=r"revision 'v1\.0' ignored: the base model .* is a local folder"):
        loaded = load_trained(run, backend="hf", revision="v1.0")
    assert loaded.base_name == str(tiny_dir)
    assert loaded.extra["model_revision"] is None
    assert all(cfg.revision is None for cfg in loaded.model.peft_config.values())


def test_load_trained_loads_the_pinned_revision_of_a_hub_base_and_records_it(tmp_path, tiny, tiny_dir, monkeypatch):
    """Chapter 4 passes the profile's model_revision: the base model is loaded at it (not the newest), the
    adapter trained further records it in its adapter_config.json, and a reload without one uses that record."""
    import mtlib.modeling as modeling
    run = _saved_adapter(tmp_path, tiny, base_name="some-org/some-model")
    asked, real_load = [], modeling.load_model

    def hub_load(name, **kw):  # the Hub, offline: the tiny model stands in for some-org/some-model
        asked.append((name, kw.get("revision")))
        return real_load(tiny_dir, **{**kw, "revision": None})
    monkeypatch.setattr(modeling, "load_model", hub_load)

    loaded = load_trained(run, backend="hf", trainable=True, revision="abc123")
    assert asked == [("some-org/some-model", "abc123")]
    assert loaded.extra["model_revision"] == "abc123"
    save_adapter(loaded.model, loaded.tokenizer, tmp_path / "grpo" / "adapter", stage="grpo")
    cfg = json.loads((tmp_path / "grpo" / "adapter" / "adapter_config.json").read_text())
    assert (cfg["base_model_name_or_path"], cfg["revision"]) == ("some-org/some-model", "abc123")

    again = load_trained(tmp_path / "grpo", backend="hf")  # no revision given: the recorded one
    assert asked[-1] == ("some-org/some-model", "abc123") and again.extra["model_revision"] == "abc123"
    load_trained(run, backend="hf")  # the SFT adapter recorded none: the newest, as before
    assert asked[-1] == ("some-org/some-model", None)


def test_add_lora_checks_its_values_by_the_chapters_rules(tiny):
    """add_lora's limits are the parameters' own (mtlib.parameters), not a second set of rules."""
    from mtlib import parameters
    from mtlib.errors import ConfigError
    from mtlib.modeling import add_lora

    model, _ = tiny
    too_high = parameters.SCHEMA["lora_dropout"].max + 0.05
    for kwargs, name in (({"dropout": too_high}, "lora_dropout"), ({"r": 0}, "lora_r"), ({"alpha": 0}, "lora_alpha")):
        with pytest.raises(ConfigError, match=name):
            add_lora(model, **kwargs)


def test_importing_mtlib_sets_unsloths_grpo_packing_and_block_compile_off_unless_the_environment_chose(tmp_path):
    """UNSLOTH_GRPO_SEQ_PACKING and UNSLOTH_BLOCK_COMPILE are set before Unsloth could read them, a value already
    set is kept, and every run's env.json records the Unsloth settings it ran with."""
    import os
    import subprocess
    import sys
    code = ("import os, mtlib.modeling, mtlib.results; "
            "print(os.environ['UNSLOTH_GRPO_SEQ_PACKING'], os.environ['UNSLOTH_BLOCK_COMPILE'], "
            "mtlib.results.environment()['unsloth_settings'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["0", "0"] and "'UNSLOTH_GRPO_SEQ_PACKING': '0'" in out
    assert "'UNSLOTH_BLOCK_COMPILE': '0'" in out
    out = subprocess.run([sys.executable, "-c", code],
                         env={**env, "UNSLOTH_GRPO_SEQ_PACKING": "1", "UNSLOTH_BLOCK_COMPILE": "1"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["1", "1"]
