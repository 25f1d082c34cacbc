"""Decode steps replayed from recorded graphs (mtlib.decode_graphs), checked on CPU with a stand-in recorder.

A CUDA graph cannot be recorded on a CPU, so these tests record with :class:`EagerGraph`: its replay runs the
recorded step again over the same input buffers and writes the logits into the output the recording returned,
which is what a CUDA graph's replay does. Everything around it (static caches, buffers, the shape checks,
rewinding the cache, bucketing the prompts, the fallbacks) is the code that runs on the GPU.
"""
import pytest
import torch


class EagerGraph:
    def __init__(self, step, perturb=0.0):
        self.step, self.perturb = step, perturb
        self.output = step()

    def replay(self):
        self.output.logits.copy_(self.step().logits + self.perturb)


def eager_graphs(step):
    graph = EagerGraph(step)
    return graph, graph.output


@pytest.fixture
def recorder(monkeypatch):
    """Decode graphs on CPU: the stand-in recorder, and every model counted as able to use it."""
    from mtlib import decode_graphs
    monkeypatch.setattr(decode_graphs, "GRAPH_FACTORY", eager_graphs)
    monkeypatch.setattr(decode_graphs, "available", lambda model: True)
    return decode_graphs


def _inputs(tok, pairs, n=5):
    from mtlib.generate import build_prompts
    prompts, _ = build_prompts(tok, [p[0] for p in pairs[:n]])
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def _config(model, tok, **kw):
    from mtlib.generate import _generation_config
    return _generation_config(model, tok, do_sample=kw.pop("do_sample", False), max_new_tokens=12, **kw)


def test_replayed_steps_give_the_tokens_of_generate(tiny, pairs, recorder):
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)
    enc, config = _inputs(tok, pairs), _config(model, tok)
    with torch.inference_mode():
        want = runner.generate(**enc, generation_config=config)
        got = recorder.generate(runner, **enc, generation_config=config, keep=True)
        graphs = vars(runner)["__call__"]
        assert graphs.stats["recorded"] == 1 and graphs.stats["replayed"] >= 5
        assert torch.equal(got, want)
        # shorter prompts, the same batch: the kept cache (longer than they need) and its recording serve them
        short = _inputs(tok, [(p[0][:12], p[1]) for p in pairs[5:10]])
        assert short["input_ids"].shape[1] < enc["input_ids"].shape[1]
        want_short = runner.generate(**short, generation_config=config)
        got_short = recorder.generate(runner, **short, generation_config=config, keep=True)
    assert torch.equal(got_short, want_short)        # stale entries of the longer prompts stay masked
    assert graphs.stats["recorded"] == 1 and len(graphs.kept) == 1
    recorder.uninstall(runner)
    assert "__call__" not in vars(runner)


def test_a_longer_prompt_grows_the_kept_cache(tiny, pairs, recorder):
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)
    config = _config(model, tok)
    short = _inputs(tok, [(p[0][:10], p[1]) for p in pairs[:4]])
    long = _inputs(tok, [(p[0] + " " + p[0] + " " + p[0], p[1]) for p in pairs[:4]])
    with torch.inference_mode():
        recorder.generate(runner, **short, generation_config=config, keep=True)
        graphs = vars(runner)["__call__"]
        first = next(iter(graphs.kept.values())).cache
        assert first.get_max_length() % recorder.CACHE_STEP == 0
        assert long["input_ids"].shape[1] + 12 > first.get_max_length()   # (so the test needs a bigger cache)
        got = recorder.generate(runner, **long, generation_config=config, keep=True)
        want = runner.generate(**long, generation_config=config)
    grown = next(iter(graphs.kept.values())).cache
    assert grown is not first and grown.get_max_length() >= long["input_ids"].shape[1] + 12
    assert torch.equal(got, want) and graphs.stats["recorded"] == 2 and len(graphs.kept) == 1


def test_sampling_through_replayed_steps_draws_the_same_tokens(tiny, pairs, recorder):
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)
    enc = _inputs(tok, pairs)
    config = _config(model, tok, do_sample=True, temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1)
    with torch.inference_mode():
        torch.manual_seed(3)
        want = runner.generate(**enc, generation_config=config)
        torch.manual_seed(3)
        got = recorder.generate(runner, **enc, generation_config=config)
    assert torch.equal(got, want)
    assert vars(runner)["__call__"].kept == {}       # keep=False frees the cache and its recorded steps


@pytest.mark.parametrize("failure", ["differs", "raises"])
def test_a_bad_recording_turns_the_graphs_off_and_keeps_the_tokens(tiny, pairs, recorder, monkeypatch, failure):
    """A recording that fails, or whose replay differs (here: wrong logits and a wrong cache entry written), is
    dropped; the step runs eagerly again over the cache, and the tokens are generate()'s."""
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)

    class Corrupting(EagerGraph):
        def replay(self):
            super().replay()
            for layer in next(iter(vars(runner)["__call__"].kept.values())).cache.layers:
                layer.keys[:, :, int(layer.cumulative_length) - 1] += 3.0

    def bad(step):
        if failure == "raises":
            raise RuntimeError("operation not permitted when stream is capturing")
        graph = Corrupting(step, perturb=5.0)
        return graph, graph.output
    monkeypatch.setattr(recorder, "GRAPH_FACTORY", bad)
    enc, config = _inputs(tok, pairs), _config(model, tok)
    with torch.inference_mode():
        want = runner.generate(**enc, generation_config=config)
        with pytest.warns(UserWarning, match="differed" if failure == "differs" else "recording a decode step failed"):
            got = recorder.generate(runner, **enc, generation_config=config)
    assert torch.equal(got, want)
    graphs = vars(runner)["__call__"]
    assert not graphs.enabled and graphs.stats["replayed"] == 0


