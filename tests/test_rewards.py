"""mtlib.rewards: TRL calling convention, hand-computed values, robustness to garbage completions."""
import math

import pytest
from sacrebleu.metrics import BLEU, CHRF

from mtlib import rewards as R
from mtlib.errors import ConfigError


class SplitTokenizer:
    """A stub tokenizer: one id per whitespace word; a BOS id only when special tokens are asked for."""

    def encode(self, text, add_special_tokens=True):
        return ([0] if add_special_tokens else []) + [hash(w) % 1000 + 1 for w in text.split()]


class CallableSplitTokenizer(SplitTokenizer):
    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [self.encode(t, add_special_tokens) for t in texts]}


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A real transformers tokenizer: WordLevel over whitespace, with a BOS token that must not count."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1}
    for w in "ein hund rennt schnell über die wiese zwei katzen schlafen .".split():
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


def chat(text):
    return [{"role": "assistant", "content": text}]


REF = "ein hund rennt schnell über die wiese ."


def call(fn, completions, references, **extra):
    """Call a reward the way TRL's GRPOTrainer does."""
    return fn(prompts=[[{"role": "user", "content": "x"}]] * len(completions), completions=completions,
              completion_ids=[[1, 2]] * len(completions), reference=references, trainer_state=object(),
              log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **extra)


# ------------------------------------------------------------------------------------------------ text

@pytest.mark.parametrize("completion, text", [
    ("  Ein Hund. ", "Ein Hund."),
    (chat("Ein Hund."), "Ein Hund."),
    ({"role": "assistant", "content": "Ein Hund."}, "Ein Hund."),
    ([{"role": "assistant", "content": [{"type": "text", "text": "Ein "}, {"type": "text", "text": "Hund."}]}],
     "Ein Hund."),
    ([{"role": "user", "content": "no"}, {"role": "assistant", "content": "Ja"}], "Ja"),
    (None, ""), (42, ""), ([{"role": "assistant", "content": None}], ""), ([{"content": 3}], ""),
    ([None, 5, {"weird": True}], ""), ({}, ""),
])
def test_completion_text(completion, text):
    assert R.completion_text(completion) == text


# ------------------------------------------------------------------------------------------------ BLEU / chrF

def test_bleu_reward_values():
    hyp = "ein hund rennt über die wiese ."
    out = call(R.bleu_reward, [chat(REF), REF, chat(hyp)], [REF, REF, REF])
    assert out[:2] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert out[2] == pytest.approx(BLEU(effective_order=True).sentence_score(hyp, [REF]).score / 100)
    assert 0 < out[2] < 1
    assert all(isinstance(x, float) for x in out)


def test_chrf_reward_values():
    hyp = "ein hund rennt"
    out = call(R.chrf_reward, [chat(REF), hyp], [REF, REF])
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(CHRF().sentence_score(hyp, [REF]).score / 100) and 0 < out[1] < 1


@pytest.mark.parametrize("fn", [R.bleu_reward, R.chrf_reward])
def test_garbage_scores_zero_without_raising(fn):
    garbage = [None, "", "   ", chat(""), chat(None), 17, [{"x": 1}], {"role": "assistant"}, [[[]]]]
    assert call(fn, garbage, [REF] * len(garbage)) == [0.0] * len(garbage)
    assert call(fn, [REF, REF, REF], ["", None, 5]) == [0.0, 0.0, 0.0]  # empty or broken reference


def test_names_for_trl_logging(hf_tokenizer):
    assert R.bleu_reward.__name__ == "bleu"
    assert R.chrf_reward.__name__ == "chrf"
    assert R.length_penalty_reward(hf_tokenizer).__name__ == "length_penalty"


def test_missing_reference_column_is_a_config_error():
    with pytest.raises(ConfigError, match="reference"):
        R.bleu_reward(prompts=["p"], completions=["c"])
    with pytest.raises(ConfigError, match="2 completions but 1 references"):
        R.bleu_reward(prompts=["p", "p"], completions=["c", "d"], reference=["r"])


# ------------------------------------------------------------------------------------------------ length

@pytest.mark.parametrize("make", [SplitTokenizer, CallableSplitTokenizer])
def test_length_penalty_with_stub_tokenizers(make):
    fn = R.length_penalty_reward(make())
    ref = "a b c d"
    out = call(fn, [chat(ref), "a b", "a b c d a b c d", "a b c d e f", "", None], [ref] * 6)
    assert out[0] == 1.0 and out[1] == 1.0  # as long or shorter: no penalty
    assert out[2] == pytest.approx(math.exp(-0.5))  # twice as long
    assert out[3] == pytest.approx(math.exp(-0.5 * 2 / 4))
    assert out[4:] == [0.0, 0.0]


def test_length_penalty_with_hf_tokenizer(hf_tokenizer):
    fn = R.length_penalty_reward(hf_tokenizer)
    assert len(hf_tokenizer(REF)["input_ids"]) == 9  # BOS + 8: the BOS must not be counted below
    out = call(fn, [chat(REF), chat(REF + " " + REF), "zwei katzen schlafen"], [REF, REF, REF])
    assert out == [1.0, pytest.approx(math.exp(-0.5)), 1.0]
    assert call(fn, [REF], [""]) == [0.0]


def test_length_penalty_formula_and_bad_tokenizer():
    assert R.length_penalty(10, 10) == 1.0
    assert R.length_penalty(15, 10) == pytest.approx(math.exp(-0.25))
    assert R.length_penalty(0, 10) == 0.0 and R.length_penalty(3, 0) == 0.0
    with pytest.raises(ConfigError, match="tokenizer"):
        R.length_penalty_reward(None)


# ------------------------------------------------------------------------------------------------ registry

def test_registry(hf_tokenizer):
    assert set(R.REWARDS) == {"bleu", "chrf", "length"}
    fns = R.build_rewards(["bleu", "length"], hf_tokenizer)
    assert [f.__name__ for f in fns] == ["bleu", "length"]  # TRL logs rewards/<name>/mean
    assert R.REWARDS["chrf"](hf_tokenizer) is R.chrf_reward
    with pytest.raises(ConfigError, match="meteor"):
        R.build_rewards(["meteor"], hf_tokenizer)


def test_rewards_in_range_on_a_batch(hf_tokenizer):
    comps = [chat("ein hund"), chat("die wiese . ein hund rennt schnell über die wiese ."), chat("x y z w"), None]
    for fn in R.build_rewards(list(R.REWARDS), hf_tokenizer):
        out = call(fn, comps, [REF] * len(comps))
        assert len(out) == len(comps) and all(0.0 <= x <= 1.0 for x in out), fn.__name__
        assert out[-1] == 0.0
