"""mtlib.metrics against the sacrebleu command line, rouge_score, a worked BLEU example and sacrebleu's
paired bootstrap (``--paired-bs``), Holm's correction."""
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    # SacreBLEU's statistic counts resamples *above* the observed |delta| = 0: none, so p = 1 / (n + 1),
    # as the command line prints; the verdict still says there is no difference
    assert r["delta"] == 0.0 and r["p_value"] == pytest.approx(1 / 201)
    assert r["verdict"] == "no significant difference"
    assert r["ci_low"] == r["ci_high"] == 0.0 and r["score_a"] == r["score_b"]


@pytest.mark.parametrize("metric", ["bleu", "chrf", "ter"])
def test_bootstrap_is_two_sided_with_verdicts(refs, metric):
    bad = [drop_every(r, 2) for r in refs]
    r = M.paired_bootstrap(refs, bad, list(refs), metric=metric, n_samples=300, progress=False)
    assert r["p_value"] == pytest.approx(1 / 301) and r["verdict"] == "better"
    assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    if metric == "ter":  # lower is better: the reference has TER 0
        assert r["score_b"] == 0.0 and r["delta"] < 0 and r["ci_high"] < 0
    else:
        assert r["score_b"] == pytest.approx(100.0) and r["delta"] > 0 and r["ci_low"] > 0
    # the other way round, b is the bad system: two-sided, so p is just as small, and the verdict is "worse"
    worse = M.paired_bootstrap(refs, list(refs), bad, metric=metric, n_samples=300, progress=False)
    assert worse["p_value"] == pytest.approx(1 / 301) and worse["verdict"] == "worse"
    assert worse["delta"] == pytest.approx(-r["delta"])


def test_bootstrap_scores_match_corpus_scores(refs, hyps):
    bad = [drop_every(r, 2) for r in refs]
    r = M.paired_bootstrap(refs, bad, hyps, n_samples=50, seed=1, progress=False)
    assert r["score_a"] == pytest.approx(M.corpus_scores(bad, refs)["bleu"])
    assert r["score_b"] == pytest.approx(M.corpus_scores(hyps, refs)["bleu"])
    assert r == M.paired_bootstrap(refs, bad, hyps, n_samples=50, seed=1, progress=False)  # seeded
    assert r["signature"].startswith("nrefs:1|bs:50|seed:1|case:mixed|eff:no|tok:13a")


@pytest.fixture(scope="module")
def refs300(raw_dir):
    text = gzip.decompress((raw_dir / "test_2016_flickr.de.gz").read_bytes()).decode("utf-8")
    return text.split("\n")[:300]


