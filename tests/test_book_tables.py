"""The results chapter's tables from stored runs: paired significance and translations side by side."""
import pandas as pd
import pytest

from mtlib import chapter, metrics, results

REFS = [f"ein hund läuft über die wiese nummer {i} ." for i in range(30)]
SOURCES = [f"a dog runs across meadow number {i} ." for i in range(30)]


def _eval_run(root, stage, hyps, split="test"):
    run = results.Run.create(stage, {"split": split}, root=root, name=stage)
    run.write_translations(pd.DataFrame({"source": SOURCES, "reference": REFS, "hypothesis": hyps}))
    run.finish(metrics.corpus_scores(hyps, REFS), split=split)


def test_significance_and_side_by_side_from_stored_runs(tmp_path):
    _eval_run(tmp_path, "base", ["der hund ." for _ in REFS])
    _eval_run(tmp_path, "sft", list(REFS))            # perfect: must beat the base model significantly
    runs = results.load_runs(tmp_path)
    table = chapter.significance(runs, n_bootstrap=200)
    assert list(table.columns) == chapter.SIGNIFICANCE_COLUMNS
    assert list(table.metric) == ["BLEU", "chrF", "TER"]
    row = table[(table.comparison == "sft vs base") & (table.metric == "BLEU")].iloc[0]
    assert round(row["score after"], 6) == 100.0 and row["delta"] > 50 and row["verdict"] == "better"
    ter = table[table.metric == "TER"].iloc[0]
    assert ter["score after"] == 0.0 and ter["delta"] < 0 and ter["verdict"] == "better"  # lower TER is better
    assert set(table.comparison) == {"sft vs base"}    # no GRPO run: no GRPO comparison
    assert list(table.attrs["signatures"]) == ["BLEU", "chrF", "TER"]
    assert all("bs:200|seed:12345" in s for s in table.attrs["signatures"].values())
    side = chapter.stored_side_by_side(runs, n=3)
    assert list(side.columns) == ["source", "base", "sft", "reference"]
    assert list(side["sft"]) == REFS[:3] and list(side["source"]) == SOURCES[:3]


def _two_stage_runs(tmp_path, worse_sft=False):
    bad = ["der hund ." for _ in REFS]
    _eval_run(tmp_path, "base", bad if not worse_sft else list(REFS))
    _eval_run(tmp_path, "sft", list(REFS) if not worse_sft else bad)
    return results.load_runs(tmp_path)


def test_significance_says_worse_for_a_worse_system(tmp_path):
    # the old one-sided test gave a clearly worse system p = 1.0 and "not significant"
    table = chapter.significance(_two_stage_runs(tmp_path, worse_sft=True), n_bootstrap=200)
    assert set(table.verdict) == {"worse"}
    assert (table["p"] < 0.01).all()


def test_significance_verdict_uses_the_holm_adjusted_p(tmp_path, monkeypatch):
    from mtlib import metrics
    runs = _two_stage_runs(tmp_path)
    real = metrics.paired_bootstrap
    raw = iter([0.02, 0.03, 0.04])  # each below 0.05 alone; Holm: 3 x 0.02 = 0.06, 2 x 0.03 = 0.06, 0.06

    def fake(*args, **kw):
        return {**real(*args, **kw), "p_value": next(raw)}

    monkeypatch.setattr(metrics, "paired_bootstrap", fake)
    table = chapter.significance(runs, n_bootstrap=50)
    assert list(table["p"]) == [0.02, 0.03, 0.04]
    assert list(table["Holm-adjusted p"]) == pytest.approx([0.06, 0.06, 0.06])
    assert set(table.verdict) == {"no significant difference"}


def test_readable_names_leave_the_raw_table_alone():
    stats = pd.DataFrame({"split": ["train"], "lang": ["de"], "ttr": [0.1], "mean_word_len": [5.0]})
    shown = chapter.readable(stats.set_index(["split", "lang"]))
    assert list(shown.index.names) == ["split", "language"]
    assert list(shown.columns) == ["type-token ratio", "characters per word"]
    assert list(stats.columns) == ["split", "lang", "ttr", "mean_word_len"]  # callers keep the raw names
    scores = pd.DataFrame({"system": ["base"], "split": ["test"], "bleu": [1.0], "rouge1": [2.0]})
    shown = chapter.readable(scores.set_index(["system", "split"]), chapter.SCORE_NAMES)
    assert list(shown.index.names) == ["system", "test set"] and list(shown.columns) == ["BLEU", "ROUGE-1"]
    for name in shown.columns.tolist() + list(shown.index.names):
        assert "_" not in name


