"""Batched translation with the chat template, and evaluation of a model on a split (scores + run record)."""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import decode_graphs
from .data import pair_columns
from .errors import ConfigError, DataError
from .fastgen import decoding_kernels, merged_copy
from .modeling import TrainedModel, as_trained, backend_of
from .prompts import inference_messages, template_date

log = logging.getLogger(__name__)


@dataclass
class TranslateStats:
    """What happened in a translate() call."""
    n: int = 0
    truncated: int = 0           # sources cut to fit max_input_tokens
    batch_size_used: int = 0     # smallest batch size used (halved on out-of-memory)
    oom_retries: int = 0
    seconds: float = 0.0
    new_tokens: int = 0
    setup_seconds: float = 0.0   # building the merged copy (fast_decode)


def _is_oom(exc: BaseException) -> bool:
    import torch
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or \
        (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: <|eot_id|> plus the tokenizer's and the generation config's eos ids."""
    ids = []
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tokenizer.get_vocab() else None
    for i in (eot, tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for j in (i if isinstance(i, (list, tuple)) else [i]):
            if j is not None and j not in ids:
                ids.append(int(j))
    return ids


def _generation_config(model, tokenizer, do_sample, max_new_tokens, **gen_kwargs):
    """Greedy: a clean config (no sampling knobs to warn about); sampling: the model's, updated."""
    from transformers import GenerationConfig
    settings = {"do_sample": do_sample, "max_new_tokens": max_new_tokens,
                "eos_token_id": eos_token_ids(model, tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id, **gen_kwargs}
    if do_sample:
        config = copy.deepcopy(model.generation_config)
        config.update(**settings)
        return config
    return GenerationConfig(temperature=1.0, top_p=1.0, **settings)  # neutral values: nothing to merge in


def build_prompts(tokenizer, sources, tgt_lang="de", src_lang="en", max_input_tokens=256):
    """Chat-formatted prompts; sources whose prompt exceeds ``max_input_tokens`` are cut at the end.

    Returns ``(prompts, n_truncated)``. The template (system prompt, headers) is always kept whole.
    """
    def render(src):
        return tokenizer.apply_chat_template(inference_messages(src, tgt_lang, src_lang), tokenize=False,
                                             add_generation_prompt=True)

    def length(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    overhead = length(render(""))
    if max_input_tokens is not None and overhead >= max_input_tokens:
        raise ConfigError(f"max_input_tokens={max_input_tokens} leaves no room for the source: the chat template "
                          f"alone takes {overhead} tokens")
    prompts, truncated = [], 0
    for src in sources:
        if not isinstance(src, str):
            raise DataError(f"sources must be strings, got {type(src).__name__}: {src!r}")
        text = render(src)
        if max_input_tokens is not None and length(text) > max_input_tokens:
            ids = tokenizer(src, add_special_tokens=False).input_ids
            keep = max(0, max_input_tokens - overhead)
            while True:
                text = render(tokenizer.decode(ids[:keep]))
                if length(text) <= max_input_tokens or keep == 0:
                    break
                keep -= 1
            truncated += 1
        prompts.append(text)
    return prompts, truncated


def _for_inference(model):
    if backend_of(model) == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_inference(model)
    else:
        model.eval()


def _restore_training(model, was_training: bool):
    if not was_training:
        return
    if backend_of(model) == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_training(model)
    else:
        model.train()


def drop_max_length(model) -> None:
    """Clear ``max_length`` in the generation configs of ``model`` (and the model it wraps).

    Every call here and in TRL sets ``max_new_tokens``; a ``max_length`` left in the model's own config (Unsloth
    writes one) only makes transformers warn on every ``generate`` that both are set.
    """
    models = [model, model.get_base_model() if hasattr(model, "get_base_model") else None]
    for m in models:
        config = getattr(m, "generation_config", None)
        if config is not None and getattr(config, "max_length", None) is not None:
            config.max_length = None


@contextlib.contextmanager
def decoding_model(model, fast_decode: bool = True):
    """The model that decodes several :func:`translate` calls (``translate(..., decoder=...)``).

    With ``fast_decode`` one merged copy (:func:`mtlib.fastgen.merged_copy`) is built on entry, for every test set
    of an evaluation, and freed on exit; without, ``model`` itself. Its ``setup_seconds`` says how long the copy took.
    """
    import torch
    if not fast_decode:
        yield model
        return
    was_training = model.training
    _for_inference(model)
    t = time.time()
    runner = merged_copy(model)
    runner.setup_seconds = time.time() - t
    try:
        yield runner
    finally:
        decode_graphs.uninstall(runner)
        del runner
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _restore_training(model, was_training)


def translate(model, tokenizer, sources, tgt_lang: str = "de", src_lang: str = "en", batch_size: int = 64,
              max_new_tokens: int = 128, do_sample: bool = False, max_input_tokens: int = 256,
              return_stats: bool = False, progress: bool = True, fast_decode: bool = False, decoder=None,
              graphs: bool = True, **gen_kwargs):
    """Translate ``sources`` with the chat template; greedy unless ``do_sample=True``.

    Prompts are sorted by length into left-padded batches, only the new tokens are decoded, and the
    outputs come back in input order. On out-of-memory the batch is halved and retried (down to 1).
    With ``return_stats=True`` returns ``(outputs, TranslateStats)``. ``fast_decode=True`` decodes with
    a merged dense copy of the model (:func:`mtlib.fastgen.merged_copy`: 4-bit base dequantized, LoRA
    folded in, plain transformers) that is built for this call and freed after it; ``decoder``: a model from
    :func:`decoding_model` to decode with instead (built once for several calls, freed by its caller). On a
    CUDA GPU the merged copy's decode steps are replayed from CUDA graphs (:mod:`mtlib.decode_graphs`; recorded
    once per batch, in well under a second); ``graphs=False`` runs them eagerly.
    """
    import torch
    from tqdm.auto import tqdm

    if isinstance(sources, str):
        raise DataError("translate() takes a list of sentences, not one string: wrap it in a list")
    sources = list(sources)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    t0 = time.time()
    stats = TranslateStats(n=len(sources), batch_size_used=batch_size)
    prompts, stats.truncated = build_prompts(tokenizer, sources, tgt_lang, src_lang, max_input_tokens)
    if stats.truncated:
        log.warning("%d of %d sources were longer than max_input_tokens=%d and were truncated",
                    stats.truncated, len(sources), max_input_tokens)

    tokenizer.padding_side = "left"
    gen_config = _generation_config(model, tokenizer, do_sample, max_new_tokens, **gen_kwargs)
    lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: OOM shows up early
    outputs: list[str | None] = [None] * len(prompts)
    was_training = model.training
    _for_inference(model)
    building = decoding_model(model, fast_decode) if decoder is None else contextlib.nullcontext(decoder)
    try:
        with building as runner:  # a copy built here is freed on leaving; a decoder passed in, by its caller
            stats.setup_seconds = runner.__dict__.pop("setup_seconds", 0.0)  # the first call on a copy reports it
            drop_max_length(runner)
            device = next(runner.parameters()).device
            size, start = batch_size, 0
            with tqdm(total=len(prompts), desc="translate", unit="sent", disable=not progress) as bar:
                while start < len(order):
                    idx = order[start:start + size]
                    enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                    add_special_tokens=False).to(device)
                    try:
                        with torch.inference_mode(), \
                                decoding_kernels() if runner is not model else contextlib.nullcontext():
                            if graphs and runner is not model:
                                out = decode_graphs.generate(runner, **enc, generation_config=gen_config)
                            else:
                                out = runner.generate(**enc, generation_config=gen_config)
                    except Exception as exc:
                        if not _is_oom(exc) or size == 1:
                            if runner is not model:
                                traceback.clear_frames(exc.__traceback__)  # frames would keep the copy alive
                            raise
                        if torch.cuda.is_available():
                            torch.cuda.empty_cache()
                        size = max(1, size // 2)
                        stats.oom_retries += 1
                        stats.batch_size_used = min(stats.batch_size_used, size)
                        log.warning("out of memory: retrying with batch_size=%d", size)
                        continue
                    new = out[:, enc["input_ids"].shape[1]:]
                    stats.new_tokens += int((new != tokenizer.pad_token_id).sum())
                    for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                        outputs[i] = text.strip()
                    start += len(idx)
                    bar.update(len(idx))
    finally:
        _restore_training(model, was_training)
    stats.seconds = time.time() - t0
    return (outputs, stats) if return_stats else outputs


@dataclass
class Evaluation:
    """Scores of one evaluation, its translations (source, reference, hypothesis) and its run folder."""
    metrics: dict
    translations: "object"  # pandas.DataFrame
    run_dir: Path | None = None
    stage: str = "base"
    stats: TranslateStats | None = None
    per_split: dict = field(default_factory=dict)


def evaluate(model_or_trained, split, src_lang: str = "en", tgt_lang: str = "de", name: str | None = None,
             runs_root="runs", batch_size: int = 64, max_new_tokens: int = 128, config: dict | None = None,
             split_name: str | None = None, tokenizer=None, translator=None, decoder=None,
             **translate_kwargs) -> Evaluation:
    """Translate a split, score it with :func:`mtlib.metrics.corpus_scores` and write a run record.

    ``model_or_trained``: a :class:`~mtlib.modeling.TrainedModel` (its ``stage`` labels the run), or a
    ``(model, tokenizer)`` pair / model + ``tokenizer=`` (stage "base"). ``split_name`` defaults to the
    Dataset's split name, else "test". ``translator``: a function with :func:`translate`'s signature used in
    its place (``mtlib.parallel`` passes one that splits the sentences across processes). ``decoder``: the
    model from :func:`decoding_model` that decodes every split of an evaluation (not recorded).
    """
    import pandas as pd
    from . import metrics as _metrics
    from .results import Run

    trained: TrainedModel = as_trained(model_or_trained, tokenizer)
    sources, refs = pair_columns(split, src_lang, tgt_lang)
    if not sources:
        raise DataError("the split to evaluate is empty")
    split_name = split_name or (str(split.split) if getattr(split, "split", None) else "test")
    run_config = {"model": trained.base_name, "adapter_dir": trained.adapter_dir, "train_run": trained.run_dir,
                  "split": split_name, "n": len(sources), "src_lang": src_lang, "tgt_lang": tgt_lang,
                  "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                  "backend": backend_of(trained.model), "prompt_date": template_date(trained.tokenizer),
                  **translate_kwargs, **(config or {})}
    run = Run.create(trained.stage, run_config, root=runs_root, name=name or f"{trained.stage}")
    translator = translator or translate
    try:
        with run.timer("translate"):
            hyps, stats = translator(trained.model, trained.tokenizer, sources, tgt_lang=tgt_lang, src_lang=src_lang,
                                    batch_size=batch_size, max_new_tokens=max_new_tokens, return_stats=True,
                                    decoder=decoder, **translate_kwargs)
        with run.timer("score"):
            scores = _metrics.corpus_scores(hyps, refs)
        df = pd.DataFrame({"source": sources, "reference": refs, "hypothesis": hyps})
        run.write_translations(df)
        run.write_json("translate_stats.json", stats.__dict__)
        run.finish(scores, split=split_name)
    except BaseException as exc:
        run.fail(exc)
        raise
    return Evaluation(metrics=scores, translations=df, run_dir=run.path, stage=trained.stage, stats=stats,
                      per_split={split_name: scores})
