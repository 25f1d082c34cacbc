"""Translation metrics: SacreBLEU's BLEU, chrF and TER, ROUGE, BLEU's internals and paired bootstrap tests.

All scores are on a 0-100 scale. BLEU, chrF and TER are SacreBLEU's defaults (BLEU: 13a tokenizer,
mixed case, exponential smoothing; chrF2 with character order 6; TER without normalization), so they
equal the ``sacrebleu`` command line on the same text; each comes with its signature string.

ROUGE-1/2/L/Lsum are ``rouge_score``'s per-sentence F1, averaged over sentences and multiplied by 100
(a deterministic mean, not the bootstrap aggregate). Two choices differ from the ``rouge_score``
defaults, both because the target is German:

* no stemming: its stemmer is the English Porter stemmer and would mangle German words;
* a Unicode tokenizer (lowercase, ``\\w+`` runs): the stock tokenizer keeps only ``[a-z0-9]``, so it
  splits "Mädchen" into "m" + "dchen" and drops "ß" ("rouge_tokenizer='ascii'" restores it).

ROUGE-Lsum splits a segment into sentences on newlines; Multi30k segments are single lines, so it
equals ROUGE-L here.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd
from sacrebleu.metrics import BLEU, CHRF, TER

from .errors import ConfigError, DataError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class UnicodeTokenizer:
    """ROUGE tokenizer for any script: lowercase, then runs of word characters (``\\w+``)."""
    _word = re.compile(r"\w+")

    def tokenize(self, text: str) -> list[str]:
        return self._word.findall(text.lower())


def _check(hyps: Sequence[str], refs: Sequence[str], what: str = "hyps") -> tuple[list[str], list[str]]:
    """Both lists of strings, same non-zero length; else a DataError naming the problem."""
    if isinstance(hyps, str) or isinstance(refs, str):
        raise DataError(f"{what} and refs must be lists of sentences, not a single string")
    hyps, refs = list(hyps), list(refs)
    if not hyps:
        raise DataError(f"{what} is empty: nothing to score")
    if len(hyps) != len(refs):
        raise DataError(f"{what} has {len(hyps)} sentences but refs has {len(refs)}; they must be aligned")
    for name, seq in ((what, hyps), ("refs", refs)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise DataError(f"{name}[{i}] is {type(s).__name__}, not text; use '' for an empty translation")
    return hyps, refs


def _rouge_scorer(tokenizer="unicode"):
    from rouge_score import rouge_scorer

    tok = UnicodeTokenizer() if tokenizer == "unicode" else None if tokenizer == "ascii" else tokenizer
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=tok)


def rouge_scores(hyps: Sequence[str], refs: Sequence[str], tokenizer="unicode") -> dict[str, float]:
    """Mean per-sentence ROUGE F1 x 100 for rouge1, rouge2, rougeL, rougeLsum (see the module notes)."""
    hyps, refs = _check(hyps, refs)
    scorer = _rouge_scorer(tokenizer)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for h, r in zip(hyps, refs):
        for k, s in scorer.score(r, h).items():  # score(target, prediction)
            sums[k] += s.fmeasure
    return {k: 100 * v / len(hyps) for k, v in sums.items()}


def corpus_scores(hyps: Sequence[str], refs: Sequence[str], rouge_tokenizer="unicode") -> dict:
    """Corpus BLEU, chrF, TER (with SacreBLEU signatures), mean ROUGE F1, and BLEU's brevity penalty
    and lengths (``sys_len``/``ref_len`` in 13a tokens), for one reference per hypothesis."""
    hyps, refs = _check(hyps, refs)
    bleu_m, chrf_m, ter_m = BLEU(), CHRF(), TER()
    bleu = bleu_m.corpus_score(hyps, [refs])
    chrf = chrf_m.corpus_score(hyps, [refs])
    ter = ter_m.corpus_score(hyps, [refs])
    return {
        "bleu": bleu.score, "chrf": chrf.score, "ter": ter.score,
        **rouge_scores(hyps, refs, rouge_tokenizer),
        "bleu_signature": str(bleu_m.get_signature()), "chrf_signature": str(chrf_m.get_signature()),
        "ter_signature": str(ter_m.get_signature()),
        "bp": bleu.bp, "sys_len": bleu.sys_len, "ref_len": bleu.ref_len, "n": len(hyps),
    }


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """BLEU's brevity penalty: 1 if the output is at least as long as the reference, else exp(1 - r/c)."""
    if hyp_len < 0 or ref_len < 0:
        raise ValueError(f"lengths must be non-negative, got hyp_len={hyp_len}, ref_len={ref_len}")
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0


