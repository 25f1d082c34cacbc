"""Chapter 5's discussion (mtlib.discussion): sentences and numbers computed from run tables and translations."""
import re

import pandas as pd
import pytest

from mtlib import chapter, discussion, metrics, results

REAL_MODEL = "meta-llama/Llama-3.2-3B-Instruct"


def fake_runs(rows, model=REAL_MODEL):
    """A load_runs-shaped table: one row per evaluation (stage, split, scores; optional seed)."""
    out = []
    for i, r in enumerate(rows):
        out.append({"run_id": f"r{i:03d}", "stage": r["stage"], "name": r["stage"], "split": r.get("split", "test"),
                    "model": r.get("model", model), "build_id": "b", "bleu": r["bleu"], "chrf": r.get("chrf", 50.0),
                    "ter": r.get("ter", 50.0), "n": r.get("n"), "started": f"2026-01-01T00:00:{i:02d}", "path": "",
                    **({"seed": r["seed"]} if "seed" in r else {})})
    return pd.DataFrame(out)


def significance_rows(rows):
    """A chapter.significance-shaped table from (comparison, test set, metric, delta, Holm p, verdict)."""
    table = pd.DataFrame([{"comparison": c, "test set": s, "metric": m, "score before": 0.0, "score after": d,
                           "delta": d, "95% CI": "[+0.00, +0.00]", "p": p, "Holm-adjusted p": p, "verdict": v}
                          for c, s, m, d, p, v in rows], columns=chapter.SIGNIFICANCE_COLUMNS)
    return table


def translations_of(sources, references, hyps):
    return pd.DataFrame({"source": sources, "reference": references, "hypothesis": hyps})


SOURCES = ["A man rides a red bike.", "Two dogs play in the snow.", "A girl reads a book.", "People walk home."]
REFS = ["Un homme fait du vélo rouge.", "Deux chiens jouent dans la neige.", "Une fille lit un livre.",
        "Des gens rentrent à pied."]


def test_best_system_is_named_with_its_lead_band_and_verdicts():
    runs = fake_runs([dict(stage="base", bleu=10.0, chrf=40.0, ter=80.0),
                      dict(stage="sft", bleu=20.0, chrf=55.0, ter=60.0),
                      dict(stage="grpo", bleu=25.5, chrf=54.0, ter=58.0)])
    sig = significance_rows([("grpo vs sft", "test", "BLEU", 5.5, 0.003, "better"),
                             ("grpo vs sft", "test", "chrF", -1.0, 0.2, "no significant difference"),
                             ("grpo vs sft", "test", "TER", -2.0, 0.04, "better")])
    stats = discussion.system_stats(runs, translations={})
    best = discussion.best_systems(stats, sig).iloc[0]
    assert (best["best"], best["runner_up"]) == ("grpo", "sft")
    assert best["bleu_margin"] == pytest.approx(5.5) and best["chrf_margin"] == pytest.approx(-1.0)
    assert best["ter_margin"] == pytest.approx(-2.0) and best["chrf_best"] == "sft" and best["ter_best"] == "grpo"
    text = discussion.findings(stats, sig, "en", "fr")
    assert "**GRPO** has the highest BLEU, 25.50 (band: *The gist is clear, but has significant grammatical errors*)" in text
    assert "its margins over the runner-up, SFT: +5.50 BLEU, -1.00 chrF, -2.00 TER" in text
    assert "chrF ranks SFT first instead" in text
    assert "better than SFT on BLEU (adjusted p = 0.0030)" in text
    assert ", not significantly different on chrF (adjusted p = 0.2000) and better on TER (adjusted p = 0.0400)." \
        in text
    assert "translating English into French" in text