def test_out_of_memory_while_recording_reaches_translates_retry(tiny, pairs, recorder, monkeypatch):
    from mtlib.generate import translate
    model, tok = tiny
    sources = [p[0] for p in pairs[:6]]
    plain = translate(model, tok, sources, batch_size=4, max_new_tokens=8, progress=False, fast_decode=True,
                      graphs=False)
    calls = []

    def once(step):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (while recording)")
        return eager_graphs(step)
    monkeypatch.setattr(recorder, "GRAPH_FACTORY", once)
    got, stats = translate(model, tok, sources, batch_size=4, max_new_tokens=8, progress=False, fast_decode=True,
                           return_stats=True)
    assert got == plain and stats.oom_retries == 1 and stats.batch_size_used == 2


def test_what_the_graphs_do_not_cover_is_generates_own(tiny, pairs, recorder):
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)
    enc, config = _inputs(tok, pairs[:2]), _config(model, tok)
    with torch.inference_mode():
        want = runner.generate(**enc, generation_config=config, num_beams=2)
        got = recorder.generate(runner, **enc, generation_config=config, num_beams=2)  # an override, not the config
    assert torch.equal(got, want) and "__call__" not in vars(runner)


def test_an_installed_model_is_freed_when_deleted(tiny, pairs, recorder):
    import gc
    import weakref
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)
    with torch.inference_mode():
        # keep=False: a kept stand-in recording would hold its step and with it the model (a CUDA graph does not)
        recorder.generate(runner, **_inputs(tok, pairs[:2]), generation_config=_config(model, tok))
    assert isinstance(vars(runner)["__call__"], recorder.DecodeGraphs)
    ref = weakref.ref(runner)
    gc.disable()
    try:
        del runner
        assert ref() is None   # no reference cycle: freed at once, not at the next garbage collection
    finally:
        gc.enable()


def test_caches_made_in_inference_mode_are_not_reused_outside_it(tiny, pairs, recorder):
    from mtlib.fastgen import merged_copy
    model, tok = tiny
    runner = merged_copy(model)
    enc, config = _inputs(tok, pairs[:3]), _config(model, tok)
    with torch.inference_mode():
        first = recorder.generate(runner, **enc, generation_config=config, keep=True)
    with torch.no_grad():
        second = recorder.generate(runner, **enc, generation_config=config, keep=True)
    assert torch.equal(first, second) and len(vars(runner)["__call__"].kept) == 2


def test_translate_decodes_through_the_graphs_where_it_can(tiny, pairs, recorder, monkeypatch):
    from mtlib.generate import translate
    model, tok = tiny
    sources = [p[0] for p in pairs[:7]]
    plain = translate(model, tok, sources, batch_size=4, max_new_tokens=10, progress=False, fast_decode=True,
                      graphs=False)
    recorded = []
    real = recorder.DecodeGraphs._record

    def spy(self, *a, **k):
        recorded.append(1)
        return real(self, *a, **k)
    monkeypatch.setattr(recorder.DecodeGraphs, "_record", spy)
    graphed = translate(model, tok, sources, batch_size=4, max_new_tokens=10, progress=False, fast_decode=True)
    assert graphed == plain and len(recorded) == 2   # one recording per batch (4 + 3 sentences)


def test_refresh_writes_the_current_adapter_into_the_copy(tiny, pairs):
    from mtlib.fastgen import merged_copy, refresh_merged
    from mtlib.modeling import add_lora
    model, tok = tiny
    peft_model = add_lora(model, gradient_checkpointing=False)
    copy = merged_copy(peft_model)
    pointers = {n: p.data_ptr() for n, p in copy.named_parameters()}
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    refresh_merged(copy, peft_model)
    fresh = merged_copy(peft_model)
    assert {n: p.data_ptr() for n, p in copy.named_parameters()} == pointers   # written in place
    for (name, got), (_, want) in zip(copy.named_parameters(), fresh.named_parameters()):
        assert torch.equal(got, want), name


def test_grpo_samples_through_the_graphs_from_the_current_adapter(brief_grpo, recorder, monkeypatch):
    """GRPO's routed generate: one merged copy, refreshed before each generation, decoded through the graphs over
    a kept cache; training still sees completions of the prompts it gave."""
    from mtlib import fastgen

    trained, seen = [], []
    real_generate = recorder.generate

    def spy(runner, *a, **k):
        lora_b = next(p for n, p in trained[0].named_parameters() if "lora_B" in n)
        seen.append((float(lora_b.detach().abs().sum()), id(runner)))
        return real_generate(runner, *a, **k)
    monkeypatch.setattr(recorder, "generate", spy)

    model, params, rebuild = brief_grpo(before_training=trained.append)
    assert len(seen) == 3 and len({r for _, r in seen}) == 1  # one copy for the whole run
    assert seen[0][0] == 0.0 and seen[-1][0] > 0.0              # refreshed with the updated adapter
    copy = model._mtlib_routed_generate["copy"]
    assert vars(copy)["__call__"].stats["replayed"] > 0
    fastgen.unroute_generate(model)
    assert "generate" not in vars(model) and "__call__" not in vars(copy)
    rebuild(fast_generation=False)
    assert "generate" not in vars(model)
