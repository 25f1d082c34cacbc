"""Chapter 5's discussion, written from the runs: the best system per test set and by how much, significance,
BLEU bands, length ratio and untranslated copies, sentence-level wins and losses, and the limitations.

Every function reads :func:`mtlib.results.load_runs`' table (the newest evaluation of each stage and test set,
as :func:`mtlib.chapter.latest_scores` picks it) and the translations stored with the runs, and returns a
DataFrame or a Markdown string. The prose names languages from their codes (:func:`mtlib.prompts.language_name`),
so it reads the same for any language pair.
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import chapter, metrics, plots, results
from .errors import DataError
from .prompts import language_name

PAIRS = (("base", "sft"), ("base", "grpo"), ("sft", "grpo"))  # (baseline, system), as chapter.significance
STAGES = ("base", "sft", "grpo")
SYSTEM_NAMES = {"base": "base model", "sft": "SFT", "grpo": "GRPO"}
MAIN_SPLIT = "test"
COPY_THRESHOLD = 0.9  # character similarity (difflib ratio) from which an output counts as a copy of its source
TIE_MARGIN = 1.0      # sentence-level score points within which two systems tie on a sentence
SCORES = ("bleu", "chrf", "ter")


# -- names and order ------------------------------------------------------------------------------------------

def system_name(stage: str) -> str:
    """A stage as the reader knows it: ``sft`` -> "SFT", ``base`` -> "base model"."""
    return SYSTEM_NAMES.get(stage, stage)


def _split_key(split: str):
    return (split != MAIN_SPLIT, split)


def _stage_key(stage: str):
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), stage)


def _evaluations(runs) -> pd.DataFrame:
    """The newest evaluation of each stage and test set (``chapter.newest_evaluations``); empty when none."""
    if runs is None or len(runs) == 0 or runs["split"].isna().all():
        return pd.DataFrame()
    return chapter.newest_evaluations(runs[runs["split"].notna()])


def languages(runs) -> tuple[str, str] | None:
    """The (source, target) language codes of the runs' evaluations (their config.json), the most common pair;
    None when no run says."""
    pairs = Counter()
    for path in ([] if runs is None or len(runs) == 0 else runs["path"].dropna().unique()):
        try:
            config = results.read_json(Path(path) / "config.json") or {}
        except DataError:
            continue
        if config.get("src_lang") and config.get("tgt_lang"):
            pairs[(config["src_lang"], config["tgt_lang"])] += 1
    return pairs.most_common(1)[0][0] if pairs else None


def newest_translations(runs) -> dict:
    """{(stage, split): DataFrame[source, reference, hypothesis]} of the newest evaluation of each stage and
    test set, read from the runs folder (an evaluation without stored translations is left out)."""
    out = {}
    for (stage, split), row in _evaluations(runs).iterrows():
        if row.get("path") and (Path(row["path"]) / "translations.jsonl").exists():
            table = results.read_translations(row["path"])
            if len(table):
                out[(stage, split)] = table
    return out


# -- corpus-level figures ------------------------------------------------------------------------------------

def length_ratio(hyps, refs) -> float:
    """Total hypothesis length over total reference length, in 13a tokens (BLEU's ``sys_len / ref_len``)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    tok = Tokenizer13a()
    ref_len = sum(len(tok(r).split()) for r in refs)
    return sum(len(tok(h).split()) for h in hyps) / ref_len if ref_len else float("nan")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).casefold()).split())


def is_copy(hypothesis: str, source: str, threshold: float = COPY_THRESHOLD) -> bool:
    """Whether ``hypothesis`` is the source left untranslated: lowercased and without punctuation, the two are
    identical or their characters match at least ``threshold`` (``difflib`` ratio). An empty output is no copy."""
    a, b = _normalise(hypothesis), _normalise(source)
    if not a or not b:
        return False
    if a == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)  # the two quick ratios bound ratio() from above
    return matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold \
        and matcher.ratio() >= threshold


def copy_count(hyps, sources, threshold: float = COPY_THRESHOLD) -> int:
    """How many hypotheses are copies of their source (:func:`is_copy`)."""
    return sum(is_copy(h, s, threshold) for h, s in zip(hyps, sources))


