"""Batched translation (order, batch invariance, truncation, OOM back-off) and evaluation records."""
import json

import pytest
import torch

from mtlib.errors import ConfigError, DataError
from mtlib.generate import build_prompts, evaluate, translate
from mtlib.modeling import TrainedModel
from mtlib.results import load_runs


def test_greedy_output_independent_of_batch_size(tiny, pairs):
    model, tok = tiny
    sources = [en for en, _ in pairs[:8]]
    outs = {bs: translate(model, tok, sources, batch_size=bs, max_new_tokens=12, progress=False) for bs in (1, 3, 8)}
    assert outs[1] == outs[3] == outs[8]
    assert len(set(outs[1])) > 1  # the outputs differ by input: order is kept, not shuffled


def test_outputs_are_only_new_tokens_in_input_order(tiny, pairs):
    model, tok = tiny
    sources = [en for en, _ in pairs[:5]]
    one_by_one = [translate(model, tok, [s], max_new_tokens=8, progress=False)[0] for s in sources]
    together = translate(model, tok, sources[::-1], batch_size=5, max_new_tokens=8, progress=False)
    assert together == one_by_one[::-1]
    assert not any("assistant" in o or "You are" in o for o in together)


def test_stops_at_end_of_turn(tiny, monkeypatch):
    model, tok = tiny
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    real = model.generate

    def generate(**kw):
        assert eot in kw["generation_config"].eos_token_id and kw["generation_config"].do_sample is False
        return real(**kw)

    monkeypatch.setattr(model, "generate", generate)
    translate(model, tok, ["A dog."], max_new_tokens=4, progress=False)


def test_long_inputs_are_truncated_and_counted(tiny):
    model, tok = tiny
    long = " ".join(["A man in a red shirt walks his dog along the beach."] * 40)
    prompts, n = build_prompts(tok, [long, "A dog."], max_input_tokens=120)
    assert n == 1
    assert len(tok(prompts[0], add_special_tokens=False).input_ids) <= 120
    assert prompts[0].endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "A man in a red shirt" in prompts[0]
    outs, stats = translate(model, tok, [long, "A dog."], max_input_tokens=120, max_new_tokens=4,
                            return_stats=True, progress=False)
    assert stats.truncated == 1 and len(outs) == 2
    with pytest.raises(ConfigError, match="max_input_tokens"):
        build_prompts(tok, ["A dog."], max_input_tokens=5)


def test_out_of_memory_halves_the_batch(tiny, pairs, monkeypatch):
    model, tok = tiny
    sources = [en for en, _ in pairs[:7]]
    want = translate(model, tok, sources, batch_size=1, max_new_tokens=6, progress=False)
    real, sizes = model.generate, []

    def generate(**kw):
        sizes.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(**kw)

    monkeypatch.setattr(model, "generate", generate)
    outs, stats = translate(model, tok, sources, batch_size=8, max_new_tokens=6, return_stats=True, progress=False)
    assert outs == want
    assert stats.batch_size_used == 2 and stats.oom_retries == 2 and sizes[:3] == [7, 4, 2]

    def always_oom(**kw):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(model, "generate", always_oom)
    with pytest.raises(RuntimeError, match="out of memory"):
        translate(model, tok, sources[:2], batch_size=2, progress=False)


def test_other_errors_are_not_swallowed(tiny, monkeypatch):
    model, tok = tiny
    calls = []

    def broken(**kw):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        translate(model, tok, ["A dog.", "A cat."], batch_size=2, progress=False)
    assert len(calls) == 1


def test_bad_inputs(tiny):
    with pytest.raises(DataError, match="list"):
        translate(*tiny, "A dog.")
    with pytest.raises(ConfigError, match="batch_size"):
        translate(*tiny, ["A dog."], batch_size=0)


