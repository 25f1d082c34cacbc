"""CUDA graphs for the one-token decode steps of ``model.generate`` (the merged copy of :mod:`mtlib.fastgen`).

A decode step of the 3B model launches about a thousand small kernels (28 layers of projections, rotary
embeddings, cache writes, attention, norms); at GRPO's batch of 128 the step waits on their launch, not on
the GPU. Recorded once as a CUDA graph, a step is replayed with one launch. That needs tensors that keep
their addresses from step to step: :func:`generate` runs transformers' own ``generate`` (prefill, logits
processors, sampling and stopping unchanged) with a :class:`transformers.StaticCache` it owns, and
:class:`DecodeGraphs`, installed as the model's ``__call__`` (what ``generate`` calls for each decode step),
replays a recorded step whenever the inputs have the shapes it was recorded with. A decode step's inputs
depend only on the batch and the cache's length (the mask hides what a shorter prompt leaves unused), so a
kept cache, grown only when a longer prompt needs it, lets every GRPO step replay one recording.

Each recording is checked once: the step is run eagerly, recorded, run again from the graph, and the two
logits compared; a mismatch or a failed recording turns the graphs off for that model with a warning, the
step is run eagerly again over the cache, and decoding continues without graphs. Off the GPU, or for what
the graphs do not cover (beam search, several sequences per prompt, per-step outputs), ``generate`` is
transformers' own, unchanged.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
import weakref

log = logging.getLogger(__name__)

CACHE_STEP = 64          # a kept cache grows to a multiple of this many tokens
MAX_CACHES = 2           # kept caches per model (each holds its own recorded step and graph memory)

# What records a step: None for torch.cuda.CUDAGraph; the tests set a stand-in that runs the step eagerly.
GRAPH_FACTORY = None


def available(model) -> bool:
    """Whether ``model``'s decode steps can be recorded: its parameters live on a CUDA device."""
    import torch
    try:
        return next(model.parameters()).device.type == "cuda" and torch.cuda.is_available()
    except StopIteration:
        return False


def supports(model, config, kwargs: dict) -> bool:
    """Whether ``model.generate(**kwargs, generation_config=config)`` can decode through the graphs: ``model`` on a
    CUDA GPU, one sequence per prompt decoded greedily or by sampling, token ids in, token ids out, no cache of the
    caller's, ``max_new_tokens`` set (it sizes the cache)."""
    return (available(model) and config is not None
            and not {"past_key_values", "assistant_model", "inputs_embeds", "streamer"} & set(kwargs)
            and (getattr(config, "num_beams", 1) or 1) == 1 and (getattr(config, "num_return_sequences", 1) or 1) == 1
            and not getattr(config, "return_dict_in_generate", False)
            and not getattr(config, "output_hidden_states", False) and not getattr(config, "output_attentions", False)
            and getattr(config, "max_new_tokens", None) is not None)


class _Recorded:
    """One recorded decode step: its input buffers, fixed arguments, graph and output."""

    def __init__(self, static_inputs: dict, fixed: dict, graph, output):
        self.static_inputs, self.fixed, self.graph, self.output = static_inputs, fixed, graph, output

    def replay(self, tensors: dict):
        for name, value in tensors.items():
            self.static_inputs[name].copy_(value)
        self.graph.replay()
        return self.output


def _signature(kwargs: dict):
    """What a recorded step must match: each tensor's name, shape, dtype and device, every other argument's value."""
    import torch
    tensors, fixed = {}, {}
    for name, value in kwargs.items():
        if name == "past_key_values":
            continue
        if torch.is_tensor(value):
            tensors[name] = value
        else:
            fixed[name] = value
    key = (tuple(sorted((n, tuple(t.shape), t.dtype, str(t.device)) for n, t in tensors.items())),
           tuple(sorted((n, repr(v)) for n, v in fixed.items())))
    return key, tensors, fixed


def _cumulative_lengths(cache):
    return [layer.cumulative_length for layer in cache.layers]


class _Kept:
    """A cache made by :func:`generate` and the decode steps recorded over it."""

    def __init__(self, cache):
        self.cache, self.recorded = cache, {}