def system_stats(runs, translations: dict | None = None, threshold: float = COPY_THRESHOLD) -> pd.DataFrame:
    """One row per system and test set (index ``stage``, ``split``): the stored ``bleu``, ``chrf``, ``ter``, the
    BLEU ``band`` (:func:`mtlib.metrics.bleu_band`), ``length_ratio``, ``copies`` and ``copy_rate`` (share of
    outputs that copy the source), ``n`` sentences; from the newest evaluations and their translations."""
    translations = newest_translations(runs) if translations is None else translations
    rows = []
    for (stage, split), row in _evaluations(runs).iterrows():
        t = translations.get((stage, split))
        copies = copy_count(t["hypothesis"], t["source"], threshold) if t is not None else np.nan
        n = len(t) if t is not None else row.get("n")
        rows.append({"stage": stage, "split": split, **{m: float(row[m]) for m in SCORES},
                     "band": metrics.bleu_band(float(row["bleu"])),
                     "length_ratio": length_ratio(t["hypothesis"], t["reference"]) if t is not None else np.nan,
                     "copies": copies, "copy_rate": copies / n if t is not None and n else np.nan, "n": n})
    columns = ["stage", "split", *SCORES, "band", "length_ratio", "copies", "copy_rate", "n"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(["stage", "split"], key=lambda c: c.map(_stage_key if c.name == "stage" else _split_key))
    return table.set_index(["stage", "split"])


def overview_table(stats: pd.DataFrame) -> pd.DataFrame:
    """:func:`system_stats` as the reader sees it: systems and test sets in words, human column names."""
    rows = []
    for (stage, split), r in stats.iterrows():
        copies = ("n/a" if pd.isna(r["copies"]) else
                  f"{int(r['copies'])} of {int(r['n'])} ({100 * r['copy_rate']:.1f}%)")
        rows.append({"system": system_name(stage), "test set": plots.test_set_name(split), "BLEU": round(r["bleu"], 2),
                     "chrF": round(r["chrf"], 2), "TER": round(r["ter"], 2), "BLEU band": r["band"],
                     "length ratio (output / reference)": round(r["length_ratio"], 3),
                     "untranslated copies": copies})
    return pd.DataFrame(rows, columns=["system", "test set", "BLEU", "chrF", "TER", "BLEU band",
                                       "length ratio (output / reference)", "untranslated copies"]
                        ).set_index(["system", "test set"])


# -- best system and significance ------------------------------------------------------------------------------

def _flip(verdict: str) -> str:
    return {"better": "worse", "worse": "better"}.get(verdict, verdict)


def _test(significance, system: str, baseline: str, split: str, metric: str):
    """(verdict of ``system`` against ``baseline``, Holm-adjusted p) from chapter.significance's table, or
    (None, None) when the two were not compared on ``split``."""
    if significance is None or len(significance) == 0:
        return None, None
    name = metrics.METRIC_NAMES[metric]
    same = significance[(significance["test set"] == split) & (significance["metric"] == name)]
    for comparison, flip in ((f"{system} vs {baseline}", False), (f"{baseline} vs {system}", True)):
        hit = same[same["comparison"] == comparison]
        if len(hit):
            r = hit.iloc[0]
            return (_flip(r["verdict"]) if flip else r["verdict"]), float(r["Holm-adjusted p"])
    return None, None


def _top(sub: pd.DataFrame, metric: str, best: str) -> str:
    """The system ``metric`` ranks first (scores compared as shown, to two decimals); ``best`` when it ties."""
    shown = sub[metric].round(2) * (-1 if metric == "ter" else 1)
    return best if shown[best] == shown.max() else shown.idxmax()


def best_systems(stats: pd.DataFrame, significance=None) -> pd.DataFrame:
    """Per test set: the system with the highest BLEU (``best``; a tie at two decimals is broken by chrF, then
    TER), the systems sharing that BLEU (``tied``), the runner-up, the margins best - runner-up (``bleu_margin``,
    ``chrf_margin``, ``ter_margin``: a negative TER margin favours the best), the verdict of best against
    runner-up and its Holm-adjusted p for each metric (None when not tested), and which system chrF and TER
    rank first (``chrf_best``, ``ter_best``)."""
    rows = []
    splits = sorted({s for _, s in stats.index}, key=_split_key)
    for split in splits:
        sub = stats.xs(split, level="split")
        shown = sub[list(SCORES)].round(2)
        order = sorted(sub.index, key=lambda s: (-shown.loc[s, "bleu"], -shown.loc[s, "chrf"], shown.loc[s, "ter"],
                                                 _stage_key(s)))
        best = order[0]
        runner = order[1] if len(order) > 1 else None
        row = {"split": split, "best": best, "runner_up": runner, "n_systems": len(order),
               "tied": [s for s in order if shown.loc[s, "bleu"] == shown.loc[best, "bleu"]],
               "bleu": sub.loc[best, "bleu"], "band": sub.loc[best, "band"],
               "chrf_best": _top(sub, "chrf", best), "ter_best": _top(sub, "ter", best)}
        for m in SCORES:
            row[f"{m}_margin"] = sub.loc[best, m] - sub.loc[runner, m] if runner else np.nan
            row[f"{m}_verdict"], row[f"{m}_p"] = _test(significance, best, runner, split, m) if runner else (None, None)
        rows.append(row)
    return pd.DataFrame(rows)


_VERDICT_WORDS = {"better": ("better than", "better"), "worse": ("worse than", "worse"),
                  "no significant difference": ("not significantly different from", "not significantly different")}


def _the(stage: str, bold: bool = False) -> str:
    """A system's name inside a sentence ("the base model", "SFT"; ``bold``: "the **base model**")."""
    name = f"**{system_name(stage)}**" if bold else system_name(stage)
    return f"the {name}" if stage == "base" else name


def _verdict_sentence(r) -> str:
    best, runner = _the(r["best"]), _the(r["runner_up"])
    tested = [(metrics.METRIC_NAMES[m], r[f"{m}_verdict"], r[f"{m}_p"]) for m in SCORES
              if isinstance(r[f"{m}_verdict"], str)]
    if not tested:
        return (f"No paired test compares {best} with {runner} here (they translated different sentences), so "
                f"whether the lead is larger than chance is not known.")
    parts = [f"{_VERDICT_WORDS[v][0]} {runner}" if i == 0 else _VERDICT_WORDS[v][1]
             for i, (_, v, _) in enumerate(tested)]
    parts = [f"{words} on {name} (adjusted p = {p:.4f})" for words, (name, _, p) in zip(parts, tested)]
    head = (f"After Holm's correction the paired bootstrap finds {best} " + ", ".join(parts[:-1])
            + (" and " if len(parts) > 1 else "") + parts[-1] + ".")
    if all(v == "no significant difference" for _, v, _ in tested) and any(
            round(r[f"{m}_margin"], 2) != 0 for m in SCORES):
        head += " The lead is within what resampling the test set produces by chance."
    return head


def findings(stats: pd.DataFrame, significance=None, src_lang: str | None = None, tgt_lang: str | None = None,
             threshold: float = COPY_THRESHOLD) -> str:
    """The discussion's findings as Markdown: per test set the best system, its lead over the runner-up in
    BLEU, chrF and TER, the verdicts of the paired test, the BLEU band; then the length ratios and the
    untranslated copies of the main test set."""
    if stats is None or len(stats) == 0:
        return "No evaluations in these runs: nothing to discuss yet."
    pair = (f" translating {language_name(src_lang)} into {language_name(tgt_lang)}"
            if src_lang and tgt_lang else "")
    lines = [f"What this build's runs say about the systems{pair}, test set by test set "
             "(BLEU and chrF: higher is better; TER: lower is better):", ""]
    for _, r in best_systems(stats, significance).iterrows():
        band = f"{r['bleu']:.2f} (band: *{r['band']}*)"
        text = f"- **{plots.test_set_name(r['split'])}**: "
        if not isinstance(r["runner_up"], str):
            lines.append(text + f"{_the(r['best'], True)} has a BLEU of {band}; it is the only system evaluated on "
                         "this test set.")
            continue
        margins = (f"{r['chrf_margin']:+.2f} chrF, {r['ter_margin']:+.2f} TER (a negative TER margin is in its "
                   "favour). ")
        if len(r["tied"]) > 1:
            text += f"{plots.series(_the(s, s == r['best']) for s in r['tied'])} share the highest BLEU, {band}"
            if round(r["chrf_margin"], 2) == 0 and round(r["ter_margin"], 2) == 0:
                text += f"; {_the(r['best'])} and {_the(r['runner_up'])} do not differ on chrF or TER either. "
            else:
                text += (f"; ordered by chrF, then TER, {_the(r['best'])} comes first, with margins over "
                         f"{_the(r['runner_up'])} of " + margins)
        else:
            text += (f"{_the(r['best'], True)} has the highest BLEU, {band}; its margins over the runner-up, "
                     f"{_the(r['runner_up'])}: {r['bleu_margin']:+.2f} BLEU, " + margins)
        others = [f"{name} ranks {system_name(r[f'{m}_best'])} first instead" for m, name in
                  (("chrf", "chrF"), ("ter", "TER")) if r[f"{m}_best"] != r["best"]]
        if others:
            text += "; ".join(others) + ". "
        lines.append(text + _verdict_sentence(r))
    splits = sorted({s for _, s in stats.index}, key=_split_key)
    main = stats.xs(splits[0], level="split")
    for paragraph in (_length_sentence(main, splits[0]), _copy_sentence(main, src_lang, threshold)):
        lines += ["", paragraph] if paragraph else []
    return "\n".join(lines)


def _length_sentence(main: pd.DataFrame, split: str) -> str:
    ratios = main["length_ratio"].dropna()
    if ratios.empty:
        return "The runs stored no translations, so output lengths are not known."
    parts = []
    for stage, ratio in ratios.items():
        if ratio > 1.1:
            parts.append(f"{system_name(stage)} {ratio:.2f} ({100 * (ratio - 1):.0f}% longer than the references)")
        elif ratio < 0.9:
            parts.append(f"{system_name(stage)} {ratio:.2f} ({100 * (1 - ratio):.0f}% shorter: BLEU's brevity "
                         "penalty applies)")
        else:
            parts.append(f"{system_name(stage)} {ratio:.2f}")
    return (f"**Length.** Output length over reference length on {plots.test_set_name(split)}, in 13a tokens as BLEU "
            f"counts them: " + ", ".join(parts) + ".")


def _copy_sentence(main: pd.DataFrame, src_lang: str | None, threshold: float) -> str:
    rows = main.dropna(subset=["copies"])
    if rows.empty:
        return ""
    source = f"the {language_name(src_lang)} source" if src_lang else "the source"
    parts = [f"{system_name(s)} {int(r['copies'])} of {int(r['n'])} ({100 * r['copy_rate']:.1f}%)"
             for s, r in rows.iterrows()]
    return (f"**Untranslated copies.** Outputs that repeat {source} (identical, or at least "
            f"{100 * threshold:.0f}% of their characters matching once lowercased and stripped of punctuation): "
            + ", ".join(parts) + ".")


# -- sentence by sentence -------------------------------------------------------------------------------------

def _paired(translations: dict, pairs=PAIRS, metric: str = "chrf"):
    """Yield (baseline, system, split, a, b, gain) for each pair translated on the same sentences; ``gain`` per
    sentence is positive where ``system`` does better (TER: lower is better)."""
    splits = sorted({s for _, s in translations}, key=_split_key)
    cache = {}

    def scores(key):
        if key not in cache:
            t = translations[key]
            cache[key] = metrics.sentence_metric(list(t["hypothesis"]), list(t["reference"]), metric)
        return cache[key]

    for baseline, system in pairs:
        for split in splits:
            a, b = translations.get((baseline, split)), translations.get((system, split))
            if a is None or b is None or list(a["source"]) != list(b["source"]):
                continue
            gain = scores((system, split)) - scores((baseline, split))
            yield baseline, system, split, a, b, (-gain if metric == "ter" else gain)


def sentence_wins(runs, translations: dict | None = None, metric: str = "chrf", margin: float = TIE_MARGIN,
                  pairs=PAIRS) -> pd.DataFrame:
    """Per comparison and test set, on the same sentences: how many sentences ``system`` scores better than
    ``baseline`` by more than ``margin`` points of sentence-level ``metric`` (``wins``), worse (``losses``),
    within the margin (``ties``), and the mean gain per sentence."""
    translations = newest_translations(runs) if translations is None else translations
    rows = [{"system": system, "baseline": baseline, "split": split, "wins": int((g > margin).sum()),
             "losses": int((g < -margin).sum()), "ties": int((np.abs(g) <= margin).sum()), "n": len(g),
             "mean_gain": float(g.mean())}
            for baseline, system, split, _, _, g in _paired(translations, pairs, metric)]
    table = pd.DataFrame(rows, columns=["system", "baseline", "split", "wins", "losses", "ties", "n", "mean_gain"])
    table.attrs.update(metric=metric, margin=margin)
    return table


def wins_table(wins: pd.DataFrame) -> pd.DataFrame:
    """:func:`sentence_wins` as the reader sees it."""
    name = metrics.METRIC_NAMES[wins.attrs.get("metric", "chrf")]
    view = pd.DataFrame({
        "comparison": [f"{system_name(s)} vs {system_name(b)}" for s, b in zip(wins["system"], wins["baseline"])],
        "test set": [plots.test_set_name(s) for s in wins["split"]],
        "sentences won": wins["wins"], "sentences lost": wins["losses"], "ties": wins["ties"],
        f"mean {name} gain per sentence": wins["mean_gain"].round(2)})
    return view.set_index(["comparison", "test set"])


def wins_summary(wins: pd.DataFrame, split: str | None = None) -> str:
    """One Markdown sentence per comparison on ``split`` (the main test set by default): wins, losses, ties."""
    if wins is None or len(wins) == 0:
        return "No two systems translated the same sentences: no sentence-level comparison."
    split = split or sorted(wins["split"], key=_split_key)[0]
    metric, margin = metrics.METRIC_NAMES[wins.attrs.get("metric", "chrf")], wins.attrs.get("margin", TIE_MARGIN)
    lines = [f"Sentence by sentence on {plots.test_set_name(split)}, by sentence-level {metric} (a sentence is won or "
             f"lost by more than {margin:g} point{'s' if margin != 1 else ''}, otherwise tied):", ""]
    for _, r in wins[wins["split"] == split].iterrows():
        lines.append(f"- {system_name(r['system'])} beats {_the(r['baseline'])} on {r['wins']} of {r['n']} "
                     f"sentences and loses on {r['losses']} ({r['ties']} tied).")
    return "\n".join(lines)


def sentence_examples(runs, translations: dict | None = None, split: str = MAIN_SPLIT, k: int = 1,
                      metric: str = "chrf", margin: float = TIE_MARGIN, pairs=PAIRS) -> pd.DataFrame:
    """For each comparison on ``split``: the ``k`` sentences ``system`` wins by most and the ``k`` it loses by most
    (sentence-level ``metric``; only differences beyond ``margin``), with the source, both translations and the
    reference."""
    translations = newest_translations(runs) if translations is None else translations
    name = metrics.METRIC_NAMES[metric]
    rows = []
    for baseline, system, s, a, b, gain in _paired(translations, pairs, metric):
        if s != split:
            continue
        order = np.argsort(-gain, kind="stable")
        picks = [("largest win", i) for i in order[:k] if gain[i] > margin]
        picks += [("largest loss", i) for i in order[::-1][:k] if gain[i] < -margin]
        for kind, i in picks:
            rows.append({"comparison": f"{system_name(system)} vs {system_name(baseline)}", "case": kind,
                         "sentence": int(i) + 1, "source": a["source"].iloc[i],
                         "baseline's translation": a["hypothesis"].iloc[i],
                         "system's translation": b["hypothesis"].iloc[i], "reference": a["reference"].iloc[i],
                         f"{name} gain": round(float(gain[i]), 1)})
    columns = ["comparison", "case", "sentence", "source", "baseline's translation", "system's translation",
               "reference", f"{name} gain"]
    return pd.DataFrame(rows, columns=columns).set_index(["comparison", "case"])


# -- seeds ----------------------------------------------------------------------------------------------------

def training_seed(eval_path) -> int | None:
    """The training seed behind an evaluation run: its config's ``train_run`` (found by name next to the
    evaluation when the build folder moved), that run's ``params.seed``; None for the base model."""
    try:
        config = results.read_json(Path(eval_path) / "config.json") or {}
        if not config.get("train_run"):
            return None
        train = Path(config["train_run"])
        if not (train / "config.json").exists():
            train = Path(eval_path).parent / train.name
        seed = ((results.read_json(train / "config.json") or {}).get("params") or {}).get("seed")
    except DataError:
        return None
    return int(seed) if seed is not None else None


def with_seeds(runs) -> pd.DataFrame:
    """``runs`` with a ``seed`` column (the training seed, :func:`training_seed`; kept when already there)."""
    if "seed" in runs.columns:
        return runs
    return runs.assign(seed=pd.Series([training_seed(p) if p else None for p in runs["path"]], index=runs.index,
                                      dtype=object))


def seed_summary(runs) -> pd.DataFrame:
    """Per trained system and test set: the training seeds found (``seeds``, ``n_seeds``) and, over the newest
    evaluation of each seed, the mean and sample standard deviation of BLEU, chrF and TER (sd NaN for one seed)."""
    columns = ["stage", "split", "seeds", "n_seeds", *[f"{m}_{s}" for m in SCORES for s in ("mean", "sd")]]
    if runs is None or len(runs) == 0 or runs["split"].isna().all():
        return pd.DataFrame(columns=columns)
    evals = with_seeds(runs[runs["split"].notna()])
    evals = evals[evals["seed"].notna()]
    rows = []
    if len(evals):
        newest = evals.sort_values(["started", "run_id"]).groupby(["stage", "split", "seed"]).tail(1)
        for (stage, split), g in newest.groupby(["stage", "split"]):
            row = {"stage": stage, "split": split, "seeds": ", ".join(str(int(s)) for s in sorted(g["seed"])),
                   "n_seeds": len(g)}
            for m in SCORES:
                values = g[m].astype(float)
                row[f"{m}_mean"], row[f"{m}_sd"] = values.mean(), values.std(ddof=1) if len(g) > 1 else np.nan
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["stage", "split"], key=lambda c: c.map(_stage_key if c.name == "stage" else _split_key)
                             ).reset_index(drop=True)