def _paired_cli(tmp_path, refs, systems, n, seed):
    """``sacrebleu REF -i A B ... -m bleu chrf ter --paired-bs`` in text format (its JSON writer crashes on
    float32 in 2.6.0): {system: {metric: (score, mean, ci, p or None)}} and {metric: signature}."""
    import os
    import re

    (tmp_path / "ref.de").write_text("\n".join(refs) + "\n", encoding="utf-8")
    files = []
    for name, hyps in systems.items():
        (tmp_path / name).write_text("\n".join(hyps) + "\n", encoding="utf-8")
        files.append(str(tmp_path / name))
    cli = Path(sys.executable).parent / "sacrebleu"
    out = subprocess.run([str(cli), str(tmp_path / "ref.de"), "-i", *files, "-m", "bleu", "chrf", "ter",
                          "--paired-bs", "--paired-bs-n", str(n), "-f", "text", "-w", "4", "--no-color"],
                         capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "SACREBLEU_SEED": str(seed)}).stdout
    table, current = {}, None
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")] if line.startswith("│") else None
        if not cells or cells[0] == "System":
            continue
        if cells[0]:  # a system's row: score (mean ± ci) per metric
            current = Path(cells[0].removeprefix("Baseline: ")).name
            table[current] = {}
            for metric, cell in zip(("BLEU", "chrF", "TER"), cells[1:]):
                score, mean, ci = re.fullmatch(r"(\S+) \((\S+) ± (\S+)\)", cell).groups()
                table[current][metric] = [score, mean, ci, None]
        else:  # the p-values under it
            for metric, cell in zip(("BLEU", "chrF", "TER"), cells[1:]):
                table[current][metric][3] = re.fullmatch(r"\(p = (\S+)\)\*?", cell).group(1)
    sigs = dict(re.findall(r"^ - (BLEU|chrF2|TER)\s+(\S+)$", out, flags=re.M))
    return table, {M.METRIC_NAMES[k]: sigs[n] for k, n in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER"))}


@pytest.mark.parametrize("seed", [12345, 7])
def test_bootstrap_equals_the_sacrebleu_cli(tmp_path, refs300, seed):
    """Scores, bootstrap means and CIs, p-values and signatures of ``sacrebleu --paired-bs`` (same seed, same
    number of resamples), for BLEU, chrF and TER, three systems against one baseline."""
    refs = refs300
    base = [drop_every(r, 4) if i % 2 else r for i, r in enumerate(refs)]
    systems = {
        "better": [r if i % 4 == 1 else h for i, (r, h) in enumerate(zip(refs, base))],
        "close": [drop_every(r, 5) if i % 40 == 1 else h for i, (r, h) in enumerate(zip(refs, base))],
        "worse": [drop_every(r, 2) if i % 3 == 0 else h for i, (r, h) in enumerate(zip(refs, base))],
    }
    n = 500
    cli, cli_sigs = _paired_cli(tmp_path, refs, {"base": base, **systems}, n, seed)
    assert set(cli) == {"base", *systems}
    verdicts = set()
    for name, hyps in systems.items():
        for metric in ("bleu", "chrf", "ter"):
            r = M.paired_bootstrap(refs, base, hyps, metric=metric, n_samples=n, seed=seed, progress=False)
            label = M.METRIC_NAMES[metric]
            assert [f"{r[k]:.4f}" for k in ("score_a", "mean_a", "ci_a")] == cli["base"][label][:3], (name, metric)
            assert [f"{r[k]:.4f}" for k in ("score_b", "mean_b", "ci_b", "p_value")] == cli[name][label], (name, metric)
            assert r["signature"] == cli_sigs[label]
            verdicts.add((name, metric, r["verdict"]))
    # the fixture covers all three verdicts; TER's direction is reversed (a lower TER is "better")
    assert {("better", m, "better") for m in ("bleu", "chrf", "ter")} <= verdicts
    assert {("worse", m, "worse") for m in ("bleu", "chrf", "ter")} <= verdicts
    assert any(v == "no significant difference" for _, _, v in verdicts)


def test_verdict_directions():
    assert M.verdict(+1.0, 0.01, "bleu") == "better" and M.verdict(-1.0, 0.01, "chrf") == "worse"
    assert M.verdict(-1.0, 0.01, "ter") == "better" and M.verdict(+1.0, 0.01, "ter") == "worse"
    assert M.verdict(+5.0, 0.05, "bleu") == "no significant difference"  # p must be below alpha
    assert M.verdict(0.0, 0.001, "bleu") == "no significant difference"
    assert M.verdict(+1.0, 0.08, "bleu", alpha=0.1) == "better"
    with pytest.raises(ConfigError, match="metric"):
        M.verdict(1.0, 0.01, "meteor")


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4 x 0.01, 3 x 0.03, max(0.09, 2 x 0.04), max(0.09, 1 x 0.5)
    assert M.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert M.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # step-down: never below an earlier one
    assert M.holm([0.4, 0.4, 0.4]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    assert M.holm([0.02]) == pytest.approx([0.02]) and len(M.holm([])) == 0
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        M.holm([0.1, 1.5])


def test_signatures():
    sigs = M.signatures()
    assert list(sigs) == ["BLEU", "chrF", "TER"]
    assert sigs["BLEU"] == M.corpus_scores(["ein Hund ."], ["ein Hund ."])["bleu_signature"]
    assert "nc:6" in sigs["chrF"] and "tok:tercom" in sigs["TER"] and "bs:" not in sigs["BLEU"]
    assert M.signatures(("ter",), n_bootstrap=1000)["TER"].startswith("nrefs:1|bs:1000|seed:12345|")
    assert "seed:none" in M.signatures(("bleu",), n_bootstrap=10, seed=None)["BLEU"]


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


def test_sentence_metric_scores_one_metric_as_sacrebleu_does_sentence_by_sentence():
    import sacrebleu
    hyps = ["Ein Hund rennt im Park.", "Zwei Männer", "xyz", "", "   ", "Ein Hund .", "Hund", "Eine Katze."]
    refs = ["Ein Hund läuft im Park.", "Zwei Männer spielen.", "Eine Katze.", "Ein Hund.", "Ein Hund.", "Ein Hund.",
            "Ein Hund rennt schnell über die Wiese.", ""]  # empty, blank, tokenized, short hypotheses; an empty reference
    expected = {"bleu": [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)],
                "chrf": [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hyps, refs)],
                "ter": [sacrebleu.sentence_ter(h, [r]).score for h, r in zip(hyps, refs)]}
    for metric, values in expected.items():
        assert M.sentence_metric(hyps, refs, metric).tolist() == values, metric
        assert M.sentence_scores(hyps, refs)[metric].tolist() == values, metric
    with pytest.raises(ConfigError, match="'bleu', 'chrf' or 'ter'"):
        M.sentence_metric(hyps, refs, "meteor")