class DecodeGraphs:
    """The ``__call__`` of a model whose decode steps are replayed from CUDA graphs (see the module docstring).

    Calls that are not one-token steps over a cache made by :func:`generate` run the model as usual.
    ``stats``: steps recorded, replayed and run eagerly, seconds spent recording.
    """

    def __init__(self, model, graph_factory=None):
        self._model = weakref.ref(model)   # the model holds this object: no reference cycle
        self.kept: dict = {}               # (batch, inference mode) -> _Kept, least recently used first
        self.enabled = True
        self.stats = {"recorded": 0, "replayed": 0, "eager": 0, "record_seconds": 0.0}
        self._graph_factory = graph_factory  # tests: a stand-in for torch.cuda.CUDAGraph + capture

    @property
    def model(self):
        return self._model()

    # -- what generate() calls -------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        cache = kwargs.get("past_key_values")
        input_ids = kwargs.get("input_ids")
        kept = next((k for k in self.kept.values() if k.cache is cache), None) if cache is not None else None
        if (args or not self.enabled or kept is None or input_ids is None or input_ids.shape[-1] != 1
                or not all(getattr(layer, "is_initialized", False) for layer in cache.layers)):
            return self._eager(*args, **kwargs)
        key, tensors, fixed = _signature(kwargs)
        recorded = kept.recorded.get(key)
        if recorded is not None:
            self.stats["replayed"] += 1
            return recorded.replay(tensors)
        return self._record(kept, key, tensors, fixed, kwargs)

    def _eager(self, *args, **kwargs):
        self.stats["eager"] += 1
        model = self.model
        return type(model).__call__(model, *args, **kwargs)

    # -- recording ---------------------------------------------------------------------------------------------
    def _record(self, kept, key, tensors, fixed, kwargs):
        import torch
        started = time.perf_counter()
        cache = kept.cache
        lengths = _cumulative_lengths(cache)
        before = [n.clone() for n in lengths]

        def rewind(to):
            for n, b in zip(lengths, to):
                n.copy_(b)

        out = self._eager(**kwargs)  # this step's result; the recording below only has to reproduce it
        after = [n.clone() for n in lengths]
        static_inputs = {name: t.clone() for name, t in tensors.items()}
        model = self.model

        def step():
            return type(model).__call__(model, past_key_values=cache, **static_inputs, **fixed)

        try:
            rewind(before)
            graph, output = self._capture(step)
            rewind(before)
            graph.replay()                 # the same step again, from the graph: it writes the same cache entries
            agree, detail = _same_logits(output.logits, out.logits)
        except torch.cuda.OutOfMemoryError:
            rewind(after)                  # the eager step's entries are whole: the caller may retry smaller
            raise
        except Exception as exc:  # a recording can fail on a kernel that syncs with the host
            return self._give_up(f"recording a decode step failed ({type(exc).__name__}: {exc})", before, kwargs)
        if not agree:
            return self._give_up(f"a replayed decode step differed from the eager one ({detail})", before, kwargs)
        rewind(after)
        kept.recorded[key] = _Recorded(static_inputs, fixed, graph, output)
        self.stats["recorded"] += 1
        self.stats["record_seconds"] += time.perf_counter() - started
        log.info("recorded a decode step: %s", {n: tuple(t.shape) for n, t in tensors.items()})
        return out

    def _give_up(self, why: str, before, kwargs):
        """Turn the graphs off and run the step eagerly again from ``before``, over whatever the recording wrote."""
        self.enabled = False
        for kept in self.kept.values():
            kept.recorded.clear()
        warnings.warn(f"mtlib.decode_graphs: {why}; decoding continues without CUDA graphs", stacklevel=4)
        for n, b in zip(_cumulative_lengths(kwargs["past_key_values"]), before):
            n.copy_(b)
        return self._eager(**kwargs)

    def _capture(self, step):
        if self._graph_factory is not None:
            return self._graph_factory(step)
        import torch
        # torch.cuda.graph's context manager, less its synchronize, gc.collect and empty_cache (the last would
        # hand training's cached memory back to the driver at GRPO's first step, to be allocated again)
        current, side = torch.cuda.current_stream(), torch.cuda.Stream()
        side.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            step()                          # warm-up on a side stream, as CUDA graph capture asks
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                output = step()
            finally:
                graph.capture_end()
        current.wait_stream(side)
        return graph, output

    # -- caches ------------------------------------------------------------------------------------------------
    def cache(self, batch: int, length: int, keep: bool = True):
        """An emptied StaticCache for ``batch`` sequences of at least ``length`` tokens.

        ``keep``: the one kept for ``batch`` (grown to a multiple of :data:`CACHE_STEP` when ``length`` exceeds it;
        the steps recorded over it stay valid for every shorter prompt), the least recently used dropped beyond
        :data:`MAX_CACHES`; otherwise a new one of exactly ``length``, which :meth:`forget` frees.
        """
        import torch
        from transformers import StaticCache
        if not keep:
            kept = _Kept(StaticCache(config=self.model.config, max_cache_len=length))
            self.kept[("once", id(kept))] = kept
            return kept.cache
        key = (batch, torch.is_inference_mode_enabled())  # an inference-mode cache cannot be written outside it
        kept = self.kept.pop(key, None)
        if kept is not None and kept.cache.get_max_length() >= length:
            kept.cache.reset()      # in place: the recorded steps keep reading the same tensors
        else:
            size = -(-length // CACHE_STEP) * CACHE_STEP
            kept = _Kept(StaticCache(config=self.model.config, max_cache_len=size))
        self.kept[key] = kept       # most recently used last
        while len(self.kept) > MAX_CACHES:
            self.kept.pop(next(iter(self.kept)))
        return kept.cache

    def forget(self, cache=None):
        """Drop ``cache`` (None: every cache) and the steps recorded over it."""
        for key in [k for k, kept in self.kept.items() if cache is None or kept.cache is cache]:
            del self.kept[key]


def installed(model) -> DecodeGraphs | None:
    """The :class:`DecodeGraphs` that :func:`install` gave ``model`` (its counters in ``.stats``), or None."""
    graphs = vars(model).get("__call__") if model is not None else None
    return graphs if isinstance(graphs, DecodeGraphs) else None


def install(model, graph_factory=None) -> DecodeGraphs:
    """Make ``model`` replay its decode steps from CUDA graphs (idempotent); returns its :class:`DecodeGraphs`."""
    graphs = installed(model)
    if graphs is None:
        graphs = DecodeGraphs(model, graph_factory=graph_factory or GRAPH_FACTORY)
        model.__call__ = graphs  # generate() calls self.__call__ for decode steps (and self(...) for the prefill)
    return graphs


def uninstall(model) -> None:
    """Undo :func:`install`, freeing the caches and recorded steps."""
    graphs = installed(model)
    if graphs is not None:
        del model.__call__
        graphs.forget()


def _same_logits(replayed, eager):
    """Whether the replayed step's logits match the eager ones (the same kernels: equal up to rounding)."""
    a, b = replayed.float(), eager.float()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    argmax = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    ok = math.isfinite(diff) and diff <= 1e-2 * scale + 1e-3 and argmax >= 0.99
    return ok, f"max difference {diff:.3g} at logits up to {scale:.3g}, argmax agreement {argmax:.3f}"


def generate(model, input_ids, attention_mask=None, generation_config=None, keep: bool = False, **kwargs):
    """``model.generate`` over a StaticCache whose decode steps replay CUDA graphs (:func:`install`).

    ``keep``: keep the cache and its recorded step for the next call with the same batch size (GRPO's steps);
    otherwise they are freed on return (translation: one call per batch). Where :func:`supports` says no, this is
    ``model.generate`` as called. The rest goes to ``model.generate``.
    """
    import copy
    import torch
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    overrides = {k: v for k, v in kwargs.items() if hasattr(config, k)}
    for name, value in overrides.items():  # generate()'s own overrides, applied as generate() would
        setattr(config, name, value)
    rest = {k: v for k, v in kwargs.items() if k not in overrides}
    if not supports(model, config, rest):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask,
                              generation_config=generation_config, **kwargs)
    graphs = install(model)
    config.disable_compile = True       # the graphs replace torch.compile's; do not compile as well
    config.cache_implementation = None  # the cache is the one made here
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    batch, prompt = input_ids.shape
    cache = graphs.cache(batch, prompt + config.max_new_tokens, keep=keep)
    try:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                              past_key_values=cache, **rest)
    finally:
        if not keep:
            graphs.forget(cache)
