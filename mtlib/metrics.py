"""Translation metrics: SacreBLEU's BLEU, chrF and TER, ROUGE, BLEU's internals, and significance tests
(SacreBLEU's two-sided paired bootstrap, Holm's correction, verdicts, signatures).

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

import functools
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


def sentence_metric(hyps: Sequence[str], refs: Sequence[str], metric: str = "chrf") -> np.ndarray:
    """One metric per sentence: BLEU (exponential smoothing, effective order, as ``sacrebleu.sentence_bleu``),
    chrF or TER."""
    if metric not in ("bleu", "chrf", "ter"):
        raise ConfigError(f"sentence_metric: metric must be 'bleu', 'chrf' or 'ter', got {metric!r}")
    hyps, refs = _check(hyps, refs)
    scorer = BLEU(effective_order=True) if metric == "bleu" else CHRF() if metric == "chrf" else TER()
    # what scorer.sentence_score(h, [r]) computes, from the memoised statistics the significance tests share
    stats = _sentence_statistics(metric, tuple(hyps), tuple(refs))
    return np.array([scorer._aggregate_and_compute([s]).score for s in stats], dtype=float)


def sentence_scores(hyps: Sequence[str], refs: Sequence[str]) -> pd.DataFrame:
    """Per-sentence BLEU, chrF and TER (:func:`sentence_metric`), with the hypothesis and reference, one row
    per sentence."""
    hyps, refs = _check(hyps, refs)
    table = pd.DataFrame({"hyp": hyps, "ref": refs})
    for metric in ("bleu", "chrf", "ter"):
        table[metric] = sentence_metric(hyps, refs, metric)
    return table


_METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
_LOWER_IS_BETTER = {"ter"}
METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER"}
VERDICTS = ("better", "worse", "no significant difference")


@functools.lru_cache(maxsize=16)  # four test sets x three metrics fit
def _scorer(metric: str, refs: tuple):
    """A SacreBLEU metric holding ``refs`` preprocessed (n-grams, tokens), shared by every system scored on them."""
    return _METRICS[metric](references=[list(refs)])


@functools.lru_cache(maxsize=64)  # three systems x four test sets x three metrics fit
def _sentence_statistics(metric: str, hyps: tuple, refs: tuple) -> tuple:
    """Per-sentence sufficient statistics of ``hyps`` against ``refs``, as SacreBLEU extracts them; memoised, so
    a system compared with two others is scored once (TER's shift search is slow Python), and its sentence
    scores (:func:`sentence_metric`) cost no second extraction."""
    return tuple(_scorer(metric, refs)._extract_corpus_statistics(list(hyps), None))


def signatures(metrics: Sequence[str] = ("bleu", "chrf", "ter"), n_bootstrap: int | None = None,
               seed: int | None = 12345) -> dict[str, str]:
    """SacreBLEU's signature of each metric as :func:`corpus_scores` computes it, keyed by display name
    (``BLEU``, ``chrF``, ``TER``).

    With ``n_bootstrap`` the signature also records the paired bootstrap (``bs:<n>|seed:<seed>``), as
    ``sacrebleu --paired-bs`` prints it; a score table should be shown with its signatures.
    """
    out = {}
    for metric in metrics:
        if metric not in _METRICS:
            raise ConfigError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        m = _METRICS[metric]()
        m.corpus_score(["x"], [["x"]])  # one reference per sentence: the signature's nrefs:1
        sig = m.get_signature()
        if n_bootstrap is not None:
            sig.update("seed", str(seed).lower())
            sig.update("bs", n_bootstrap)
        out[METRIC_NAMES[metric]] = str(sig)
    return out


def _estimate_ci(scores: np.ndarray) -> tuple[float, float]:
    """SacreBLEU's bootstrap estimate (``significance.estimate_ci``), step by step and in the scores' own
    dtype, so that it rounds the same: the mean of the resampled scores and half the width of the interval
    between the (n//40)-th smallest and the (n//40)-th largest of them (95%)."""
    scores = np.sort(scores)
    k = len(scores) // 40
    return float(scores.mean()), float(0.5 * (scores[len(scores) - k - 1] - scores[k]))


def _ci_bounds(values: np.ndarray) -> tuple[float, float]:
    """The 95% interval of bootstrap values, with SacreBLEU's indices (n//40 from either end)."""
    values = np.sort(values)
    k = len(values) // 40
    return float(values[k]), float(values[len(values) - k - 1])


def _resample_sums(stats: np.ndarray, idxs: np.ndarray) -> np.ndarray:
    """``stats[idxs[i]].sum(0)`` for every resample ``i`` (float32, SacreBLEU's sums).

    Counts of the sentences each resample drew, times the statistics: one matrix product instead of
    ``len(idxs)`` gathers. The statistics are counts: integers, and while ``n`` times the largest stays below
    2**24 every partial sum is exact in float32 whatever the order, so the product equals the row-by-row sum
    bit for bit. Other statistics (TER's average length over several references) are summed row by row."""
    n_samples, n = idxs.shape
    if not (np.array_equal(stats, np.round(stats)) and n * np.abs(stats).max(initial=0) < 2 ** 24):
        return np.stack([stats[row].sum(0) for row in idxs])
    offsets = (np.arange(n_samples) * n)[:, None]
    counts = np.bincount((idxs + offsets).ravel(), minlength=n_samples * n).reshape(n_samples, n)
    return (counts.astype(np.float64) @ stats.astype(np.float64)).astype(np.float32)


def paired_bootstrap(refs: Sequence[str], hyps_a: Sequence[str], hyps_b: Sequence[str], metric: str = "bleu",
                     n_samples: int = 1000, seed: int | None = 12345, progress: bool = True) -> dict:
    """Paired bootstrap resampling test of system ``b`` against the baseline ``a``, exactly as
    ``sacrebleu REF -i A B --paired-bs`` computes it (Koehn 2004; Moses' ``bootstrap-hypothesis-difference-
    significance.pl``); two-sided.

    * One ``numpy.random.default_rng(seed)`` draws an ``(n_samples, n)`` matrix of sentence indices with
      replacement (``rng.choice``); both systems are scored on the same resamples, and a call per metric
      with the same seed draws the same matrix, as the command line does for its metrics. ``seed=None``
      takes fresh entropy from the OS (the command line's ``SACREBLEU_SEED=none``).
    * A resample's score is recomputed from the summed per-sentence sufficient statistics (float32, as
      SacreBLEU), so it costs a sum, not a re-tokenization.
    * The statistic is the absolute difference: ``p = (c + 1) / (n_samples + 1)``, where ``c`` counts
      the resamples whose centred absolute difference ``|b_i - a_i| - mean_j |b_j - a_j|`` exceeds the
      observed ``|b - a|``. So ``p`` is never 0 (at least ``1 / (n_samples + 1)``), and a system that is
      clearly *worse* gets a small ``p`` too: the direction is the sign of ``delta`` (see :func:`verdict`).

    Returns ``metric``, ``score_a``, ``score_b`` (full test set), ``delta`` = score(b) - score(a) (for
    TER lower is better, so a negative delta is an improvement), ``p_value``, ``ci_low``/``ci_high`` (95%
    interval of the resampled delta, SacreBLEU's n//40 indices), ``mean_a``/``ci_a`` and ``mean_b``/``ci_b``
    (each system's bootstrap mean and 95% half-width, the command line's ``μ ± 95% CI``), ``verdict`` at
    the 5% level (unadjusted), ``signature`` (with ``bs`` and ``seed``), ``n_samples``, ``seed``, ``n``.

    One deviation: SacreBLEU 2.6 treats ``SACREBLEU_SEED=0`` as "no seed" in the paired test (an
    ``if seed`` test); here 0 is an ordinary seed.
    """
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    hyps_a, refs = _check(hyps_a, refs, "hyps_a")
    hyps_b, _ = _check(hyps_b, refs, "hyps_b")
    from tqdm.auto import tqdm

    m = _METRICS[metric]()
    raw_a = list(_sentence_statistics(metric, tuple(hyps_a), tuple(refs)))
    raw_b = list(_sentence_statistics(metric, tuple(hyps_b), tuple(refs)))
    score_a = float(m._aggregate_and_compute(raw_a).score)
    score_b = float(m._aggregate_and_compute(raw_b).score)
    stats_a, stats_b = np.array(raw_a, dtype="float32"), np.array(raw_b, dtype="float32")
    n = len(refs)
    idxs = np.random.default_rng(seed).choice(n, size=(n_samples, n), replace=True)
    sums_a, sums_b = _resample_sums(stats_a, idxs), _resample_sums(stats_b, idxs)
    scores_a, scores_b = [], []
    for i in tqdm(range(n_samples), desc=f"paired bootstrap ({metric})", disable=not progress, leave=False):
        scores_a.append(m._compute_score_from_stats(sums_a[i]).score)
        scores_b.append(m._compute_score_from_stats(sums_b[i]).score)
    # keep the scores' own dtype (chrF computes in float32 from float32 statistics): SacreBLEU's rounding
    scores_a, scores_b = np.array(scores_a), np.array(scores_b)
    sample_diffs = np.abs(scores_b - scores_a)
    centred = sample_diffs - sample_diffs.mean()
    p_value = (int(np.sum(centred > abs(score_b - score_a))) + 1) / (n_samples + 1)
    ci_low, ci_high = _ci_bounds(scores_b - scores_a)
    mean_a, ci_a = _estimate_ci(scores_a)
    mean_b, ci_b = _estimate_ci(scores_b)
    delta = score_b - score_a
    return {
        "metric": metric, "score_a": score_a, "score_b": score_b, "delta": delta, "p_value": p_value,
        "ci_low": ci_low, "ci_high": ci_high, "mean_a": mean_a, "ci_a": ci_a, "mean_b": mean_b, "ci_b": ci_b,
        "verdict": verdict(delta, p_value, metric),
        "signature": signatures((metric,), n_samples, seed)[METRIC_NAMES[metric]],
        "n_samples": n_samples, "seed": seed, "n": n,
    }


def verdict(delta: float, p_value: float, metric: str = "bleu", alpha: float = 0.05) -> str:
    """``"better"`` or ``"worse"`` (system b against a) when ``p_value < alpha``, else ``"no significant
    difference"``. The direction is the sign of ``delta`` = b - a, reversed for TER (lower is better)."""
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if not p_value < alpha or delta == 0:
        return VERDICTS[2]
    gain = -delta if metric in _LOWER_IS_BETTER else delta
    return VERDICTS[0] if gain > 0 else VERDICTS[1]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate).

    Sorted ascending, the i-th smallest (i = 1..m) becomes ``min(1, max_{j<=i} (m - j + 1) p_(j))``;
    returned in the input order. Compare each adjusted p with alpha as usual.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise DataError(f"holm needs a flat list of p-values, got shape {p.shape}")
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise DataError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


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