def test_verdict_is_read_from_the_reverse_comparison_and_all_ns_says_chance():
    runs = fake_runs([dict(stage="sft", split="test_2017_flickr", bleu=30.0),
                      dict(stage="grpo", split="test_2017_flickr", bleu=29.0)])
    sig = significance_rows([("grpo vs sft", "test_2017_flickr", "BLEU", -1.0, 0.001, "worse")])
    text = discussion.findings(discussion.system_stats(runs, translations={}), sig)
    assert "**SFT** has the highest BLEU, 30.00 (band: *Understandable to good translations*)" in text
    assert "finds SFT better than GRPO on BLEU (adjusted p = 0.0010)" in text  # "worse" read from SFT's side
    sig = significance_rows([("grpo vs sft", "test_2017_flickr", "BLEU", -1.0, 0.5, "no significant difference")])
    assert "within what resampling the test set produces by chance" in discussion.findings(
        discussion.system_stats(runs, translations={}), sig)
    assert "No paired test compares SFT with GRPO" in discussion.findings(
        discussion.system_stats(runs, translations={}), None)


def test_tied_bleu_is_said_and_broken_by_chrf():
    runs = fake_runs([dict(stage="base", bleu=0.001, chrf=7.0, ter=170.0),
                      dict(stage="sft", bleu=0.0, chrf=8.0, ter=150.0),
                      dict(stage="grpo", bleu=0.0, chrf=8.0, ter=150.0)])
    stats = discussion.system_stats(runs, translations={})
    best = discussion.best_systems(stats).iloc[0]
    assert (best["best"], best["runner_up"], best["tied"]) == ("sft", "grpo", ["sft", "grpo", "base"])
    text = discussion.findings(stats)
    assert "**SFT**, GRPO and the base model share the highest BLEU, 0.00" in text
    assert "SFT and GRPO do not differ on chrF or TER either" in text and "ranks" not in text
    runs.loc[runs["stage"] == "grpo", "chrf"] = 7.5
    text = discussion.findings(discussion.system_stats(runs, translations={}))
    assert "ordered by chrF, then TER, SFT comes first, with margins over GRPO of +0.50 chrF, +0.00 TER" in text


def test_copy_test_agrees_with_the_full_similarity_ratio():
    """The quick upper bounds only skip pairs that cannot reach the threshold: the verdict is difflib's ratio's."""
    import difflib
    import random
    rng = random.Random(0)
    words = "a man dog red bike rides the in park two girl plays ein hund mann rot".split()
    for _ in range(400):
        source = " ".join(rng.choices(words, k=rng.randint(2, 9)))
        kept = [w for w in source.split() if rng.random() > 0.3]
        hyp = " ".join(kept + rng.choices(words, k=rng.randint(0, 3)))
        a, b = discussion._normalise(hyp), discussion._normalise(source)
        full = bool(a and b) and (a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
                                  >= discussion.COPY_THRESHOLD)
        assert discussion.is_copy(hyp, source) == full, (hyp, source)


def test_copy_rate_and_length_ratio():
    hyps = ["A man rides a red bike.",        # identical to the source
            "two dogs play in the snow",      # same once lowercased, punctuation dropped
            "Une fille lit un livre.",        # a translation
            ""]                               # empty: no copy
    assert [discussion.is_copy(h, s) for h, s in zip(hyps, SOURCES)] == [True, True, False, False]
    assert discussion.is_copy("A man rides a red bikes.", SOURCES[0])  # nearly identical
    runs = fake_runs([dict(stage="base", bleu=5.0)])
    stats = discussion.system_stats(runs, translations={("base", "test"): translations_of(SOURCES, REFS, hyps)})
    row = stats.loc[("base", "test")]
    assert row["copies"] == 2 and row["copy_rate"] == 0.5 and row["n"] == 4
    # 13a tokens: 7 + 6 + 6 + 0 = 19 against 7 + 7 + 6 + 6 = 26
    assert row["length_ratio"] == pytest.approx(19 / 26)
    assert row["length_ratio"] == pytest.approx(metrics.corpus_scores(hyps, REFS)["sys_len"] / 26)
    text = discussion.findings(stats, None, "en", "fr")
    assert "base model 2 of 4 (50.0%)" in text and "repeat the English source" in text
    assert "base model 0.73 (27% shorter: BLEU's brevity penalty applies)" in text
    assert discussion.overview_table(stats).loc[("base model", "test (2016 Flickr)"), "untranslated copies"] == \
        "2 of 4 (50.0%)"


