"""mtlib.metrics against the sacrebleu command line, rouge_score, a worked BLEU example and sacrebleu's
own paired bootstrap."""
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mtlib import metrics as M
from mtlib.errors import ConfigError, DataError


def drop_every(sentence, k):
    """The sentence without every k-th word: a deterministic, imperfect 'translation'."""
    return " ".join(w for i, w in enumerate(sentence.split()) if i % k != k - 1)


@pytest.fixture(scope="module")
def refs(raw_dir):
    text = gzip.decompress((raw_dir / "test_2016_flickr.de.gz").read_bytes()).decode("utf-8")
    return text.split("\n")[:200]


@pytest.fixture(scope="module")
def hyps(refs):
    # a mix of damaged, lowercased and exact sentences, umlauts included
    return [drop_every(r, 3) if i % 3 == 0 else r.lower() if i % 3 == 1 else r for i, r in enumerate(refs)]


def test_bleu_chrf_ter_equal_the_sacrebleu_cli(tmp_path, refs, hyps):
    ref_file, hyp_file = tmp_path / "ref.de", tmp_path / "hyp.de"
    ref_file.write_text("\n".join(refs) + "\n", encoding="utf-8")
    hyp_file.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    cli = Path(sys.executable).parent / "sacrebleu"
    out = subprocess.run([str(cli), str(ref_file), "-i", str(hyp_file), "-m", "bleu", "chrf", "ter", "-b",
                          "-w", "2"], capture_output=True, text=True, check=True).stdout
    bleu, chrf, ter = json.loads(out)  # -b with several metrics prints a JSON list of scores
    s = M.corpus_scores(hyps, refs)
    assert (round(s["bleu"], 2), round(s["chrf"], 2), round(s["ter"], 2)) == (bleu, chrf, ter)
    assert 0 < s["bleu"] < 100 and s["n"] == 200
    assert s["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "nc:6" in s["chrf_signature"] and "tok:tercom" in s["ter_signature"]
    assert s["bp"] == pytest.approx(M.brevity_penalty(s["sys_len"], s["ref_len"]))


def test_rouge_is_the_mean_of_rouge_score(refs, hyps):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(M.ROUGE_TYPES), use_stemmer=False, tokenizer=M.UnicodeTokenizer())
    per = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    s = M.corpus_scores(hyps, refs)
    for key in M.ROUGE_TYPES:
        assert s[key] == pytest.approx(100 * sum(p[key].fmeasure for p in per) / len(per))
    assert s["rougeLsum"] == pytest.approx(s["rougeL"])  # one line per segment
    assert 0 < s["rouge2"] < s["rouge1"] < 100


def test_rouge_keeps_german_words_whole():
    assert M.UnicodeTokenizer().tokenize("Ein Mädchen, groß.") == ["ein", "mädchen", "groß"]
    # "Mädchen" vs "Madchen": one word differs in full, so ROUGE-1 F1 is 1/2 with our tokenizer
    assert M.rouge_scores(["Ein Mädchen"], ["Ein Madchen"])["rouge1"] == pytest.approx(50.0)
    # the stock ASCII tokenizer splits "Mädchen" into "m" + "dchen" (3 tokens vs 2)
    assert M.rouge_scores(["Ein Mädchen"], ["Ein Madchen"], tokenizer="ascii")["rouge1"] == pytest.approx(40.0)


def test_worked_example_today_the():
    hyp, ref = ["Today the"], ["Today the weather is sunny"]
    s = M.corpus_scores(hyp, ref)
    assert (s["sys_len"], s["ref_len"]) == (2, 5)
    assert s["bp"] == pytest.approx(math.exp(1 - 5 / 2))
    assert M.brevity_penalty(2, 5) == pytest.approx(math.exp(-1.5))
    table = M.bleu_breakdown(hyp, ref)
    assert table["n"].tolist() == [1, 2, 3, 4]
    assert table["matches"].tolist() == [2, 1, 0, 0]
    assert table["totals"].tolist() == [2, 1, 0, 0]
    assert table["precision"].tolist()[:2] == [100.0, 100.0] and table["precision"][2:].isna().all()
    assert s["bleu"] == 0.0  # no trigram at all: corpus BLEU (order 4, no effective order) is zero
    # sentence BLEU uses the effective order: BP * geometric mean of the two precisions (both 100)
    sent = M.sentence_scores(hyp, ref)
    assert sent.loc[0, "bleu"] == pytest.approx(100 * math.exp(-1.5))
    assert list(sent.columns) == ["hyp", "ref", "bleu", "chrf", "ter"]


def test_brevity_penalty_edges():
    assert M.brevity_penalty(5, 5) == 1.0 and M.brevity_penalty(7, 5) == 1.0
    assert M.brevity_penalty(0, 5) == 0.0
    with pytest.raises(ValueError):
        M.brevity_penalty(-1, 3)


