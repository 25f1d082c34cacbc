"""GRPO reward functions in TRL's calling convention.

TRL calls each reward as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns)``
where ``columns`` are the dataset's other columns: here ``reference``, the target translation. A
completion is a string, or for chat prompts a list of messages (``[{"role": "assistant", "content": ...}]``).
Every function returns one float in [0, 1] per completion; an empty, ``None`` or malformed completion,
or an empty reference, scores 0.0 rather than raising. TRL logs each as ``rewards/<__name__>``.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from sacrebleu.metrics import BLEU, CHRF

from .errors import ConfigError

# Built once: sentence BLEU as sacrebleu.sentence_bleu (exponential smoothing, effective order), chrF2.
_BLEU = BLEU(effective_order=True)
_CHRF = CHRF()


def completion_text(completion) -> str:
    """The text of one completion: a string as is; for a message list, the assistant content joined
    (text parts of multimodal content included); anything else -> ``""``. Surrounding whitespace removed."""
    if isinstance(completion, str):
        return completion.strip()
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return ""
    texts = []
    for msg in completion:
        if isinstance(msg, str):
            texts.append(msg)
            continue
        if not isinstance(msg, Mapping) or msg.get("role", "assistant") != "assistant":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, (list, tuple)):  # [{"type": "text", "text": ...}, ...]
            texts.extend(p["text"] for p in content
                         if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return "".join(texts).strip()


def _references(completions, reference, name: str) -> list:
    if reference is None:
        raise ConfigError(f"reward {name!r} needs a 'reference' column in the training dataset "
                          "(mtlib.prompts.to_grpo_dataset makes one)")
    if isinstance(reference, str):
        reference = [reference] * len(completions)
    if len(reference) != len(completions):
        raise ConfigError(f"reward {name!r}: {len(completions)} completions but {len(reference)} references")
    return list(reference)


def _ref_text(ref) -> str:
    return ref.strip() if isinstance(ref, str) else ""


def _sentence_reward(metric, completions, reference, name: str) -> list[float]:
    out = []
    for comp, ref in zip(completions, _references(completions, reference, name)):
        hyp, ref = completion_text(comp), _ref_text(ref)
        if not hyp or not ref:
            out.append(0.0)
            continue
        try:
            out.append(min(1.0, max(0.0, metric.sentence_score(hyp, [ref]).score / 100.0)))
        except Exception:  # a metric failure on odd text must not stop a training run
            out.append(0.0)
    return out


def bleu_reward(prompts=None, completions=None, reference=None, **kwargs) -> list[float]:
    """Sentence BLEU (exponential smoothing) of each completion against its reference, divided by 100."""
    return _sentence_reward(_BLEU, completions or [], reference, "bleu")


def chrf_reward(prompts=None, completions=None, reference=None, **kwargs) -> list[float]:
    """Sentence chrF of each completion against its reference, divided by 100."""
    return _sentence_reward(_CHRF, completions or [], reference, "chrf")


bleu_reward.__name__ = "bleu"
chrf_reward.__name__ = "chrf"


def _ids_len(ids) -> int:
    ids = getattr(ids, "ids", ids)  # a `tokenizers.Encoding`
    return len(ids)


def _token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Token counts without special tokens; one batched call when the tokenizer supports it."""
    if callable(tokenizer):
        try:
            out = tokenizer(list(texts), add_special_tokens=False)
            ids = out["input_ids"] if not isinstance(out, (list, tuple)) else out
            if len(ids) == len(texts):
                return [_ids_len(x) for x in ids]
        except (TypeError, KeyError):
            pass
    return [_ids_len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def length_penalty(len_c: int, len_r: int) -> float:
    """The original study's length penalty: exp(-0.5 * max(0, len_c - len_r) / len_r); 0.0 for an empty side."""
    if len_c <= 0 or len_r <= 0:
        return 0.0
    return math.exp(-0.5 * max(0, len_c - len_r) / len_r)


def length_penalty_reward(tokenizer) -> Callable[..., list[float]]:
    """A reward that is 1.0 up to the reference's length in tokens and decays as exp(-0.5 * excess / len_r)."""
    if tokenizer is None or not (callable(tokenizer) or hasattr(tokenizer, "encode")):
        raise ConfigError("length_penalty_reward needs the model's tokenizer (callable or with .encode)")

    def reward(prompts=None, completions=None, reference=None, **kwargs) -> list[float]:
        completions = completions or []
        refs = [_ref_text(r) for r in _references(completions, reference, "length_penalty")]
        hyps = [completion_text(c) for c in completions]
        try:
            counts = _token_counts(tokenizer, hyps + refs)
        except Exception:  # fall back to one at a time, so one bad text costs only its own reward
            counts = []
            for t in hyps + refs:
                try:
                    counts.append(_token_counts(tokenizer, [t])[0])
                except Exception:
                    counts.append(0)
        n = len(hyps)
        return [length_penalty(c, r) for c, r in zip(counts[:n], counts[n:])]

    reward.__name__ = "length_penalty"
    return reward


# name -> factory(tokenizer) -> reward function, for the GRPO trainer and the profiles.
REWARDS: dict[str, Callable] = {
    "bleu": lambda tokenizer=None: bleu_reward,
    "chrf": lambda tokenizer=None: chrf_reward,
    "length": length_penalty_reward,
}


def _named(fn: Callable, name: str) -> Callable:
    """TRL logs each reward as ``rewards/<__name__>/mean``: name the function after its registry key."""
    def reward(*args, **kwargs):
        return fn(*args, **kwargs)
    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = fn.__doc__
    return reward


def build_rewards(names: Sequence, tokenizer=None) -> list[Callable]:
    """Reward functions for the given names (keys of :data:`REWARDS`, logged under those keys) or callables."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if not callable(n) and n not in REWARDS]
    if unknown:
        raise ConfigError(f"unknown reward {unknown}; choose from {sorted(REWARDS)}")
    return [n if callable(n) else _named(REWARDS[n](tokenizer), n) for n in names]