def test_sentence_wins_losses_ties_and_examples():
    base = ["xx yy", "xx yy", REFS[2], REFS[3]]
    sft = [REFS[0], REFS[1], "zz qq", REFS[3]]  # wins 0 and 1, loses 2, ties 3
    tr = {("base", "test"): translations_of(SOURCES, REFS, base), ("sft", "test"): translations_of(SOURCES, REFS, sft),
          ("grpo", "test_2017_flickr"): translations_of(SOURCES, REFS, sft)}  # no partner on its test set
    wins = discussion.sentence_wins(None, translations=tr)
    assert len(wins) == 1
    r = wins.iloc[0]
    assert (r["system"], r["baseline"], r["wins"], r["losses"], r["ties"], r["n"]) == ("sft", "base", 2, 1, 1, 4)
    assert "SFT beats the base model on 2 of 4 sentences and loses on 1 (1 tied)." in discussion.wins_summary(wins)
    examples = discussion.sentence_examples(None, translations=tr, k=1)
    assert list(examples.index) == [("SFT vs base model", "largest win"), ("SFT vs base model", "largest loss")]
    assert examples["sentence"].tolist()[1] == 3 and examples["system's translation"].iloc[1] == "zz qq"
    assert examples["chrF gain"].iloc[0] > 0 > examples["chrF gain"].iloc[1]
    other = {**tr, ("sft", "test"): translations_of(SOURCES[::-1], REFS[::-1], sft)}  # other sentences: not paired
    assert discussion.sentence_wins(None, translations=other).empty


def test_one_seed_per_system_is_said_and_several_seeds_give_mean_and_sd():
    one = fake_runs([dict(stage="base", bleu=10.0), dict(stage="sft", bleu=20.0, seed=3407)])
    text = discussion.limitations(one)
    assert "**One training run per system** (SFT seed 3407)" in text and not re.search(r"\d ± \d", text)
    several = fake_runs([dict(stage="sft", bleu=99.0, chrf=1.0, ter=1.0, seed=1),  # superseded by its re-run
                         dict(stage="sft", bleu=20.0, chrf=50.0, ter=60.0, seed=1),
                         dict(stage="sft", bleu=22.0, chrf=52.0, ter=58.0, seed=2),
                         dict(stage="sft", bleu=24.0, chrf=54.0, ter=56.0, seed=3),
                         dict(stage="grpo", bleu=21.0, seed=3407)])
    summary = discussion.seed_summary(several)
    sft = summary[summary["stage"] == "sft"].iloc[0]
    assert (sft["seeds"], sft["n_seeds"]) == ("1, 2, 3", 3)
    assert sft["bleu_mean"] == pytest.approx(22.0) and sft["bleu_sd"] == pytest.approx(2.0)
    text = discussion.limitations(several, summary)
    assert "SFT over 3 seeds (1, 2, 3): BLEU 22.00 ± 2.00, chrF 52.00 ± 2.00, TER 58.00 ± 2.00" in text
    assert "Trained once: GRPO (seed 3407)" in text
    assert discussion.seeds_table(summary).loc[("SFT", "test (2016 Flickr)"), "BLEU"] == "22.00 ± 2.00"


def test_smoke_caveat_only_for_runs_on_random_weights():
    real = fake_runs([dict(stage="sft", bleu=20.0, seed=1)])
    assert "Smoke numbers mean nothing" not in discussion.limitations(real)
    assert "Smoke numbers mean nothing" in discussion.limitations(fake_runs([dict(stage="sft", bleu=1.0, seed=1)],
                                                                           model="/x/build/tiny-model"))
    assert "Smoke numbers mean nothing" in discussion.limitations(fake_runs([dict(stage="sft", bleu=1.0, seed=1)],
                                                                           model="/x/twin-meta-llama--Llama"))


def test_published_multi30k_comparison_computed_from_the_translations():
    upper = ["Un Homme fait du vélo-cross rouge.", "DEUX chiens jouent dans la neige."]
    refs = ["un homme fait du vélo-cross rouge.", "deux chiens jouent dans la neige."]
    table = discussion.comparability(None, translations={("sft", "test"): translations_of(SOURCES[:2], refs, upper)})
    row = table.loc["SFT"]
    assert row["SacreBLEU (cased, detokenized)"] < 100 and row["lowercased"] == 100.0
    assert discussion._tokenized_lowercased("Vélo-Cross, rouge.") == "vélo @-@ cross , rouge ."
    text = discussion.limitations(fake_runs([dict(stage="sft", bleu=1.0, seed=1)]), comparison=table, tgt_lang="fr")
    assert "`multi-bleu.perl` on lowercased" in text and "detokenized French output" in text
    assert f"SFT {row.iloc[0]:.2f} → 100.00 → 100.00" in text


