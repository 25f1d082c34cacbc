"""CUDA graphs for the one-token decode steps of ``model.generate`` (the merged copy of :mod:`mtlib.fastgen`).

A decode step of the 3B model launches about a thousand small kernels (28 layers of projections, rotary
embeddings, cache writes, attention, norms); at GRPO's batch of 128 the step waits on their launch, not on
the GPU. Recorded once as a CUDA graph, a step is replayed with one launch. That needs tensors that keep
their addresses from step to step: :func:`generate` runs transformers' own ``generate`` (prefill, logits
processors, sampling and stopping unchanged) with a :class:`transformers.StaticCache`, and
:class:`DecodeGraphs`, installed as the model's ``__call__`` (what ``generate`` calls for each decode step),
replays a recorded step whenever the inputs have the shapes it was recorded with.

Each new shape is checked once: the step is run eagerly, recorded, run again from the graph, and the two
logits compared; a mismatch or a failed recording turns the graphs off for that model with a warning (its
steps then run eagerly, as before). Off the GPU the model is never graphed.
"""
from __future__ import annotations

import logging
import math
import warnings

log = logging.getLogger(__name__)

PROMPT_BUCKET = 32       # GRPO: prompts left-padded to a multiple of this, so steps of one bucket share a graph
MAX_RECORDED = 2         # recorded shapes kept per model (each holds its own cache and graph memory)


# What records a step: None for torch.cuda.CUDAGraph; the tests set a stand-in that runs the step eagerly.
GRAPH_FACTORY = None


def available(model) -> bool:
    """Whether ``model``'s decode steps can be recorded: its parameters live on a CUDA device."""
    import torch
    try:
        return next(model.parameters()).device.type == "cuda" and torch.cuda.is_available()
    except StopIteration:
        return False


def supports(model, kwargs: dict) -> bool:
    """Whether ``model.generate(**kwargs)`` can run through :func:`generate`: ``model`` on a CUDA GPU, one
    sequence per prompt decoded greedily or by sampling, token ids in, token ids out, no cache of the caller's."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    return (available(model) and "input_ids" in kwargs and "past_key_values" not in kwargs
            and "assistant_model" not in kwargs and "inputs_embeds" not in kwargs and config is not None
            and getattr(config, "num_beams", 1) in (1, None) and not getattr(config, "return_dict_in_generate", False)
            and getattr(config, "max_new_tokens", None) is not None)


class _Recorded:
    """One recorded decode step: its cache, input buffers, graph and output."""

    def __init__(self, cache, static_inputs: dict, fixed: dict, graph, output):
        self.cache, self.static_inputs, self.fixed, self.graph, self.output = cache, static_inputs, fixed, graph, output

    def replay(self, tensors: dict):
        for name, value in tensors.items():
            self.static_inputs[name].copy_(value)
        self.graph.replay()
        return self.output


def _signature(kwargs: dict):
    """What a recorded step must match: each tensor's name, shape and dtype, every other argument's value."""
    import torch
    tensors, fixed = {}, {}
    for name, value in kwargs.items():
        if name == "past_key_values":
            continue
        if torch.is_tensor(value):
            tensors[name] = value
        else:
            fixed[name] = value
    key = (id(kwargs.get("past_key_values")),
           tuple(sorted((n, tuple(t.shape), t.dtype) for n, t in tensors.items())),
           tuple(sorted((n, repr(v)) for n, v in fixed.items())))
    return key, tensors, fixed


def _cumulative_lengths(cache):
    return [layer.cumulative_length for layer in cache.layers]


class DecodeGraphs:
    """The ``__call__`` of a model whose decode steps are replayed from CUDA graphs (see the module docstring).

    Calls that are not one-token steps over a cache made by :func:`generate` run the model as usual.
    ``stats``: steps recorded, replayed and run eagerly.
    """

    def __init__(self, model, graph_factory=None):
        self.model = model
        self.caches: dict = {}           # (batch, cache length) -> StaticCache made by generate()
        self.recorded: dict = {}         # signature -> _Recorded
        self.enabled = True
        self.stats = {"recorded": 0, "replayed": 0, "eager": 0, "record_seconds": 0.0}
        self._graph_factory = graph_factory  # tests: a stand-in for torch.cuda.CUDAGraph + capture

    # -- what generate() calls -------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        cache = kwargs.get("past_key_values")
        input_ids = kwargs.get("input_ids")
        if (args or not self.enabled or input_ids is None or input_ids.shape[-1] != 1
                or not any(c is cache for c in self.caches.values())
                or not all(getattr(layer, "is_initialized", False) for layer in cache.layers)):
            return self._eager(*args, **kwargs)
        key, tensors, fixed = _signature(kwargs)
        recorded = self.recorded.get(key)
        if recorded is not None:
            self.stats["replayed"] += 1
            return recorded.replay(tensors)
        return self._record(key, cache, tensors, fixed, kwargs)

    def _eager(self, *args, **kwargs):
        self.stats["eager"] += 1
        return type(self.model).__call__(self.model, *args, **kwargs)

    # -- recording ---------------------------------------------------------------------------------------------
    def _record(self, key, cache, tensors, fixed, kwargs):
        import time
        import torch
        started = time.perf_counter()
        lengths = _cumulative_lengths(cache)
        before = [n.clone() for n in lengths]

        def rewind():
            for n, b in zip(lengths, before):
                n.copy_(b)

        out = self._eager(**kwargs)  # this step's result; the recording below only has to reproduce it
        after = [n.clone() for n in lengths]
        static_inputs = {name: t.clone() for name, t in tensors.items()}

        def step():
            return type(self.model).__call__(self.model, past_key_values=cache, **static_inputs, **fixed)

        try:
            rewind()
            graph, output = self._capture(step)
            rewind()
            graph.replay()                 # the same step again, from the graph: it writes the same cache entries
            agree, detail = _same_logits(output.logits, out.logits)
        except Exception as exc:  # a recording can fail on a kernel that syncs with the host
            for n, a in zip(lengths, after):
                n.copy_(a)
            self._disable(f"recording a decode step failed ({type(exc).__name__}: {exc})")
            return out
        for n, a in zip(lengths, after):
            n.copy_(a)
        if not agree:
            self._disable(f"a replayed decode step differed from the eager one ({detail})")
            return out
        while len(self.recorded) >= MAX_RECORDED:
            self.recorded.pop(next(iter(self.recorded)))
        self.recorded[key] = _Recorded(cache, static_inputs, fixed, graph, output)
        self.stats["recorded"] += 1
        self.stats["record_seconds"] += time.perf_counter() - started
        if torch.cuda.is_available():
            log.info("recorded a decode step: %s", {n: tuple(t.shape) for n, t in tensors.items()})
        return out

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

    def _disable(self, why: str):
        self.enabled = False
        self.recorded.clear()
        warnings.warn(f"mtlib.decode_graphs: {why}; decoding continues without CUDA graphs", stacklevel=3)

    # -- caches ------------------------------------------------------------------------------------------------
    def cache(self, batch: int, length: int):
        """A StaticCache for ``batch`` sequences of up to ``length`` tokens, emptied: one per shape, kept for
        the next call with that shape (the recorded steps read its tensors), the oldest dropped beyond
        :data:`MAX_RECORDED`."""
        from transformers import StaticCache
        key = (batch, length)
        cache = self.caches.get(key)
        if cache is None:
            while len(self.caches) >= MAX_RECORDED:
                self.forget(next(iter(self.caches)))
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self.caches[key] = cache
        elif all(getattr(layer, "is_initialized", False) for layer in cache.layers):
            for n in _cumulative_lengths(cache):
                n.zero_()               # entries past the prompt are masked until written again
        return cache

    def forget(self, shape=None):
        """Drop the cache of ``shape`` (``(batch, length)``; None: all) and the steps recorded over it."""
        for key in [k for k in self.caches if shape is None or k == shape]:
            cache = self.caches.pop(key)
            for sig in [s for s, r in self.recorded.items() if r.cache is cache]:
                del self.recorded[sig]


def install(model, graph_factory=None) -> DecodeGraphs:
    """Make ``model`` replay its decode steps from CUDA graphs (idempotent); returns its :class:`DecodeGraphs`."""
    graphs = vars(model).get("__call__")
    if not isinstance(graphs, DecodeGraphs):
        graphs = DecodeGraphs(model, graph_factory=graph_factory or GRAPH_FACTORY)
        model.__call__ = graphs  # generate() calls self.__call__ for decode steps (and self(...) for the prefill)
    return graphs


def uninstall(model) -> None:
    """Undo :func:`install`, freeing the caches and recorded steps."""
    graphs = vars(model).pop("__call__", None)
    if isinstance(graphs, DecodeGraphs):
        graphs.forget()


def _same_logits(replayed, eager):
    """Whether the replayed step's logits match the eager ones (the same kernels: equal up to rounding)."""
    import torch
    a, b = replayed.float(), eager.float()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    argmax = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    ok = math.isfinite(diff) and diff <= 1e-2 * scale + 1e-3 and argmax >= 0.99
    return ok, f"max difference {diff:.3g} at logits up to {scale:.3g}, argmax agreement {argmax:.3f}"