def bleu_breakdown(hyps: Sequence[str], refs: Sequence[str]) -> pd.DataFrame:
    """Corpus BLEU's n-gram table for n = 1..4: clipped matches, totals, precision (matches/totals x 100,
    NaN when there is no n-gram) and the smoothed precision SacreBLEU puts into the geometric mean."""
    hyps, refs = _check(hyps, refs)
    s = BLEU().corpus_score(hyps, [refs])
    return pd.DataFrame({
        "n": range(1, len(s.counts) + 1),
        "matches": s.counts,
        "totals": s.totals,
        "precision": [100 * m / t if t else float("nan") for m, t in zip(s.counts, s.totals)],
        "smoothed_precision": s.precisions,
    })


def sentence_scores(hyps: Sequence[str], refs: Sequence[str]) -> pd.DataFrame:
    """Per-sentence BLEU (exponential smoothing, effective order, as ``sacrebleu.sentence_bleu``), chrF
    and TER, with the hypothesis and reference, one row per sentence."""
    hyps, refs = _check(hyps, refs)
    bleu_m, chrf_m, ter_m = BLEU(effective_order=True), CHRF(), TER()
    rows = [{"hyp": h, "ref": r,
             "bleu": bleu_m.sentence_score(h, [r]).score,
             "chrf": chrf_m.sentence_score(h, [r]).score,
             "ter": ter_m.sentence_score(h, [r]).score} for h, r in zip(hyps, refs)]
    return pd.DataFrame(rows, columns=["hyp", "ref", "bleu", "chrf", "ter"])


_METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
_LOWER_IS_BETTER = {"ter"}


def paired_bootstrap(refs: Sequence[str], hyps_a: Sequence[str], hyps_b: Sequence[str], metric: str = "bleu",
                     n_samples: int = 1000, seed: int | None = 12345, progress: bool = True) -> dict:
    """Paired bootstrap resampling (Koehn 2004): is system ``b`` better than system ``a``?

    Draws ``n_samples`` resamples of the sentence indices (with replacement), the same for both systems,
    and recomputes the corpus metric of each from summed per-sentence sufficient statistics (BLEU:
    lengths, n-gram matches and totals), so a resample costs a sum, not a re-tokenization.

    Returns ``delta`` = score(b) - score(a) on the full set, ``p_value`` = the share of resamples in which
    b is *not* better than a (one-sided; "better" is higher BLEU/chrF, lower TER; 0.0 means no resample,
    i.e. p < 1/n_samples), the 95% percentile interval ``ci_low``/``ci_high`` of the resampled delta,
    ``score_a``, ``score_b``, ``metric``, ``n_samples``, ``seed`` and ``n`` (sentences).
    """
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    hyps_a, refs = _check(hyps_a, refs, "hyps_a")
    hyps_b, _ = _check(hyps_b, refs, "hyps_b")
    from tqdm.auto import tqdm

    m = _METRICS[metric]()
    stats_a = np.asarray(m._extract_corpus_statistics(hyps_a, [refs]), dtype=np.float64)
    stats_b = np.asarray(m._extract_corpus_statistics(hyps_b, [refs]), dtype=np.float64)

    def score(row: np.ndarray) -> float:
        vals = row.tolist() if metric == "ter" else [int(round(v)) for v in row]
        return float(m._compute_score_from_stats(vals).score)

    score_a, score_b = score(stats_a.sum(0)), score(stats_b.sum(0))
    n = len(refs)
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_samples)
    for i in tqdm(range(n_samples), desc=f"paired bootstrap ({metric})", disable=not progress, leave=False):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        deltas[i] = score(counts @ stats_b) - score(counts @ stats_a)
    gain = -deltas if metric in _LOWER_IS_BETTER else deltas
    return {
        "metric": metric, "delta": score_b - score_a, "p_value": float(np.mean(gain <= 0)),
        "ci_low": float(np.percentile(deltas, 2.5)), "ci_high": float(np.percentile(deltas, 97.5)),
        "score_a": score_a, "score_b": score_b, "n_samples": n_samples, "seed": seed, "n": n,
    }


BLEU_BANDS = [  # (label, low, high, interpretation); a score s falls in the band with low <= s < high
    ("< 10", 0, 10, "Almost useless"),
    ("10-19", 10, 20, "Hard to get the gist"),
    ("20-29", 20, 30, "The gist is clear, but has significant grammatical errors"),
    ("30-40", 30, 40, "Understandable to good translations"),
    ("40-50", 40, 50, "High quality translations"),
    ("50-60", 50, 60, "Very high quality, adequate, and fluent translations"),
    ("> 60", 60, 100, "Quality often better than human"),
]


def bleu_bands() -> pd.DataFrame:
    """The usual rough reading of corpus BLEU (Google Cloud Translation's guide): one row per band."""
    return pd.DataFrame(BLEU_BANDS, columns=["bleu", "low", "high", "interpretation"])


def bleu_band(score: float) -> str:
    """The interpretation of one BLEU score (0-100) from :func:`bleu_bands`."""
    for _, _, hi, text in BLEU_BANDS:
        if score < hi:
            return text
    return BLEU_BANDS[-1][3]