def test_published_comparison_scores_tokenized_text_without_sacrebleus_warning(caplog):
    """The tokenized column is tokenized on purpose: SacreBLEU's "forgot to detokenize" warning (100 lines ending
    in " .") must not print into the chapter."""
    refs = [f"Ein Hund Nummer {i} rennt." for i in range(120)]
    with caplog.at_level("WARNING", logger="sacrebleu"):
        discussion.comparability(None, translations={("sft", "test"): translations_of(refs, refs, refs)})
    assert not [r for r in caplog.records if "detokenize" in r.getMessage()]


def test_prose_follows_the_language_pair_and_never_says_german_for_french():
    runs = fake_runs([dict(stage="base", bleu=3.0), dict(stage="sft", bleu=9.0, seed=3407)])
    tr = {("base", "test"): translations_of(SOURCES, REFS, SOURCES),
          ("sft", "test"): translations_of(SOURCES, REFS, REFS)}
    stats = discussion.system_stats(runs, translations=tr)
    texts = [discussion.findings(stats, None, "en", "fr"),
             discussion.limitations(runs, comparison=discussion.comparability(runs, tr), tgt_lang="fr"),
             discussion.wins_summary(discussion.sentence_wins(runs, tr))]
    assert not any("German" in t for t in texts)
    assert "English into French" in texts[0] and "base model 4 of 4 (100.0%)" in texts[0]
    assert "translating English into German" in discussion.findings(stats, None, "en", "de")


def test_no_runs_gives_empty_tables_and_says_so():
    empty = fake_runs([]).reindex(columns=["run_id", "stage", "name", "split", "model", "build_id", "bleu", "chrf",
                                           "ter", "n", "started", "path"])
    stats = discussion.system_stats(empty)
    assert stats.empty and discussion.findings(stats) == "No evaluations in these runs: nothing to discuss yet."
    assert discussion.sentence_wins(empty).empty and discussion.sentence_examples(empty).empty
    assert "No two systems translated the same sentences" in discussion.wins_summary(discussion.sentence_wins(empty))
    text = discussion.limitations(empty)
    assert "No trained system" in text and "Smoke" not in text and "multi-bleu.perl" in text


def test_from_run_records_seeds_languages_and_translations(tmp_path):
    """The file path: run records written by results.Run, read back through load_runs; the training run is found
    by name when the build folder was moved (its recorded absolute path no longer exists)."""
    root = tmp_path / "runs"
    train = results.Run.create("sft", {"model": REAL_MODEL, "params": {"seed": 7}}, root=root)
    train.finish()
    for stage, hyps, extra in (("base", SOURCES, {}), ("sft", REFS, {"train_run": f"/moved/runs/{train.run_id}"})):
        run = results.Run.create(stage, {"model": REAL_MODEL, "split": "test", "src_lang": "en", "tgt_lang": "fr",
                                         **extra}, root=root)
        run.write_translations(translations_of(SOURCES, REFS, hyps))
        run.finish(metrics.corpus_scores(hyps, REFS), split="test")
    runs = results.load_runs(root)
    assert discussion.language_pair(runs) == ("en", "fr")
    assert discussion.with_seeds(runs).set_index("stage")["seed"].to_dict() == {"base": None, "sft": 7}
    stats = discussion.system_stats(runs)
    assert stats.loc[("base", "test"), "copies"] == 4 and stats.loc[("sft", "test"), "bleu"] == pytest.approx(100)
    sig = chapter.significance(runs, n_bootstrap=20)
    text = discussion.findings(stats, sig, *discussion.language_pair(runs))
    assert "**SFT** has the highest BLEU, 100.00" in text and "German" not in text
    assert "(SFT seed 7)" in discussion.limitations(runs)
