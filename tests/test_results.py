"""Run records: exclusive folders, atomic writes, scrubbed tokens, load_runs."""
import json
import threading

import pytest

from mtlib import results
from mtlib.errors import ConfigError
from mtlib.results import Run, atomic_write_text, load_runs


def test_concurrent_runs_never_share_a_folder(tmp_path):
    made, errors = [], []

    def worker():
        try:
            for _ in range(5):
                made.append(Run.create("sft", {"lr": 1e-4}, root=tmp_path).path)
        except Exception as e:  # pragma: no cover - a failure is reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(made) == 40 and len(set(made)) == 40
    assert len(list(tmp_path.iterdir())) == 40
    assert all("-sft-" in p.name for p in made)


def test_run_files_and_load_runs(tmp_path):
    run = Run.create("base", {"model": "tiny", "batch_size": 8}, root=tmp_path, name="baseline")
    with run.timer("translate"):
        pass
    run.write_translations([{"source": "A dog.", "reference": "Ein Hund.", "hypothesis": "Ein Hund."}])
    run.finish({"bleu": 42.0, "chrf": 60.0, "ter": 30.0, "bleu_signature": "nrefs:1|case:mixed"}, split="test")
    for f in ("config.json", "env.json", "status.json", "timings.json", "metrics.json", "translations.jsonl"):
        assert (run.path / f).is_file(), f
    assert run.status == "finished"
    env = json.loads((run.path / "env.json").read_text())
    assert env["packages"]["torch"] and env["python"]
    timings = json.loads((run.path / "timings.json").read_text())
    assert timings["translate"] >= 0 and timings["peak_mem_gb"] > 0

    failed = Run.create("sft", {"model": "tiny"}, root=tmp_path)
    failed.fail(RuntimeError("boom"))
    status = json.loads((failed.path / "status.json").read_text())
    assert (status["status"], status["error"]) == ("failed", "RuntimeError: boom")
    Run.create("grpo", {}, root=tmp_path)  # still running

    df = load_runs(tmp_path)
    assert list(df.run_id) == [run.run_id]
    row = df.iloc[0]
    assert (row["stage"], row["name"], row["split"], row["model"], row["bleu"]) == ("base", "baseline", "test", "tiny", 42.0)
    assert row.bleu_signature == "nrefs:1|case:mixed"
    assert results.read_translations(run.path).hypothesis.tolist() == ["Ein Hund."]


def test_load_runs_multi_split_and_empty(tmp_path):
    assert load_runs(tmp_path / "missing").empty
    run = Run.create("sft", {}, root=tmp_path)
    run.finish({"test": {"bleu": 1.0}, "test_2017_flickr": {"bleu": 2.0}})
    train = Run.create("sft", {}, root=tmp_path)
    train.finish()
    df = load_runs(tmp_path)
    assert sorted(df.split) == ["test", "test_2017_flickr"]
    assert len(load_runs(tmp_path, include_unscored=True)) == 3


def test_atomic_write_keeps_old_content_on_crash(tmp_path):
    path = tmp_path / "translations.jsonl"
    atomic_write_text(path, "old\n")

    def lines():
        yield "new line 1\n"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, lines())
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["translations.jsonl"]


def test_write_json_crash_mid_dump_leaves_old_file(tmp_path, monkeypatch):
    run = Run.create("base", {"a": 1}, root=tmp_path)
    before = (run.path / "config.json").read_text()
    real_fdopen = results.os.fdopen

    class Broken:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, s):
            self.f.write(s[: len(s) // 2])
            raise OSError("killed mid-write")

    monkeypatch.setattr(results.os, "fdopen", lambda fd, *a, **k: Broken(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError):
        run.write_json("config.json", {"a": 2})
    assert (run.path / "config.json").read_text() == before
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_config_is_scrubbed_of_tokens(tmp_path, monkeypatch):
    from mtlib.credentials import REDACTED
    other = "hf_" + "AbCdEf0123456789" * 2          # shaped like a Hugging Face token, not the current one
    monkeypatch.setenv("HF_TOKEN", "fake-secret-0123456789")
    run = Run.create("sft", {"hf_token": "abc", "nested": {"auth": other, "note": "uses fake-secret-0123456789"},
                             "max_new_tokens": 64, "pad_token": "<|finetune_right_pad_id|>"}, root=tmp_path)
    text = (run.path / "config.json").read_text()
    cfg = json.loads(text)
    assert "fake-secret" not in text and other not in text and "abc" not in text
    assert cfg["max_new_tokens"] == 64 and cfg["pad_token"] == "<|finetune_right_pad_id|>"
    assert cfg["hf_token"] == REDACTED


def test_bad_stage_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="stage"):
        Run.create("My Stage!", {}, root=tmp_path)


def _scored_run(root, stage="base", build_id=None, n=3):
    run = Run.create(stage, {"model": "tiny", "build_id": build_id}, root=root)
    run.write_translations([{"source": f"s{i}", "reference": f"r{i}", "hypothesis": f"h{i}"} for i in range(n)])
    run.finish({"bleu": 10.0, "n": n}, split="test")
    return run


def _cut(path, keep=None):
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if keep is None else keep)


@pytest.mark.parametrize("name, damage", [
    ("config.json", _cut),                                              # truncated JSON
    ("metrics.json", _cut),
    ("status.json", _cut),
    ("timings.json", _cut),
    ("metrics.json", lambda p: _cut(p, "[]")),                          # valid JSON, wrong shape
    ("metrics.json", lambda p: _cut(p, '{"test": null}')),
    ("translations.jsonl", _cut),                                       # cut inside a line
    ("translations.jsonl", lambda p: _cut(p, p.read_text().splitlines(keepends=True)[0])),  # cut at a line end
])
def test_damaged_record_is_skipped_with_a_warning_naming_the_file(tmp_path, name, damage):
    from mtlib.errors import DataError
    good = _scored_run(tmp_path, "base")
    bad = _scored_run(tmp_path, "sft")
    damage(bad.path / name)
    with pytest.warns(results.DamagedRecordWarning, match=rf"{bad.path.name}.*{name}|{name}.*{bad.path.name}"):
        df = load_runs(tmp_path, include_unscored=True)
    assert list(df.run_id) == [good.run_id]
    damaged = results.damaged_records(tmp_path)
    assert list(damaged.run_id) == [bad.run_id] and name in damaged.problem[0]
    if name == "translations.jsonl" and damage is _cut:  # cut inside a line: read_translations names it
        with pytest.raises(DataError, match=rf"{name}, line \d+: not valid JSON"):
            results.read_translations(bad.path)


def test_load_runs_filters_by_build(tmp_path):
    a, b = _scored_run(tmp_path, build_id="build-a"), _scored_run(tmp_path, build_id="build-b")
    _scored_run(tmp_path)  # a run made outside any build
    assert list(load_runs(tmp_path, build_id="build-a").run_id) == [a.run_id]
    assert list(load_runs(tmp_path, build_id="build-b").build_id) == ["build-b"]
    assert len(load_runs(tmp_path)) == 3
    assert b.run_id in set(load_runs(tmp_path).run_id)


def test_git_commit_names_only_the_checkout_whose_top_holds_mtlib(tmp_path):
    """An exported copy inside another repository (the GPU runs' `git archive` folder) has no commit of its own."""
    import subprocess
    from mtlib.results import git_commit

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "f").write_text("x")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "exported").mkdir()
    assert git_commit(tmp_path) == git("rev-parse", "HEAD")
    assert git_commit(tmp_path / "exported") is None
    assert git_commit(tmp_path / "missing") is None