def test_show_scores_puts_the_signatures_under_the_table(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    scores = pd.DataFrame({"system": ["base"], "split": ["test"], "bleu": [1.234], "chrf": [5.0], "rougeL": [3.0]})
    chapter.show_scores(scores.set_index(["system", "split"]))
    table, caption = shown
    assert list(table.columns) == ["BLEU", "chrF", "ROUGE-L"] and table.iloc[0, 0] == 1.23
    assert "BLEU `nrefs:1|case:mixed|eff:no|tok:13a" in caption.data and "chrF `nrefs:1" in caption.data
    assert "TER" not in caption.data and "rouge_score" in caption.data


def test_newer_evaluation_of_a_stage_replaces_the_older(tmp_path):
    _eval_run(tmp_path, "base", ["falsch ." for _ in REFS])
    _eval_run(tmp_path, "base", list(REFS))
    newest = chapter.newest_evaluations(results.load_runs(tmp_path))
    assert round(newest.loc[("base", "test"), "bleu"], 6) == 100.0


def test_side_by_side_refuses_runs_on_different_sentences(tmp_path):
    import pytest
    from mtlib.errors import MtlibError
    _eval_run(tmp_path, "base", list(REFS))
    run = results.Run.create("sft", {}, root=tmp_path, name="sft")
    run.write_translations(pd.DataFrame({"source": SOURCES[::-1], "reference": REFS[::-1], "hypothesis": REFS[::-1]}))
    run.finish(metrics.corpus_scores(REFS, REFS))
    with pytest.raises(MtlibError, match="different"):
        chapter.stored_side_by_side(results.load_runs(tmp_path))


def test_runs_are_smoke(tmp_path):
    _eval_run(tmp_path, "base", list(REFS))
    runs = results.load_runs(tmp_path)
    assert not chapter.runs_are_smoke(runs.assign(model="meta-llama/Llama-3.2-3B-Instruct"))
    assert chapter.runs_are_smoke(runs.assign(model="tiny"))
    assert chapter.runs_are_smoke(runs.assign(model="/build/smoke/tiny-model"))
    twin = "twin:meta-llama/Llama-3.2-3B-Instruct"
    assert chapter.runs_are_smoke(runs.assign(model=twin)) and chapter.random_model(runs.assign(model=twin)) == twin
    assert "Shape twin" in chapter.notice({"model": chapter.random_model(runs.assign(model=twin))}).data
    assert chapter.random_model(runs.assign(model="meta-llama/Llama-3.2-3B-Instruct")) is None


def _build_runs(root, build_id, bleu_base=10.0):
    """One build's runs: base evaluation, an SFT training run with an adapter, an SFT evaluation."""
    base = results.Run.create("base", {"build_id": build_id}, root=root, name="base")
    base.write_translations(pd.DataFrame({"source": SOURCES, "reference": REFS, "hypothesis": REFS}))
    base.finish({"bleu": bleu_base, "n": len(REFS)}, split="test")
    sft = results.Run.create("sft", {"build_id": build_id}, root=root, name="sft")
    (sft.path / "adapter").mkdir()
    (sft.path / "adapter" / "adapter_config.json").write_text("{}")
    sft.finish()
    ev = results.Run.create("sft", {"build_id": build_id}, root=root, name="sft")
    ev.write_translations(pd.DataFrame({"source": SOURCES, "reference": REFS, "hypothesis": REFS}))
    ev.finish({"bleu": bleu_base + 1, "n": len(REFS)}, split="test")
    return sft


def test_chapters_read_only_their_own_build(tmp_path):
    """Two builds' runs in one folder: each build's tables, costs and SFT adapter are its own."""
    sft_a = _build_runs(tmp_path, "build-a", 10.0)
    sft_b = _build_runs(tmp_path, "build-b", 50.0)  # newer: without the filter it would win everywhere
    assert chapter.latest_run(tmp_path, "sft", build_id="build-a")["run_id"] == sft_a.run_id
    assert chapter.latest_run(tmp_path, "sft")["run_id"] == sft_b.run_id
    assert chapter.latest_run(tmp_path, "sft", build_id="build-c") is None  # never another build's adapter
    scores = chapter.latest_scores(tmp_path, build_id="build-a")
    assert scores.loc[("base", "test"), "bleu"] == 10.0 and scores.loc[("sft", "test"), "bleu"] == 11.0
    per_run, per_stage, superseded = chapter.run_costs(tmp_path, build_id="build-a")
    assert per_stage["runs"].to_dict() == {"base": 1, "sft": 2} and superseded == 0
    assert set(per_run["run_id"]) <= set(results.load_runs(tmp_path, True, build_id="build-a")["run_id"])


def test_run_costs_count_the_runs_behind_the_tables_once(tmp_path):
    """A chapter executed twice in one build: its earlier runs are superseded, not summed."""
    _build_runs(tmp_path, "build-a")
    _build_runs(tmp_path, "build-a")
    per_run, per_stage, superseded = chapter.run_costs(tmp_path, build_id="build-a")
    assert per_stage["runs"].to_dict() == {"base": 1, "sft": 2} and superseded == 3
    assert list(per_stage.index) == ["base", "sft"]
    newest = results.load_runs(tmp_path, True).sort_values("started").groupby(["stage", "split"], dropna=False).tail(1)
    assert per_stage.loc["base", "seconds"] == pytest.approx(newest[newest.stage == "base"]["seconds"].sum())


def test_significance_display_is_compact_and_grouped(tmp_path, monkeypatch):
    table = chapter.significance(_two_stage_runs(tmp_path), n_bootstrap=100)
    view = chapter.significance_display(table)
    assert list(view.index.names) == ["comparison", "test set", "metric"]
    assert list(view.columns) == ["scores", "delta", "95% CI", "p", "Holm-adjusted p", "verdict"]
    first = view.iloc[0]
    assert first["scores"].endswith("\u00a0→ 100.00") and first["delta"].startswith("+")
    assert view.index[0][1] == "test (2016 Flickr)"  # test sets by name
    assert "\u00a0to\u00a0" in first["95% CI"]
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    chapter.show_significance(table)
    heading, part, caption = shown  # one comparison: its heading, its table, the signatures
    assert "sft vs base" in heading.data and list(part.index.names) == ["test set", "metric"]
    assert "bs:100|seed:12345" in caption.data


def _training_run(root, stage, build_id, **config):
    run = results.Run.create(stage, {"build_id": build_id, **config}, root=root, name=stage)
    (run.path / "adapter").mkdir()
    (run.path / "adapter" / "adapter_config.json").write_text("{}")
    run.finish()
    return run


def test_grpo_trained_from_a_superseded_sft_run_gets_a_warning_naming_both_and_the_fix(tmp_path):
    """--only 03_sft after chapter 4: the newest GRPO run continued the old SFT adapter; chapter 5 says so."""
    old_sft = _training_run(tmp_path, "sft", "build-a")
    grpo = _training_run(tmp_path, "grpo", "build-a", from_sft_run=old_sft.run_id)
    assert chapter.stale_grpo_notice(tmp_path, build_id="build-a") is None  # GRPO continued the newest SFT run
    _training_run(tmp_path, "sft", "build-b")  # another build's newer SFT run changes nothing here
    assert chapter.stale_grpo_notice(tmp_path, build_id="build-a") is None

    new_sft = _training_run(tmp_path, "sft", "build-a")  # chapter 3 executed again
    box = chapter.stale_grpo_notice(tmp_path, build_id="build-a")
    assert box is not None and 'class="admonition warning"' in box.data
    assert grpo.run_id in box.data and old_sft.run_id in box.data and new_sft.run_id in box.data
    assert "--only 04_grpo,05_results" in box.data

    _training_run(tmp_path, "grpo", "build-a", from_sft_run=new_sft.run_id)  # chapter 4 executed again: agreed
    assert chapter.stale_grpo_notice(tmp_path, build_id="build-a") is None
    _training_run(tmp_path, "grpo", "build-a", from_sft_run=None)  # from_sft off: no SFT adapter to disagree with
    assert chapter.stale_grpo_notice(tmp_path, build_id="build-a") is None
    assert chapter.stale_grpo_notice(tmp_path / "nothing") is None
