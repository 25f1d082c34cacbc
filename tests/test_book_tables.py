"""The results chapter's tables from stored runs: paired significance and translations side by side."""
import pandas as pd

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
    row = table[(table.comparison == "sft vs base") & (table.metric == "bleu")].iloc[0]
    assert round(row["score after"], 6) == 100.0 and row["delta"] > 50 and row["significant (p < 0.05)"]
    assert set(table.comparison) == {"sft vs base"}    # no GRPO run: no GRPO comparison
    side = chapter.stored_side_by_side(runs, n=3)
    assert list(side.columns) == ["source", "base", "sft", "reference"]
    assert list(side["sft"]) == REFS[:3] and list(side["source"]) == SOURCES[:3]


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