def generate(model, input_ids, attention_mask=None, generation_config=None, bucket: int | None = None,
             keep: bool = False, **kwargs):
    """``model.generate`` over a StaticCache whose decode steps replay CUDA graphs (:func:`install`).

    ``bucket``: left-pad the prompts to a multiple of this many tokens (masked, so the output is the same) so
    that prompts of nearby lengths share a recorded step; the padding is removed from the output.
    ``keep``: keep the cache and graphs for the next call of the same shape (GRPO's steps); otherwise they are
    freed on return (translation: one call per batch). The rest goes to ``model.generate``.
    """
    import copy
    import torch
    graphs = install(model)
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    for name, value in kwargs.items():  # generate()'s own overrides, applied here to read max_new_tokens
        if hasattr(config, name):
            setattr(config, name, value)
    kwargs = {k: v for k, v in kwargs.items() if not hasattr(config, k)}
    config.disable_compile = True       # the graphs replace torch.compile's; do not compile as well
    config.cache_implementation = None  # the cache is the one made here
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    batch, prompt = input_ids.shape
    extra = (-prompt) % bucket if bucket else 0
    if extra:
        pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        input_ids = torch.cat([input_ids.new_full((batch, extra), int(pad_id)), input_ids], dim=1)
        attention_mask = torch.cat([attention_mask.new_zeros((batch, extra)), attention_mask], dim=1)
    if config.max_new_tokens is None:
        raise ValueError("decode_graphs.generate needs generation_config.max_new_tokens (the cache is sized by it)")
    shape = (batch, prompt + extra + config.max_new_tokens)
    cache = graphs.cache(*shape)
    try:
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                             past_key_values=cache, **kwargs)
    finally:
        if not keep:
            graphs.forget(shape)
    return out[:, extra:] if extra else out
