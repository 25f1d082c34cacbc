"""The fast translation path: merged copy, grouped decode attention, patched-class detection."""

import pytest
import torch


def _lora(model, seed=1):
    """LoRA on the tiny model with non-zero B matrices, so the adapter changes the outputs."""
    from mtlib.modeling import add_lora
    peft_model = add_lora(model, gradient_checkpointing=False)
    g = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return peft_model.eval()


def test_merged_copy_computes_the_adapted_model(tiny, pairs):
    from mtlib.fastgen import ATTENTION, merged_copy
    model, tok = tiny
    peft_model = _lora(model)
    copy = merged_copy(peft_model)
    assert not hasattr(copy, "peft_config") and not any("lora" in n for n, _ in copy.named_parameters())
    assert copy.config._attn_implementation == ATTENTION
    enc = tok([p[0] for p in pairs[:4]], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = peft_model(**enc).logits
        got = copy(**enc).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            without = peft_model(**enc).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(without, want, atol=1e-2)  # the adapter matters, so the merge was tested
    # merged weights are the copy's own: changing them leaves the original alone
    copy.model.layers[0].self_attn.q_proj.weight.data.zero_()
    with torch.no_grad():
        assert torch.equal(peft_model(**enc).logits, want)
    assert base.model.embed_tokens.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()  # shared


def test_fast_decode_gives_the_same_greedy_translations(tiny, pairs):
    from mtlib.generate import translate
    model, tok = tiny
    peft_model = _lora(model)
    sources = [p[0] for p in pairs[:12]]
    plain = translate(peft_model, tok, sources, batch_size=5, max_new_tokens=12, progress=False)
    fast, stats = translate(peft_model, tok, sources, batch_size=5, max_new_tokens=12, progress=False,
                            fast_decode=True, return_stats=True)
    assert fast == plain
    assert stats.setup_seconds > 0
    assert peft_model.training is False and hasattr(peft_model, "peft_config")  # the model itself is untouched


def test_grouped_decode_attention_equals_repeated_kv_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from mtlib.fastgen import grouped_decode_attention

    class Attn(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    g = torch.Generator().manual_seed(0)
    batch, kv_heads, groups, length, dim = 4, 2, 3, 9, 8
    q = torch.randn(batch, kv_heads * groups, 1, dim, generator=g)
    k = torch.randn(batch, kv_heads, length, dim, generator=g)
    v = torch.randn(batch, kv_heads, length, dim, generator=g)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding
    mask[2, ..., :5] = False
    want, _ = sdpa_attention_forward(Attn(), q, k, v, mask, scaling=dim ** -0.5)
    got, _ = grouped_decode_attention(Attn(), q, k, v, mask, scaling=dim ** -0.5)
    assert got.shape == want.shape == (batch, 1, kv_heads * groups, dim)
    assert torch.allclose(got, want, atol=1e-5)
    # prefill (several query positions) goes through transformers' own sdpa unchanged
    q2 = torch.randn(batch, kv_heads * groups, length, dim, generator=g)
    full = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
    a, _ = grouped_decode_attention(Attn(), q2, k, v, full, scaling=dim ** -0.5)
    b, _ = sdpa_attention_forward(Attn(), q2, k, v, full, scaling=dim ** -0.5)
    assert torch.equal(a, b)


def test_pristine_class_undoes_a_patched_forward(monkeypatch):
    import transformers.models.llama.modeling_llama as llama
    from mtlib.fastgen import pristine_class
    assert pristine_class(llama.LlamaForCausalLM) is llama.LlamaForCausalLM  # nothing patched

    def patched_forward(self, *a, **k):  # what Unsloth does to the Llama classes
        raise AssertionError("the patched forward ran")
    patched_forward.__module__ = "unsloth.models.llama"
    monkeypatch.setattr(llama.LlamaAttention, "forward", patched_forward)
    fresh = pristine_class(llama.LlamaForCausalLM)
    assert fresh is not llama.LlamaForCausalLM and fresh.__name__ == "LlamaForCausalLM"
    assert fresh.forward.__module__ == llama.__name__


def test_merged_copy_runs_pristine_classes_when_patched(tiny, monkeypatch):
    import transformers.models.llama.modeling_llama as llama
    from mtlib.fastgen import merged_copy
    model, tok = tiny

    def patched_forward(self, *a, **k):
        raise AssertionError("the patched forward ran")
    patched_forward.__module__ = "unsloth.models.llama"
    monkeypatch.setattr(llama.LlamaAttention, "forward", patched_forward)
    copy = merged_copy(model)
    enc = tok(["a small test"], return_tensors="pt")
    with torch.no_grad():
        copy(**enc)  # would raise through the patched attention
    with pytest.raises(AssertionError, match="patched forward ran"):
        with torch.no_grad():
            model(**enc)


def test_grpo_fast_generation_samples_from_the_current_adapter(brief_grpo, monkeypatch):
    """fast_generation routes every GRPO generate() through one merged copy, refreshed from the adapter of each step."""
    from mtlib import fastgen

    built, refreshed = [], []
    real_copy, real_refresh = fastgen.merged_copy, fastgen.refresh_merged

    def adapter(m):
        return float(next(p for n, p in m.named_parameters() if "lora_B" in n).detach().abs().sum())

    def spy_copy(m, *a, **k):
        built.append(adapter(m))  # the adapter the copy was built from
        return real_copy(m, *a, **k)

    def spy_refresh(copy, m):
        refreshed.append(adapter(m))
        return real_refresh(copy, m)
    monkeypatch.setattr(fastgen, "merged_copy", spy_copy)
    monkeypatch.setattr(fastgen, "refresh_merged", spy_refresh)

    model, params, rebuild = brief_grpo()
    assert len(built) == 1 and len(refreshed) == 2   # one copy, refreshed for each later generation round
    assert built[0] == 0.0 and refreshed[-1] > 0.0   # ... with the updated adapter
    # the flag off restores the model's own generate
    rebuild(fast_generation=False)
    assert "generate" not in vars(model)


def test_contiguous_head_input_keeps_outputs(tiny):
    from mtlib.modeling import contiguous_head_input
    model, tok = tiny
    x = torch.randn(3, 5, model.config.hidden_size)[:, -1:, :]  # a strided (batch, 1, hidden) view
    assert not x.is_contiguous()
    head = model.get_output_embeddings()
    want = head(x)
    contiguous_head_input(contiguous_head_input(model))  # idempotent
    seen = []
    head.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    assert torch.equal(head(x), want) and seen == [True]
    assert len(head._forward_pre_hooks) == 2


def test_merged_copy_and_generate_avoid_unsloths_compiled_mask_builders(tiny, pairs, monkeypatch):
    """Unsloth swaps transformers' mask builders for torch.compile-d wrappers (stashing the originals as
    _unsloth_original_*); the fast path must build its masks with the originals."""
    import transformers.generation.utils as generation_utils
    import transformers.masking_utils as masking_utils
    from mtlib import fastgen
    from mtlib.generate import translate

    calls = []

    def wrapped(name):
        def wrapper(*a, **k):
            calls.append(name)
            raise AssertionError(f"Unsloth's wrapped {name} ran")
        return wrapper
    for name in ("create_causal_mask", "create_masks_for_generate"):
        monkeypatch.setattr(masking_utils, f"_unsloth_original_{name}", getattr(masking_utils, name), raising=False)
        monkeypatch.setattr(masking_utils, name, wrapped(name))
    monkeypatch.setattr(generation_utils, "create_masks_for_generate", wrapped("create_masks_for_generate"))
    monkeypatch.setattr(fastgen, "_FRESH_MODULES", {})
    model, tok = tiny
    sources = [p[0] for p in pairs[:6]]
    for cache in (None, "static"):
        out = translate(model, tok, sources, batch_size=3, max_new_tokens=6, progress=False, fast_decode=True,
                        **({"cache_implementation": cache} if cache else {}))
        assert len(out) == 6
    assert calls == []
    assert generation_utils.create_masks_for_generate.__name__ == "wrapper"  # restored after generate


def test_adapters_it_cannot_merge_are_refused(tiny):
    from peft import LoraConfig, get_peft_model
    from mtlib.errors import ConfigError
    from mtlib.fastgen import merged_copy
    model, _ = tiny
    dora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ConfigError, match="DoRA"):
        merged_copy(dora)


def test_adapter_states_and_routing_round_trip(tiny, pairs):
    """Disabled adapters are left out, a merged adapter is not added twice, and unrouting restores a
    generate the model carried itself (Unsloth sets one)."""
    from mtlib.fastgen import merged_copy, route_generate, unroute_generate
    model, tok = tiny
    peft_model = _lora(model)
    enc = tok([p[0] for p in pairs[:2]], return_tensors="pt", padding=True)
    with torch.no_grad():
        with peft_model.disable_adapter():
            want_base = peft_model(**enc).logits
            got_base = merged_copy(peft_model)(**enc).logits
        want = peft_model(**enc).logits
        peft_model.merge_adapter()
        got_merged = merged_copy(peft_model)(**enc).logits
        peft_model.unmerge_adapter()
    assert torch.allclose(got_base, want_base, atol=1e-4)
    assert torch.allclose(got_merged, want, atol=1e-4)

    def own_generate(*a, **k):
        return "own"
    peft_model.generate = own_generate
    route_generate(peft_model)
    assert peft_model.generate is not own_generate
    unroute_generate(peft_model)
    assert peft_model.generate is own_generate and peft_model.generate() == "own"


def test_tied_weights_stay_tied_in_a_new_dtype(tiny):
    from mtlib.fastgen import merged_copy
    model, _ = tiny
    assert model.config.tie_word_embeddings
    copy = merged_copy(model, dtype=torch.bfloat16)
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    assert copy.lm_head.weight.dtype == torch.bfloat16
    assert not any(t.is_meta for t in list(copy.parameters()) + list(copy.buffers()))


def test_contiguous_head_input_can_be_removed(tiny):
    from mtlib.modeling import contiguous_head_input
    model, _ = tiny
    head = model.get_output_embeddings()
    contiguous_head_input(model)
    assert len(head._forward_pre_hooks) == 1
    contiguous_head_input(model, on=False)
    assert len(head._forward_pre_hooks) == 0


def test_check_internals_passes_with_the_installed_stack(tiny):
    from mtlib import fastgen
    from mtlib.modeling import add_lora
    model, _ = tiny
    versions = fastgen.check_internals(add_lora(model, gradient_checkpointing=False))
    assert versions["transformers"] == fastgen.WRITTEN_FOR["transformers"] and versions["torch"]


def test_written_for_versions_are_the_pins():
    """A pin bump must come with a look at fastgen's private internals (and WRITTEN_FOR's update)."""
    import tomllib
    from packaging.requirements import Requirement
    from mtlib.chapter import REPO_ROOT
    from mtlib.fastgen import WRITTEN_FOR
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = {Requirement(r).name.replace("-", "_"): str(Requirement(r).specifier).removeprefix("==")
            for r in project["dependencies"] + project["optional-dependencies"]["gpu"]}
    assert WRITTEN_FOR == {name: pins[name] for name in WRITTEN_FOR}


def test_a_missing_internal_is_named_with_versions_and_fix(tiny, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa
    from mtlib import fastgen
    from mtlib.errors import MtlibError
    model, _ = tiny
    monkeypatch.setattr(fastgen, "_CHECKED", set())
    monkeypatch.delattr(sdpa, "sdpa_attention_forward")
    with pytest.raises(MtlibError, match=r"sdpa_attention\.sdpa_attention_forward") as caught:
        fastgen.merged_copy(model)                               # the first use of the fast path checks
    message = str(caught.value)
    assert "transformers 5.17.0" in message and "fast_decode: false" in message and "pyproject.toml" in message
    with pytest.raises(MtlibError, match="sdpa_attention_forward"):
        fastgen.route_generate(model)                            # GRPO's fast_generation, before training
    assert "generate" not in vars(model)


def test_a_renamed_unsloth_stash_is_caught(tiny, monkeypatch):
    """If Unsloth wraps the mask builders but keeps the originals under another name, the fast path would
    silently run its compiled wrappers (about 2x slower): the check names the stash instead."""
    import sys
    import types
    import transformers.masking_utils as masking_utils
    from mtlib import fastgen
    from mtlib.errors import MtlibError

    def wrapper(*a, **k):
        raise AssertionError("never called")
    wrapper.__module__ = "unsloth_zoo.temporary_patches.misc"
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    monkeypatch.setattr(fastgen, "_CHECKED", set())
    monkeypatch.setattr(masking_utils, "_unsloth_renamed_create_causal_mask", masking_utils.create_causal_mask,
                        raising=False)
    monkeypatch.setattr(masking_utils, "create_causal_mask", wrapper)
    with pytest.raises(MtlibError, match="_unsloth_original_create_causal_mask"):
        fastgen.check_internals()
    with pytest.raises(MtlibError, match="_unsloth_original_create_causal_mask"):
        fastgen.merged_copy(tiny[0])
    monkeypatch.setattr(masking_utils, "_unsloth_original_create_causal_mask",
                        masking_utils._unsloth_renamed_create_causal_mask, raising=False)
    fastgen.check_internals()                                    # the stash Unsloth 2026.10.9 keeps: fine


def test_renamed_lora_and_attention_attributes_are_caught(tiny, monkeypatch):
    from peft.tuners.lora import LoraLayer
    from mtlib import fastgen
    from mtlib.errors import MtlibError
    from mtlib.modeling import add_lora
    model, _ = tiny
    peft_model = add_lora(model, gradient_checkpointing=False)
    layer = next(m for m in peft_model.modules() if isinstance(m, LoraLayer))
    owner = next(c for c in type(layer).__mro__ if "merged" in vars(c))    # a property of PEFT's base layer
    monkeypatch.delattr(owner, "merged")
    with pytest.raises(MtlibError, match=r"Linear\.merged \(merging the LoRA update\)"):
        fastgen.merged_copy(peft_model)
    monkeypatch.undo()
    attention = peft_model.get_base_model().model.layers[0].self_attn
    del attention.num_key_value_groups                           # the tiny model shares key/value heads
    with pytest.raises(MtlibError, match="LlamaAttention.num_key_value_groups"):
        fastgen.check_internals(peft_model)


def test_the_merged_copy_decodes_without_cudnn_attention(tiny, tiny_dir, pairs, monkeypatch):
    """cuDNN's SDPA plans every new shape (each decode step is one): translate() and GRPO's routed generate
    decode with it switched off, and switch it back on afterwards."""
    import mtlib.generate as generate
    from mtlib import fastgen
    from mtlib.modeling import add_lora, load_model

    assert torch.backends.cuda.cudnn_sdp_enabled()
    seen = []
    real = fastgen.merged_copy

    def spying_copy(m, *a, **k):
        copy = real(m, *a, **k)
        copy.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
        return copy
    monkeypatch.setattr(fastgen, "merged_copy", spying_copy)
    monkeypatch.setattr(generate, "merged_copy", spying_copy)
    model, tok = tiny
    generate.translate(model, tok, [p[0] for p in pairs[:3]], batch_size=3, max_new_tokens=4, progress=False,
                       fast_decode=True)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    seen.clear()
    lora, tok = load_model(tiny_dir, backend="hf", load_in_4bit=False)
    lora = fastgen.route_generate(add_lora(lora, gradient_checkpointing=False))
    lora.generate(**tok(["a b c"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()