def seeds_table(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`seed_summary` as the reader sees it: "mean ± sd (n seeds)" where there are several seeds."""
    def cell(r, m):
        return f"{r[f'{m}_mean']:.2f} ± {r[f'{m}_sd']:.2f}" if r["n_seeds"] > 1 else f"{r[f'{m}_mean']:.2f}"
    view = pd.DataFrame({"system": [system_name(s) for s in summary["stage"]],
                         "test set": [plots.test_set_name(s) for s in summary["split"]],
                         "training seeds": summary["seeds"],
                         **{metrics.METRIC_NAMES[m]: [cell(r, m) for _, r in summary.iterrows()] for m in SCORES}})
    return view.set_index(["system", "test set"])


# -- comparability with published Multi30k BLEU ---------------------------------------------------------------

def _tokenized_lowercased(text: str) -> str:
    """Text as Multi30k papers scored it, approximately: 13a-tokenized, lowercased, hyphens split (Moses' ``-a``)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    return re.sub(r"(?<=\w)-(?=\w)", " @-@ ", Tokenizer13a()(text).lower())


def comparability(runs, translations: dict | None = None, split: str = MAIN_SPLIT) -> pd.DataFrame:
    """The same translations scored three ways, per system on ``split``: SacreBLEU's BLEU (detokenized, cased:
    this book's score), lowercased, and lowercased on tokenized text with hyphens split (the setting of most
    published Multi30k results, approximated without the Moses tokenizer)."""
    from sacrebleu.metrics import BLEU
    translations = newest_translations(runs) if translations is None else translations
    rows = []
    for (stage, s), t in sorted(translations.items(), key=lambda kv: _stage_key(kv[0][0])):
        if s != split:
            continue
        hyps, refs = list(t["hypothesis"]), list(t["reference"])
        rows.append({"system": system_name(stage),
                     "SacreBLEU (cased, detokenized)": BLEU().corpus_score(hyps, [refs]).score,
                     "lowercased": BLEU(lowercase=True).corpus_score(hyps, [refs]).score,
                     "lowercased, tokenized, hyphens split": BLEU(tokenize="none", force=True).corpus_score(
                         [_tokenized_lowercased(h) for h in hyps], [[_tokenized_lowercased(r) for r in refs]]).score})
    table = pd.DataFrame(rows, columns=["system", "SacreBLEU (cased, detokenized)", "lowercased",
                                        "lowercased, tokenized, hyphens split"]).set_index("system").round(2)
    table.attrs["split"] = split
    return table


# -- limitations ----------------------------------------------------------------------------------------------

def random_weights(runs) -> bool:
    """Whether the runs used a model with random weights (the smoke profile's tiny model, or a shape twin)."""
    if runs is None or len(runs) == 0:
        return False
    return chapter.runs_are_smoke(runs)


def _seed_paragraph(seeds: pd.DataFrame) -> str:
    if seeds is None or len(seeds) == 0:
        return ("**Training seeds.** No trained system is in these runs, so nothing here measures how much a "
                "second training would change the scores.")
    main = seeds[seeds["split"] == sorted(seeds["split"], key=_split_key)[0]]
    several = main[main["n_seeds"] > 1]
    if several.empty:
        per = ", ".join(f"{system_name(r['stage'])} seed {r['seeds']}" for _, r in main.iterrows())
        return ("**One training run per system** (" + per + "). A training with another seed starts from another "
                "LoRA initialisation, sees the examples in another order and, for GRPO, samples other translations; "
                "it can move the scores by more than the differences above. The paired bootstrap measures the "
                "uncertainty that comes from the choice of test sentences only, not that of training: a ranking "
                "from one seed per system is a single observation. Training each system with several seeds would "
                "let this section report the mean ± standard deviation over them.")
    split = plots.test_set_name(main["split"].iloc[0])
    parts = [f"{system_name(r['stage'])} over {r['n_seeds']} seeds ({r['seeds']}): BLEU {r['bleu_mean']:.2f} ± "
             f"{r['bleu_sd']:.2f}, chrF {r['chrf_mean']:.2f} ± {r['chrf_sd']:.2f}, TER {r['ter_mean']:.2f} ± "
             f"{r['ter_sd']:.2f}" for _, r in several.iterrows()]
    single = main[main["n_seeds"] == 1]
    text = (f"**Several training seeds.** On {split}, mean ± sample standard deviation: " + "; ".join(parts) + ".")
    if len(single):
        text += (" Trained once: " + ", ".join(f"{system_name(r['stage'])} (seed {r['seeds']})"
                                               for _, r in single.iterrows()) + ".")
    return text + (" The tables above show the newest run of each system; a difference between systems smaller "
                   "than these standard deviations says little.")


def limitations(runs, seeds: pd.DataFrame | None = None, comparison: pd.DataFrame | None = None,
                tgt_lang: str | None = None) -> str:
    """The limitations as Markdown: training seeds (one, or mean ± sd over several), the smoke caveat (only for
    runs on a model with random weights), and why published Multi30k BLEU is not comparable (with the numbers
    of :func:`comparability` when given)."""
    seeds = seed_summary(runs) if seeds is None else seeds
    parts = [_seed_paragraph(seeds)]
    if random_weights(runs):
        parts.append("**Smoke numbers mean nothing.** These runs used a model with random weights (the smoke "
                     "profile's tiny model), trained for a handful of steps on a few hundred sentences: every score, "
                     "band, verdict, length ratio and example above describes noise, and the sentences of this "
                     "discussion only show what a real build writes here.")
    target = f" {language_name(tgt_lang)}" if tgt_lang else ""
    text = ("**Not comparable with published Multi30k BLEU.** Most Multi30k results (the WMT multimodal translation "
            "tasks of 2016–2018 and the papers built on them) report `multi-bleu.perl` on lowercased, "
            "Moses-tokenized text, often with hyphens split into separate tokens. The scores in this book are "
            f"SacreBLEU's (Post, 2018): case-sensitive, on the detokenized{target} output, tokenized by SacreBLEU "
            "itself and reported with a signature. Lowercasing forgives errors of case, and splitting hyphens adds "
            "tokens that are easy to match, so the two kinds of number measure different things and are not "
            "comparable; only scores with the same signature are.")
    if comparison is not None and len(comparison):
        split = plots.test_set_name(comparison.attrs.get("split", MAIN_SPLIT))
        moves = [f"{system} {r.iloc[0]:.2f} → {r.iloc[1]:.2f} → {r.iloc[2]:.2f}" for system, r in comparison.iterrows()]
        text += (f" The same translations of this build on {split}, scored cased and detokenized → lowercased → "
                 "lowercased on tokenized text with hyphens split: " + "; ".join(moves) + ".")
    parts.append(text)
    return "\n\n".join(parts)


def language_pair(runs) -> tuple[str | None, str | None]:
    """(src_lang, tgt_lang) of the runs (:func:`languages`), (None, None) when unknown."""
    return languages(runs) or (None, None)