def test_evaluate_writes_a_labelled_run(tmp_path, tiny, pairs):
    from datasets import Dataset
    split = Dataset.from_dict({"en": [p[0] for p in pairs[:6]], "de": [p[1] for p in pairs[:6]]})
    ev = evaluate(tiny, split, name="baseline", runs_root=tmp_path, batch_size=4, max_new_tokens=8,
                  split_name="validation")
    assert ev.stage == "base" and set(ev.translations.columns) == {"source", "reference", "hypothesis"}
    assert ev.translations.reference.tolist() == [p[1] for p in pairs[:6]]
    assert 0 <= ev.metrics["bleu"] <= 100 and "bleu_signature" in ev.metrics
    lines = (ev.run_dir / "translations.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["source"] == pairs[0][0] and len(lines) == 6

    sft = TrainedModel(*tiny, stage="sft", base_name="tiny")
    ev2 = evaluate(sft, split, name="after SFT", runs_root=tmp_path, batch_size=4, max_new_tokens=8)
    df = load_runs(tmp_path)
    assert sorted(zip(df.stage, df.split)) == [("base", "validation"), ("sft", "test")]
    assert df.set_index("stage").loc["sft", "bleu"] == pytest.approx(ev2.metrics["bleu"])
    assert "-sft-" in ev2.run_dir.name


def test_evaluate_failure_marks_run_failed(tmp_path, tiny, monkeypatch):
    from datasets import Dataset
    model, tok = tiny
    monkeypatch.setattr(model, "generate", lambda **kw: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError):
        evaluate((model, tok), Dataset.from_dict({"en": ["A dog."], "de": ["Ein Hund."]}), runs_root=tmp_path)
    (run,) = list(tmp_path.iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert load_runs(tmp_path).empty
    with pytest.raises(DataError, match="'fr'"):
        evaluate((model, tok), Dataset.from_dict({"en": ["A dog."], "de": ["Ein Hund."]}), tgt_lang="fr",
                 runs_root=tmp_path)


def test_one_merged_copy_decodes_every_test_set_of_an_evaluation(tiny, pairs, tmp_path, monkeypatch):
    """chapter.evaluate_splits with fast_decode builds the merged copy once for all test sets, and its
    translations are the model's own greedy ones."""
    from datasets import Dataset, DatasetDict
    from mtlib import chapter, fastgen, generate, modeling, parameters

    model, tok = tiny
    built = []
    real = fastgen.merged_copy
    monkeypatch.setattr(generate, "merged_copy", lambda m, *a, **k: built.append(m) or real(m, *a, **k))
    def split(rows):
        return Dataset.from_dict({"en": [en for en, _ in rows], "de": [de for _, de in rows]})
    splits = DatasetDict({"train": split(pairs[:4]), "test": split(pairs[4:9]), "test_2017_flickr": split(pairs[9:13])})
    params = {**parameters.defaults("03_sft"), "runs_root": str(tmp_path), "eval_batch_size": 4, "max_new_tokens": 6,
              "fast_decode": True}
    trained = modeling.TrainedModel(model, tok, stage="base", base_name="tiny")
    fast = chapter.evaluate_splits(trained, splits, params, name="base")
    assert len(built) == 1 and list(fast) == ["test", "test_2017_flickr"]
    assert fast["test"].stats.setup_seconds > 0 and fast["test_2017_flickr"].stats.setup_seconds == 0  # once
    slow = chapter.evaluate_splits(trained, splits, {**params, "fast_decode": False}, name="base")
    assert len(built) == 1
    for split in fast:
        assert fast[split].translations["hypothesis"].tolist() == slow[split].translations["hypothesis"].tolist()


def test_a_max_length_in_the_model_config_gives_no_length_warning(tiny, pairs, capfd):
    from mtlib.generate import translate

    model, tok = tiny
    model.generation_config.max_length = 300  # as Unsloth leaves it
    translate(model, tok, [en for en, _ in pairs[:2]], max_new_tokens=4, progress=False)
    assert "seem to have been set" not in capfd.readouterr().err
    assert model.generation_config.max_length is None