def test_sentence_scores_perfect_and_wrong():
    df = M.sentence_scores(["Ein Hund rennt.", "xyz"], ["Ein Hund rennt.", "Eine Katze schläft."])
    assert df.loc[0, "bleu"] == pytest.approx(100) and df.loc[0, "chrf"] == pytest.approx(100)
    assert df.loc[0, "ter"] == 0.0
    assert df.loc[1, "bleu"] < 5 and df.loc[1, "ter"] == 100.0


@pytest.mark.parametrize("fn", [M.corpus_scores, M.bleu_breakdown, M.sentence_scores, M.rouge_scores])
def test_bad_inputs_are_clear_errors(fn):
    with pytest.raises(DataError, match="empty"):
        fn([], [])
    with pytest.raises(DataError, match="2 sentences but refs has 1"):
        fn(["a", "b"], ["a"])
    with pytest.raises(DataError, match=r"hyps\[1\] is NoneType"):
        fn(["a", None], ["a", "b"])
    with pytest.raises(DataError, match="single string"):
        fn("a b", ["a b"])


# ------------------------------------------------------------------------------------------------ bootstrap

def test_bootstrap_identical_systems(refs, hyps):
    r = M.paired_bootstrap(refs, hyps, list(hyps), n_samples=200, progress=False)
    assert r["delta"] == 0.0 and r["p_value"] == 1.0
    assert r["ci_low"] == r["ci_high"] == 0.0 and r["score_a"] == r["score_b"]


@pytest.mark.parametrize("metric", ["bleu", "chrf", "ter"])
def test_bootstrap_reference_beats_bad_system(refs, metric):
    bad = [drop_every(r, 2) for r in refs]
    r = M.paired_bootstrap(refs, bad, list(refs), metric=metric, n_samples=300, progress=False)
    assert r["p_value"] < 0.05
    assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    if metric == "ter":  # lower is better: the reference has TER 0
        assert r["score_b"] == 0.0 and r["delta"] < 0
    else:
        assert r["score_b"] == pytest.approx(100.0) and r["delta"] > 0
    # the other way round, b is the bad system: p must be high
    assert M.paired_bootstrap(refs, list(refs), bad, metric=metric, n_samples=300, progress=False)["p_value"] > 0.95


def test_bootstrap_scores_match_corpus_scores(refs, hyps):
    bad = [drop_every(r, 2) for r in refs]
    r = M.paired_bootstrap(refs, bad, hyps, n_samples=50, seed=1, progress=False)
    assert r["score_a"] == pytest.approx(M.corpus_scores(bad, refs)["bleu"])
    assert r["score_b"] == pytest.approx(M.corpus_scores(hyps, refs)["bleu"])
    assert r == M.paired_bootstrap(refs, bad, hyps, n_samples=50, seed=1, progress=False)  # seeded


def test_bootstrap_agrees_with_sacrebleu_on_which_side_of_005(refs):
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    base = [drop_every(r, 5) for r in refs]
    slightly = [drop_every(r, 6) if i % 50 == 0 else drop_every(r, 4) if i % 50 == 25 else h
                for i, (r, h) in enumerate(zip(refs, base))]
    worse = [drop_every(r, 4) if i % 10 == 5 else h for i, (r, h) in enumerate(zip(refs, base))]
    for b, significant in ((slightly, False), (worse, True)):
        # sacrebleu's test is two-sided on |delta|; ours asks "is the better one better", so put it second
        a_, b_ = (b, base) if significant else (base, b)
        ours = M.paired_bootstrap(refs, a_, b_, n_samples=1000, progress=False)["p_value"]
        _, scores = PairedTest([("a", a_), ("b", b_)], {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=1000)()
        theirs = scores["BLEU"][1].p_value
        assert (ours < 0.05) == (theirs < 0.05) == significant, (ours, theirs)


def test_bootstrap_bad_arguments(refs):
    with pytest.raises(ConfigError, match="metric"):
        M.paired_bootstrap(refs, refs, refs, metric="meteor")
    with pytest.raises(ConfigError, match="n_samples"):
        M.paired_bootstrap(refs, refs, refs, n_samples=0)
    with pytest.raises(DataError, match="hyps_b"):
        M.paired_bootstrap(refs, refs, refs[:3])


def test_bleu_bands():
    bands = M.bleu_bands()
    assert list(bands.columns) == ["bleu", "low", "high", "interpretation"]
    assert len(bands) == 7 and bands["low"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert M.bleu_band(5) == "Almost useless"
    assert M.bleu_band(35) == "Understandable to good translations"
    assert M.bleu_band(75) == "Quality often better than human"