def test_a_system_compared_twice_is_scored_once(monkeypatch):
    """significance() compares each system with two others: its per-sentence statistics are extracted once."""
    from sacrebleu.metrics import TER
    from mtlib import metrics
    metrics._sentence_statistics.cache_clear()
    calls = []
    real = TER._extract_corpus_statistics

    def spy(self, hyps, refs):
        calls.append(tuple(hyps))
        return real(self, hyps, refs)
    monkeypatch.setattr(TER, "_extract_corpus_statistics", spy)
    refs = ["a dog runs in the park", "two men talk", "a girl climbs"]
    base, sft, grpo = (["dog park", "men", "girl"], ["a dog runs", "two men", "a girl climbs"],
                       ["a dog runs in a park", "two men talk", "girl climbs"])
    first = metrics.paired_bootstrap(refs, base, sft, metric="ter", n_samples=50, progress=False)
    metrics.paired_bootstrap(refs, base, grpo, metric="ter", n_samples=50, progress=False)
    again = metrics.paired_bootstrap(refs, base, sft, metric="ter", n_samples=50, progress=False)
    assert sorted(c for c in calls if len(c) == 3) == sorted({tuple(base), tuple(sft), tuple(grpo)})
    assert again == first


def test_sentence_scores_reuse_the_significance_statistics(monkeypatch):
    """After a paired bootstrap, the same system's sentence scores cost no second extraction, and the references
    are preprocessed once for every system scored on them."""
    from sacrebleu.metrics import CHRF
    from mtlib import metrics
    metrics._sentence_statistics.cache_clear()
    metrics._scorer.cache_clear()
    extracted, cached_refs = [], []
    real_extract, real_cache = CHRF._extract_corpus_statistics, CHRF._cache_references
    monkeypatch.setattr(CHRF, "_extract_corpus_statistics",
                        lambda self, hyps, refs: extracted.append(tuple(hyps)) or real_extract(self, hyps, refs))
    monkeypatch.setattr(CHRF, "_cache_references", lambda self, refs: cached_refs.append(len(refs[0])) or real_cache(self, refs))
    refs = ["a dog runs in the park", "two men talk", "a girl climbs"]
    base, sft = ["dog park", "men", "girl"], ["a dog runs", "two men", "a girl climbs"]
    metrics.paired_bootstrap(refs, base, sft, metric="chrf", n_samples=20, progress=False)
    ours = [h for h in extracted if len(h) == 3]  # signatures() scores one "x" of its own
    assert sorted(ours) == sorted([tuple(base), tuple(sft)]) and cached_refs.count(3) == 1
    scores = metrics.sentence_metric(sft, refs, "chrf")
    assert len([h for h in extracted if len(h) == 3]) == 2  # nothing extracted again
    assert scores.tolist() == [CHRF().sentence_score(h, [r]).score for h, r in zip(sft, refs)]


@pytest.mark.parametrize("kind", ["counts", "fractions", "huge counts"])
def test_resample_sums_equal_the_row_by_row_sums(kind):
    """The bootstrap's summed statistics equal ``stats[idx].sum(0)`` bit for bit: the matrix product for integer
    counts, the row-by-row sum for anything else (fractions, or counts whose sums float32 would round)."""
    from mtlib.metrics import _resample_sums
    rng = np.random.default_rng(0)
    stats = rng.integers(0, 60, size=(300, 18)).astype("float32")
    if kind == "fractions":
        stats = stats + rng.random(stats.shape, dtype="float32") / 3
    if kind == "huge counts":  # column sums below 2**24, resample sums above it: float32 rounds them
        stats = (rng.integers(0, 16500, size=(1000, 3)) * 2 + 1).astype("float32")
    idxs = rng.choice(len(stats), size=(40, len(stats)), replace=True)
    expected = np.stack([stats[row].sum(0) for row in idxs])
    got = _resample_sums(stats, idxs)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
