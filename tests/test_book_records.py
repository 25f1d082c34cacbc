"""What the book runner records and says (build.json's revisions, the line Ctrl-C leaves after the chapters)."""
from pathlib import Path

from mtlib import book, profiles


def _profile(tmp_path, extra=""):
    path = tmp_path / "pinned.yaml"
    path.write_text("description: pinned revisions\nrequires_cuda: false\ndataset: bentrevett/multi30k\n"
                    "model: some-org/some-model\n" + extra)
    return profiles.load_profile(path)


def test_build_json_records_the_pinned_model_and_dataset_revisions(tmp_path):
    record = book.new_build(_profile(tmp_path, "model_revision: abc123\ndataset_revision: v2.0\n"))
    assert (record["model"], record["model_revision"]) == ("some-org/some-model", "abc123")
    assert (record["dataset"], record["dataset_revision"]) == ("bentrevett/multi30k", "v2.0")
    unpinned = book.new_build(_profile(tmp_path))
    assert unpinned["model_revision"] is None and unpinned["dataset_revision"] is None  # None: the newest


def _chapters(folder, *names):
    """Chapters of one quick cell each (with the parameters cell papermill fills)."""
    import nbformat
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
        params = nbformat.v4.new_code_cell("profile = None")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), params, nbformat.v4.new_code_cell("x = 1")]
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def _one_line(err):
    lines = [line for line in err.splitlines() if line.startswith("[book]")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ctrl_c_during_the_final_token_check_says_the_build_was_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the chapters (the leak check that ends every build) keeps the whole build: the one line says
    so, names the executed chapter and how to run the check again, never "nothing was kept"."""
    notebooks, out = _chapters(tmp_path / "notebooks", "01_one"), tmp_path / "out"

    def ctrl_c(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(book, "find_secret", ctrl_c)
    rc = book.main(["--out", str(out), "--no-html", "--notebooks", str(notebooks)])
    line = _one_line(capsys.readouterr().err)
    record = book.read_build(out)
    assert rc == 130 and record["status"] == "finished" and (out / "book" / "executed" / "01_one.ipynb").exists()
    assert line.startswith("[book] interrupted after the chapters, during the final token-leak check: kept build "
                           f"{record['build_id']} in {out} (finished; executed: 01_one)"), line
    assert "--resume --no-html runs it again" in line and "nothing was kept" not in line


def test_ctrl_c_during_cleans_move_aside_says_what_moved_and_what_stayed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    earlier = book.new_build(profiles.load_profile("smoke"))
    book._save_build(out, earlier)
    (out / "runs").mkdir()
    (out / "book").mkdir()
    real_replace = book.os.replace

    def replace(src, dst):  # Ctrl-C while --clean moves runs/, after build.json went
        if Path(src) == out / "runs":
            raise KeyboardInterrupt
        return real_replace(src, dst)
    monkeypatch.setattr(book.os, "replace", replace)
    rc = book.main(["--out", str(out), "--clean", "--no-html", "--notebooks", str(_chapters(tmp_path / "nb", "01_x"))])
    line = _one_line(capsys.readouterr().err)
    dest = tmp_path / f"out.old-{earlier['build_id']}"
    assert rc == 130 and (dest / "build.json").exists() and (out / "runs").is_dir() and (out / "book").is_dir()
    assert line == (f"[book] interrupted while --clean moved the earlier build aside: build.json now in {dest}, "
                    f"runs, book still in {out}; nothing new was built. Move those into {dest} to keep that build "
                    f"whole, then build again"), line


def test_ctrl_c_before_anything_ran_says_nothing_was_kept(tmp_path, monkeypatch, capsys):
    def ctrl_c(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(book.profiles, "load_profile", ctrl_c)
    assert book.main(["--out", str(tmp_path / "out"), "--no-html"]) == 130
    assert _one_line(capsys.readouterr().err) == "[book] interrupted before any chapter ran; nothing was kept"


def test_only_re_executing_a_chapter_that_later_chapters_read_names_them_and_the_fix(tmp_path, capsys):
    """--only 03_sft in a build whose 04_grpo and 05_results ran before: they still read the superseded SFT run;
    the runner says which and prints the command's fix (the same advice as chapter 5's warning box)."""
    notebooks, out = _chapters(tmp_path / "notebooks", "03_sft", "04_grpo", "05_results"), tmp_path / "out"
    args = ["--out", str(out), "--no-html", "--notebooks", str(notebooks)]
    assert book.main(args) == 0
    assert "note:" not in capsys.readouterr().out  # a whole build: nothing is stale
    record = book.read_build(out)
    for name, when in (("03_sft", "2026-01-01T00:00:01+00:00"), ("04_grpo", "2026-01-01T00:00:02+00:00"),
                       ("05_results", "2026-01-01T00:00:03+00:00")):
        record["chapters"][name]["finished"] = when  # an earlier day: the re-execution below finishes later
    book._save_build(out, record)
    assert book.main(args + ["--only", "03_sft"]) == 0
    said = capsys.readouterr().out
    assert ("[book] note: 04_grpo still uses the runs 03_sft made before it was executed again; 05_results still "
            "uses the runs 03_sft made before it was executed again: re-execute them with --only 04_grpo,05_results"
            ) in said, said
    assert book.main(args + ["--only", "04_grpo,05_results"]) == 0
    assert "note:" not in capsys.readouterr().out
