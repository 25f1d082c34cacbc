"""The book runner: a failing cell names chapter and cell; builds have an identity and never mix; one build per
folder; progress on the terminal; Ctrl-C; the smoke book builds, renders and leaks no token."""
import datetime as dt
import html as html_lib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mtlib import book, chapter

FAKE_TOKEN = "hf_fake_smoke_token_123"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def broken_chapter(folder: Path) -> Path:
    """A two-cell chapter whose second code cell raises."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("profile = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Broken"), params,
                nbformat.v4.new_code_cell("print('first cell ran')"),
                nbformat.v4.new_code_cell("raise ValueError('deliberate failure')"),
                nbformat.v4.new_code_cell("print('never runs')")]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "09_broken.ipynb"
    nbformat.write(nb, path)
    return path


def test_failing_chapter_names_chapter_and_cell_and_keeps_partial_notebook(tmp_path, capsys):
    broken_chapter(tmp_path / "notebooks")
    out = tmp_path / "out"
    rc = book.main(["--profile", "smoke", "--out", str(out), "--no-html", "--notebooks", str(tmp_path / "notebooks")])
    assert rc != 0
    err = capsys.readouterr().err
    partial = out / "failed" / "09_broken.ipynb"
    assert partial.exists(), "the partially executed notebook must stay on disk"
    assert not (out / "book" / "executed" / "09_broken.ipynb").exists(), "executed/ holds whole chapters only"
    assert json.loads((out / "build.json").read_text())["chapters"]["09_broken"]["status"] == "failed"
    nb = nbformat.read(partial, as_version=4)
    failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1
    count = nb.cells[failed[0]].execution_count
    assert re.search(rf"chapter 09_broken failed in cell \d+ \(In \[{count}\]: raise ValueError", err), err
    assert "ValueError: deliberate failure" in err and str(partial) in err
    ran = [c for c in nb.cells if c.cell_type == "code" and "first cell ran" in str(c.get("outputs"))]
    assert ran, "cells before the failure keep their outputs"


def test_runner_refuses_cuda_profile_on_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(book.profiles, "cuda_available", lambda: False)
    rc = book.main(["--profile", "seed", "--out", str(tmp_path / "out")])
    assert rc != 0 and "requires_cuda" in capsys.readouterr().err
    assert not (tmp_path / "out" / "book").exists(), "nothing may run before the profile is accepted"


def test_find_secret(tmp_path):
    (tmp_path / "a.txt").write_text("nothing here")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text(f"token={FAKE_TOKEN}")
    assert book.find_secret(tmp_path, FAKE_TOKEN) == [tmp_path / "sub" / "b.html"]


def test_launch_links_point_at_source_notebooks():
    context = {"header_buttons": [{"type": "group", "buttons": [
        {"url": "https://colab.research.google.com/github/mt-finetuning-book/mt-finetuning-book/blob/main/executed/03_sft.ipynb"}]}]}
    context["header_buttons"].append({"type": "group", "buttons": [{"url": "../_sources/executed/03_sft.ipynb"}]})
    book._fix_launch_urls(None, "executed/03_sft", "page.html", context, None)
    assert context["header_buttons"][0]["buttons"][0]["url"] == chapter.colab_link("03_sft")
    assert context["header_buttons"][1]["buttons"][0]["url"] == "../_sources/executed/03_sft.ipynb"  # download


def quick_chapter(folder: Path, name: str = "09_quick", cells=("print('hello')",)) -> Path:
    """A small chapter (parameters cell + ``cells``) that runs in a second: for the runner's own behaviour."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("profile = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), params, *map(nbformat.v4.new_code_cell, cells)]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def run_book(*args) -> tuple[int, str, str]:
    """``python -m mtlib.book ARGS`` in a subprocess (as a user runs it): return code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "mtlib.book", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=chapter.REPO_ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def start_book(*args, env: dict) -> subprocess.Popen:
    """``python -m mtlib.book ARGS`` started in a subprocess, its output piped (for the tests that press Ctrl-C)."""
    return subprocess.Popen([sys.executable, "-m", "mtlib.book", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=chapter.REPO_ROOT)


def read_until(proc: subprocess.Popen, *texts: str) -> str:
    """The runner's stdout, read line by line until one of ``texts`` has appeared."""
    seen = ""
    while not any(text in seen for text in texts):
        line = proc.stdout.readline()
        assert line, f"the runner ended early: {seen}{proc.stderr.read()}"
        seen += line
    return seen


def with_lib(lib: Path, **extra: str) -> dict:
    """The environment with ``lib`` first on PYTHONPATH (modules the test chapters import), plus ``extra``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]), **extra}


def build_record(out: Path) -> dict:
    return json.loads((out / "build.json").read_text())


def test_build_has_an_identity_and_a_rebuild_must_say_resume_or_clean(tmp_path, capsys):
    notebooks, out = quick_chapter(tmp_path / "nb"), tmp_path / "out"
    args = ["--out", str(out), "--no-html", "--notebooks", str(notebooks)]
    assert book.main(args + ["--resume"]) == 1 and "holds no build to continue" in capsys.readouterr().err
    assert book.main(args) == 0
    first = build_record(out)
    assert first["build_id"].split("-")[1] == "smoke" and (first["profile"], first["model"], first["dataset"]) == \
        ("smoke", "tiny", "multi30k")
    assert first["started"] and first["status"] == "finished" and first["chapters"]["09_quick"]["status"] == "executed"
    capsys.readouterr()

    assert book.main(args) == 1  # the same command again: refused, never mixed
    err = capsys.readouterr().err
    assert f"already holds build {first['build_id']}" in err and "--resume" in err and "--clean" in err

    assert book.main(args + ["--resume"]) == 0  # continues: same build, nothing left to execute
    assert build_record(out)["build_id"] == first["build_id"] and "every chapter of build" in capsys.readouterr().out
    assert book.main(args + ["--only", "09_quick"]) == 0  # re-executes one chapter within the build
    assert build_record(out)["chapters"]["09_quick"]["executions"] == 2

    assert book.main(args + ["--clean"]) == 0  # moves the old build aside, starts a new one
    second = build_record(out)
    old = tmp_path / f"out.old-{first['build_id']}"
    assert second["build_id"] != first["build_id"] and build_record(old)["build_id"] == first["build_id"]
    assert (old / "book" / "executed" / "09_quick.ipynb").exists() and f"aside to {old}" in capsys.readouterr().out
    assert book.main(args + ["--resume", "--clean"]) == 1 and "one of them" in capsys.readouterr().err


def test_only_into_a_build_of_another_profile_is_refused(tmp_path, capsys):
    """--only 04_grpo must never continue another build's SFT adapter, of another model perhaps."""
    notebooks, out = quick_chapter(tmp_path / "nb"), tmp_path / "out"
    other = tmp_path / "other.yaml"
    other.write_text((book.profiles.PROFILE_DIR / "smoke.yaml").read_text().replace("model: tiny", "model: gpt2"))
    assert book.main(["--out", str(out), "--no-html", "--notebooks", str(notebooks)]) == 0
    capsys.readouterr()
    assert book.main(["--profile", str(other), "--out", str(out), "--no-html", "--notebooks", str(notebooks),
                      "--only", "09_quick"]) == 1
    err = capsys.readouterr().err
    assert "profile is 'smoke', not 'other'" in err and "model is 'tiny', not 'gpt2'" in err and "--clean" in err
    assert book.main(["--out", str(out), "--notebooks", str(notebooks), "--only", "09_nope"]) == 1
    assert "unknown chapters 09_nope" in capsys.readouterr().err


def test_one_build_at_a_time_per_folder(tmp_path, capsys):
    notebooks, out = quick_chapter(tmp_path / "nb"), tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from mtlib.book import BuildLock; lock = BuildLock(Path(sys.argv[1])).__enter__(); "
                               "print('locked', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True, cwd=chapter.REPO_ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert book.main(["--out", str(out), "--no-html", "--notebooks", str(notebooks)]) == 1
        err = capsys.readouterr().err
        assert f"another build is writing to {out} (pid {holder.pid}" in err
        assert not (out / "build.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert book.main(["--out", str(out), "--no-html", "--notebooks", str(notebooks)]) == 0  # the lock died with it


def _out_cases(tmp_path):
    repo = chapter.REPO_ROOT
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    return [(".", "repository's root"), (str(repo), "repository's root"), (str(repo.parent), "holds the repository"),
            (str(repo / "notebooks" / "out"), "inside the repository's notebooks/ folder"),
            (str(repo / "mtlib"), "inside the repository's mtlib/ folder"),
            (str(repo / "benchmarks" / "results" / "x"), "inside the repository's benchmarks/ folder"),
            (str(tmp_path / "file.txt"), "is a file"), (str(tmp_path / "file.txt" / "sub"), "is a file"),
            ("/proc/mtlib-book-out", "/proc"), (str(tmp_path / "mine"), "holds other files (thesis.tex)")]


def test_out_that_cannot_take_a_build_is_refused_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(chapter.REPO_ROOT)  # so that --out . is the repository
    before = sorted(p.name for p in chapter.REPO_ROOT.iterdir())
    for out, message in _out_cases(tmp_path):
        assert book.main(["--out", out, "--no-html"]) == 1, out
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (out, err)
    assert sorted(p.name for p in chapter.REPO_ROOT.iterdir()) == before, "nothing may land in the repository"
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    monkeypatch.setattr(book.os, "access", lambda path, mode: False)  # what a user without write access sees
    assert book.main(["--out", str(tmp_path / "new"), "--no-html"]) == 1
    assert f"{tmp_path} is not writable by this user" in capsys.readouterr().err


def test_earlier_output_without_identity_or_damaged_build_json_needs_clean(tmp_path, capsys):
    notebooks, out = quick_chapter(tmp_path / "nb"), tmp_path / "out"
    args = ["--out", str(out), "--no-html", "--notebooks", str(notebooks)]
    (out / "runs" / "20250101T000000Z-base-1").mkdir(parents=True)  # a build from before build.json
    assert book.main(args) == 1 and "without build.json (runs); pass --clean" in capsys.readouterr().err
    assert book.main(args + ["--resume"]) == 1
    assert book.main(args + ["--clean"]) == 0
    (out / "build.json").write_text('{"build_id": "x", "chap')  # cut short
    assert book.main(args + ["--resume"]) == 1 and "build.json is damaged" in capsys.readouterr().err
    assert book.main(args + ["--clean"]) == 0 and build_record(out)["status"] == "finished"
    assert len(list(tmp_path.glob("out.old-*"))) == 2


def test_progress_reaches_the_terminal_not_the_notebook_and_no_kernel_noise(tmp_path):
    notebooks = quick_chapter(tmp_path / "nb", "09_bars", cells=(
        "import sys\nprint('a real warning', file=sys.stderr)",
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(50), desc='work', mininterval=0):\n    pass",
        "print('done')"))
    out = tmp_path / "out"
    rc, stdout, stderr = run_book("--out", out, "--no-html", "--notebooks", notebooks)
    assert rc == 0, stderr
    assert "[book] 09_bars (1/1): executing with profile smoke" in stdout
    assert re.search(r"^\[book\] 09_bars cell 4/5 \d+s: from tqdm.auto import tqdm$", stdout, re.M), stdout
    assert re.search(r"^\[book\] 09_bars cell 4/5 \d+s work: 100%\|.*50/50", stdout, re.M), stdout
    assert len(re.findall(r"work: 100%", stdout)) == 1, stdout  # refreshed at 100% and closed: one line
    both = stdout + stderr
    for noise in ("IPKernelApp", "without encryption", "Traceback", "a real warning", "WARNING"):
        assert noise not in both, noise
    nb = nbformat.read(out / "book" / "executed" / "09_bars.ipynb", as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "a real warning" in outputs and "100%|" not in outputs and "work:" not in outputs
    assert (out / "kernels.log").exists() and not (out / "running").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_each_task_has_one_bar_line_on_the_terminal():
    """tqdm's last refresh and its close both print 100% (with other times): one line per task, also when two
    tasks in a row have the same bar; on a terminal a finished bar keeps its line."""
    stderr = ["translate:   0%|          | 0/24 [00:00<?, ?sent/s]\r",
              "translate: 100%|██████████| 24/24 [00:00<00:00, 117.12sent/s]\r",
              "translate: 100%|██████████| 24/24 [00:00<00:00, 116.90sent/s]\n",
              "translate:   0%|          | 0/24 [00:00<?, ?sent/s]\r"
              "translate: 100%|██████████| 24/24 [00:00<00:00, 98.50sent/s]\r"
              "translate: 100%|██████████| 24/24 [00:00<00:00, 98.40sent/s]\n"]
    log = io.StringIO()
    progress = book.Progress(log, every=3600)
    progress.chapter = "03_sft"
    for text in stderr:
        progress.write(text)
    finished = [line for line in log.getvalue().splitlines() if "100%|" in line]
    assert len(finished) == 2, log.getvalue()  # two tasks, one line each
    tty = _Terminal()
    progress = book.Progress(tty)
    progress.chapter = "03_sft"
    for text in stderr:
        progress.write(text)
    progress.close()
    shown = [line.rsplit("\r", 1)[-1] for line in tty.getvalue().split("\n") if line.strip()]
    assert len(shown) == 2 and all("24/24" in line for line in shown), tty.getvalue()


def _notebook_to_tidy(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    defaults = nbformat.v4.new_code_cell("profile = None")
    defaults.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("profile = 'smoke'\nruns_root = '/somewhere/build/runs'")
    injected.metadata["tags"] = ["injected-parameters"]
    banner = nbformat.v4.new_code_cell("import mtlib.modeling")
    banner.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=(
            "\N{SLOTH} Unsloth: Will patch your computer to enable 2x faster free finetuning.\n"
            "\N{SLOTH} Unsloth Zoo will now patch everything to make training faster!\n"
            "==((====))==  Unsloth 2026.10.9: Fast Llama patching. Transformers: 5.17.0.\n"
            "   \\\\   /|    NVIDIA H100. Num GPUs = 1. Max memory: 79.2 GB. Platform: Linux.\n"
            "O^O/ \\_/ \\    Torch: 2.13.0. CUDA: 9.0. CUDA Toolkit: 12.8. Triton: 3.5.0\n"
            "\\        /    Bfloat16 = TRUE. FA [Xformers = None. FA2 = False]\n"
            ' "-____-"     Free license: http://github.com/unslothai/unsloth\n'
            "Unsloth: Fast downloading is enabled - ignore downloading bars which are red colored!\n"
            "loaded the model\n")),
        nbformat.v4.new_output("stream", name="stderr", text=(
            "translate: 100%|██████████| 24/24 [00:00<00:00, 117.12sent/s]\n"
            "mtlib/train.py:12: UserWarning: a real warning\n"))]
    png = "iVBORw0KGgo="  # the bytes do not matter here
    alone = nbformat.v4.new_code_cell("plots.training_curves(...)")
    alone.outputs = [nbformat.v4.new_output("execute_result", data={"image/png": png, "text/plain": "<Figure>"},
                                            metadata={"image/png": {"alt": "Two line charts.",
                                                                    "caption": "Loss by step."}}, execution_count=1)]
    mixed = nbformat.v4.new_code_cell("display(table); display(fig)")
    mixed.outputs = [nbformat.v4.new_output("display_data", data={"text/html": "<table></table>"}),
                     nbformat.v4.new_output("display_data", data={"image/png": png},
                                            metadata={"image/png": {"alt": "Bars.", "caption": "Scores."}})]
    nb.cells = [defaults, injected, banner, alone, mixed]
    nbformat.write(nb, path)
    return path


def test_published_notebook_hides_boilerplate_drops_banners_and_describes_figures(tmp_path):
    path = _notebook_to_tidy(tmp_path / "09_tidy.ipynb")
    assert book.tidy_notebook(path) > 0
    nb = nbformat.read(path, as_version=4)
    defaults, injected, banner, alone, mixed = nb.cells
    assert defaults.metadata.tags == ["parameters", "remove-cell"]  # papermill still finds its cell
    assert injected.metadata.tags == ["injected-parameters", "remove-cell"]
    stdout, stderr = banner.outputs
    assert stdout.text == "loaded the model\n"
    assert stderr.text == "mtlib/train.py:12: UserWarning: a real warning\n"  # warnings stay, bars go
    assert alone.metadata.mystnb == {"image": {"alt": "Two line charts."}, "figure": {"caption": "Loss by step."}}
    assert "mystnb" not in mixed.metadata  # a caption of the cell would wrap the table too: the figure has its own
    assert mixed.outputs[1].data["text/html"] == ('<figure class="mtlib-figure"><img src="data:image/png;base64,'
                                                  'iVBORw0KGgo=" alt="Bars."/><figcaption>Scores.</figcaption></figure>')
    before = path.read_text()
    assert book.tidy_notebook(path) == 0 and path.read_text() == before  # once is enough


def _build_folder_with_one_chapter(out: Path, profile="smoke") -> list[Path]:
    prof = book.profiles.load_profile(profile, check_device=False)
    record = {"build_id": "20261201T120000Z-smoke-abcdef", "profile": prof["name"], "profile_path": prof["path"],
              "model": "tiny", "dataset": "multi30k", "started": "2026-12-01T12:00:00+00:00",
              "git_commit": "0123456789abcdef", "status": "finished", "chapters": {}}
    out.mkdir(parents=True)
    (out / "build.json").write_text(json.dumps(record))
    executed = out / "book" / "executed"
    executed.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 1. The data")]),
                   executed / "01_data.ipynb")
    return [executed / "01_data.ipynb"]


def test_the_intro_names_the_build_and_the_source_page_stays_as_it_is(tmp_path):
    source = (chapter.REPO_ROOT / "book" / "intro.md").read_text()
    out = tmp_path / "build"
    book_dir = book.assemble(out, _build_folder_with_one_chapter(out))
    intro = (book_dir / "intro.md").read_text()
    block = intro[intro.index(book.BUILD_BLOCK_START):intro.index(book.BUILD_BLOCK_END)]
    assert "smoke build: its numbers mean nothing" in block and ":class: warning" in block
    for fact in ("**profile**: `smoke`", "**model**: `tiny` (a tiny random model)", "English into German",
                 "200 training pairs", "**built**: 2026-12-01", "20261201T120000Z-smoke-abcdef", "0123456789ab"):
        assert fact in block, fact
    assert intro.splitlines()[0] == source.splitlines()[0] and intro.splitlines()[2] == book.BUILD_BLOCK_START
    assert (chapter.REPO_ROOT / "book" / "intro.md").read_text() == source
    assert (book_dir / "_static" / "mtlib.css").is_file()
    book.assemble(out, list((out / "book" / "executed").glob("*.ipynb")))  # again: still one block
    assert (book_dir / "intro.md").read_text().count(book.BUILD_BLOCK_START) == 1


def test_ctrl_c_ends_with_one_line_saying_what_was_kept(tmp_path):
    """Ctrl-C interrupts the running cell (its run record is marked failed), keeps the partial notebook, prints one
    line, no traceback; --resume then executes the chapter again in the same build."""
    runs = tmp_path / "out" / "runs"
    slow = ("import os, time\nfrom mtlib.results import Run\n"
            "run = Run.create('base', {}, root=os.environ['MTLIB_TEST_RUNS'])\n"
            "try:\n    for _ in range(600 if os.environ.get('MTLIB_TEST_SLOW') else 1):\n        time.sleep(0.1)\n"
            "except BaseException as exc:\n    run.fail(exc)\n    raise\nrun.finish()")
    notebooks = quick_chapter(tmp_path / "nb", "09_slow", cells=("print('before')", slow, "print('after')"))
    out = tmp_path / "out"
    env = {**os.environ, "MTLIB_TEST_RUNS": str(runs), "MTLIB_TEST_SLOW": "1"}
    proc = start_book("--out", out, "--no-html", "--notebooks", notebooks, env=env)
    seen = read_until(proc, "cell 4/5")
    deadline = time.monotonic() + 120  # the cell has started; wait until its run record exists (slow under load)
    while not list(runs.glob("*/status.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    record = build_record(out)
    kept = out / "failed" / "09_slow.ipynb"
    assert lines[0].startswith("[book] interrupted in 09_slow, cell 4/5, ")
    assert f"kept build {record['build_id']} in {out}" in lines[0] and str(kept) in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in seen + stdout and kept.exists()
    assert not (out / "book" / "executed" / "09_slow.ipynb").exists()
    assert record["status"] == "interrupted" and record["chapters"]["09_slow"]["status"] == "interrupted"
    (status,) = [json.loads(p.read_text()) for p in runs.glob("*/status.json")]
    assert status["status"] == "failed" and "KeyboardInterrupt" in status["error"]

    env.pop("MTLIB_TEST_SLOW")
    resumed = subprocess.run([sys.executable, "-m", "mtlib.book", "--out", str(out), "--no-html", "--notebooks",
                              str(notebooks), "--resume"], capture_output=True, text=True, env=env,
                             cwd=chapter.REPO_ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = build_record(out)
    assert after["build_id"] == record["build_id"] and after["chapters"]["09_slow"]["status"] == "executed"
    assert (out / "book" / "executed" / "09_slow.ipynb").exists() and not kept.exists()


def chromium() -> str:
    """The Chromium binary. Without one the browser checks are skipped with the reason, except where
    MTLIB_REQUIRE_BROWSER=1 (.ci/run sets it) makes a missing browser a failure."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    reason = "no Chromium on this machine to check the rendered book (apt-get install -y chromium)"
    if os.environ.get("MTLIB_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + "; MTLIB_REQUIRE_BROWSER=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Build the smoke book once, with a fake HF token in the environment and the Hub offline."""
    out = tmp_path_factory.mktemp("smoke") / "build"
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mtlib.book", "--profile", "smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1500, cwd=chapter.REPO_ROOT)
    assert proc.returncode == 0, f"smoke build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    (out.parent / "runner.stdout").write_text(proc.stdout)
    (out.parent / "runner.stderr").write_text(proc.stderr)
    return out


def copy_of(build: Path, dest: Path) -> Path:
    """A copy of a build folder, for the tests that build into it again (the module's smoke book stays as it is)."""
    shutil.copytree(build, dest, symlinks=True, ignore=shutil.ignore_patterns("screenshots", "_build"))
    return dest


def cell_text(notebook: Path, source_start: str) -> str:
    """The text/plain output of the code cell whose source starts with ``source_start``."""
    nb = nbformat.read(notebook, as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    return "".join("".join(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)


@pytest.mark.slow
def test_smoke_book_leaks_no_token(smoke_book):
    assert book.find_secret(smoke_book, FAKE_TOKEN) == []


@pytest.mark.slow
def test_smoke_book_has_every_chapter_executed_and_runs(smoke_book):
    executed = sorted(p.stem for p in (smoke_book / "book" / "executed").glob("*.ipynb"))
    assert executed == list(book.profiles.CHAPTERS)
    html = smoke_book / "book" / "_build" / "html"
    assert (html / "index.html").exists() and (html / "intro.html").exists()
    stages = {p.name.split("-")[1] for p in (smoke_book / "runs").iterdir() if p.is_dir()}
    assert {"base", "sft", "grpo"} <= stages
    record = build_record(smoke_book)
    assert record["status"] == "finished" and set(record["chapters"]) == set(book.profiles.CHAPTERS)
    configs = [json.loads(p.read_text()) for p in (smoke_book / "runs").glob("*/config.json")]
    assert configs and {c["build_id"] for c in configs} == {record["build_id"]}, "every run names its build"
    assert not (smoke_book / "running").exists() and not (smoke_book / "failed").exists()
    assert "None: every run record of this build was read." in json.dumps(
        nbformat.read(smoke_book / "book" / "executed" / "05_results.ipynb", as_version=4).cells[-1].outputs)


@pytest.mark.slow
def test_smoke_build_shows_progress_on_the_terminal_without_noise(smoke_book):
    stdout = (smoke_book.parent / "runner.stdout").read_text()
    stderr = (smoke_book.parent / "runner.stderr").read_text()
    assert re.search(r"^\[book\] 03_sft cell \d+/\d+ \d+s: sft_params = chapter.sft_params", stdout, re.M)
    assert re.search(r"^\[book\] 03_sft cell \d+/\d+ \d+s 100%\|.*it.*loss=", stdout, re.M), "the SFT bar"
    assert re.search(r"^\[book\] 04_grpo cell \d+/\d+ \d+s 100%\|.*reward=", stdout, re.M), "the GRPO bar"
    assert re.search(r"^\[book\] 03_sft cell \d+/\d+ \d+s translate: 100%\|", stdout, re.M)
    for noise in ("IPKernelApp", "without encryption", "Traceback", "WARNING"):
        assert noise not in stdout + stderr, noise
    for notebook in (smoke_book / "book" / "executed").glob("*.ipynb"):
        text = json.dumps([c.get("outputs", []) for c in nbformat.read(notebook, as_version=4).cells])
        assert "100%|" not in text and "<progress" not in text, f"{notebook.name}: a progress bar was published"


@pytest.mark.slow
def test_rebuild_into_the_same_folder_keeps_chapter_5s_numbers(smoke_book, tmp_path):
    """Building again into a build folder never mixes two builds' runs: a plain rebuild is refused; re-executing
    chapters in the build (then rendering with the chapters already there) counts each run behind chapter 5's
    tables once; --clean starts a build whose chapter 5 sees only its own runs."""
    out = copy_of(smoke_book, tmp_path / "build")
    first = build_record(out)
    assert run_book("--out", out)[0] == 1  # refused before anything runs

    rc, stdout, stderr = run_book("--out", out, "--only", "03_sft,05_results")  # HTML on: renders all six
    assert rc == 0, stderr[-3000:]
    assert f"continuing build {first['build_id']}" in stdout
    html = out / "book" / "_build" / "html" / "executed"
    assert sorted(p.stem for p in html.glob("0*.html")) == list(book.profiles.CHAPTERS)
    record = build_record(out)
    assert record["build_id"] == first["build_id"] and record["chapters"]["03_sft"]["executions"] == 2
    per_run, per_stage, superseded = chapter.run_costs(out / "runs", build_id=first["build_id"])
    assert per_stage["runs"].to_dict() == {"base": 4, "sft": 5, "grpo": 5} and superseded == 9
    table = cell_text(out / "book" / "executed" / "05_results.ipynb", "per_stage")
    assert re.search(r"^base\s+4\s", table, re.M) and re.search(r"^sft\s+5\s", table, re.M), table
    newest_sft = chapter.latest_run(out / "runs", "sft", build_id=first["build_id"])
    assert newest_sft["run_id"] in set(per_run["run_id"])

    rc, stdout, stderr = run_book("--out", out, "--clean", "--only", "03_sft,05_results", "--no-html")
    assert rc == 0, stderr[-3000:]
    second = build_record(out)
    assert second["build_id"] != first["build_id"] and (tmp_path / f"build.old-{first['build_id']}").is_dir()
    configs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/config.json")]
    assert {c["build_id"] for c in configs} == {second["build_id"]}
    table = cell_text(out / "book" / "executed" / "05_results.ipynb", "per_stage")
    assert re.search(r"^base\s+4\s", table, re.M) and re.search(r"^sft\s+5\s", table, re.M), table
    assert "grpo" not in table


@pytest.mark.slow
def test_damaged_run_records_are_skipped_with_a_warning_and_listed_in_chapter_5(smoke_book, tmp_path):
    out = copy_of(smoke_book, tmp_path / "build")
    runs = sorted((out / "runs").iterdir())
    base_eval = next(p for p in runs if "-base-" in p.name)
    sft_train = next(p for p in runs if "-sft-" in p.name and (p / "adapter").is_dir())
    (base_eval / "metrics.json").write_text('{"test": {"bleu": 1')  # cut short
    (sft_train / "config.json").write_text('{"stage": "sft", "na')
    rc, stdout, stderr = run_book("--out", out, "--only", "04_grpo,05_results", "--no-html")
    assert rc == 0, stderr[-3000:]
    grpo = json.dumps([c.get("outputs", []) for c in
                       nbformat.read(out / "book" / "executed" / "04_grpo.ipynb", as_version=4).cells])
    assert f"skipping damaged run record: {sft_train / 'config.json'} is not valid JSON" in grpo
    assert "No SFT adapter found: training one first" in grpo  # the damaged SFT run is not continued
    damaged = cell_text(out / "book" / "executed" / "05_results.ipynb", "damaged = ")
    assert base_eval.name in damaged and sft_train.name in damaged
    assert re.search(r"^base\s+3\s", cell_text(out / "book" / "executed" / "05_results.ipynb", "per_stage"), re.M)


@pytest.mark.slow
def test_render_only_renders_the_chapters_executed_so_far(tmp_path):
    out = tmp_path / "build"
    rc, stdout, stderr = run_book("--out", out, "--only", "01_data,02_metrics", "--no-html")
    assert rc == 0, stderr[-3000:]
    rc, stdout, stderr = run_book("--out", out, "--render-only")
    assert rc == 0, stderr[-3000:]
    assert "not executed in this build, so not in the book: 03_sft, 04_grpo, 05_results, 06_gpu_speed" in stdout
    html = out / "book" / "_build" / "html"
    assert (html / "index.html").exists() and (html / "executed" / "02_metrics.html").exists()
    assert not (html / "executed" / "03_sft.html").exists()
    assert build_record(out)["chapters"]["01_data"]["executions"] == 1  # nothing was executed again


@pytest.mark.slow
@pytest.mark.parametrize("name", list(book.profiles.CHAPTERS))
def test_smoke_chapter_renders_in_chromium(smoke_book, name, tmp_path):
    page = smoke_book / "book" / "_build" / "html" / "executed" / f"{name}.html"
    assert page.exists()
    flags = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<table" in dom, f"{name}: no table rendered"
    assert "<img" in dom, f"{name}: no figure rendered"
    assert "Traceback" not in dom and "output traceback" not in dom and "output_error" not in dom
    stderr_cells = re.findall(r'class="[^"]*output stderr[^"]*"[^>]*>(.*?)</div>', dom, flags=re.S)
    assert not [s for s in stderr_cells if re.search(r"error|exception", s, re.I)], f"{name}: errors on stderr"
    assert chapter.colab_link(name) in dom
    downloads = re.findall(r'href="([^"]*_sources/[^"]*\.ipynb)"', dom)
    assert downloads, f"{name}: no download button for the notebook"
    served = (page.parent / downloads[0]).resolve()
    assert served.is_file() and '"outputs": [\n' in served.read_text(), f"{name}: download is not the executed notebook"
    if name in ("03_sft", "04_grpo"):
        assert "Smoke build: the numbers in this chapter mean nothing" in dom
    shots = smoke_book / "screenshots"
    shots.mkdir(exist_ok=True)
    shot = shots / f"{name[:2]}.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("BOOK_SCREENSHOTS")  # e.g. build/screenshots, to look at them afterwards
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(keep) / shot.name)


# --------------------------------------------------------------------------- what a reader sees, in Chromium

# Run in a copy of a page (next to it, so that its styles and images load) once it has loaded: what the page
# measures is written into the DOM, which Chromium's --dump-dom returns.
PAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement, width = root.clientWidth;
  const clipped = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== "visible") return true;
    }
    return false;
  };
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (typeof el.className === "string" && el.className.trim() ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  const wide = [...document.body.querySelectorAll("*")].filter((el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > width + 1 && !clipped(el);
  }).slice(0, 10).map(name);
  // content cut off on the right: wider than a box of the article that hides what sticks out (not one that scrolls)
  const article = document.querySelector(".bd-article") || document.body;
  const cut = [...article.querySelectorAll("*")].filter((el) => {
    const r = el.getBoundingClientRect();
    if (!(r.width > 0 && r.height > 0)) return false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === "visible") continue;
      return (o === "hidden" || o === "clip") && r.right > a.getBoundingClientRect().right + 1;
    }
    return false;
  }).slice(0, 10).map(name);
  const caption = (img) => {  // a figure caption, or the caption line the runner puts after the image
    const figure = img.closest("figure"), cell = img.closest(".cell_output");
    const under = figure && figure.querySelector("figcaption");
    if (under) return under.textContent.trim();
    const line = cell && [...cell.querySelectorAll("em")].find(
      (em) => img.compareDocumentPosition(em) & Node.DOCUMENT_POSITION_FOLLOWING);
    return line ? line.textContent.trim() : "";
  };
  const images = [...document.images].map((img) => ({
    src: img.getAttribute("src") || "", alt: (img.getAttribute("alt") || "").trim(),
    output: !!img.closest(".cell_output"), caption: caption(img)}));
  const outputs = [...document.querySelectorAll(".cell_output")].map((el) => el.textContent);  // folded ones too
  // boxes whose content is wider than they are: a reader has to scroll them sideways
  const scrolled = [...article.querySelectorAll("*")].filter((el) => el.clientWidth > 0
    && el.scrollWidth > el.clientWidth + 1 && ["auto", "scroll"].includes(getComputedStyle(el).overflowX))
    .map((el) => {
      const table = el.tagName === "TABLE" ? el : el.querySelector("table");
      const columns = table ? Math.max(...[...table.rows].map((row) => row.cells.length)) : 0;
      const text = (table ? table.textContent : el.textContent).trim().replace(/\\s+/g, " ").slice(0, 60);
      return {box: name(el), code: !!el.closest("pre, div.highlight"), columns,
              what: `${name(el)} ${el.scrollWidth} > ${el.clientWidth} px: ${text}`};
    });
  const report = {scrolled, scrollWidth: root.scrollWidth, clientWidth: width, innerWidth: window.innerWidth, wide, cut, images,
                  outputs, details: document.querySelectorAll("details.mtlib-params").length};
  const out = document.createElement("pre");
  out.id = "mtlib-check";
  out.style.display = "none";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""
WIDTHS = (1280, 768)  # a laptop and a tablet: the page never scrolls sideways at either
WIDE_TABLE = 7  # columns (index included) from which a table may scroll inside its own box on a laptop
WARNING_WORDS = re.compile(r"\b\w*Warning\b|\bWarning:|\bwarnings\.warn\b")


def page_check(page: Path, profile_dir: Path, width: int) -> dict:
    """What ``page`` measures in Chromium at ``width`` px (``PAGE_CHECK``)."""
    probe = page.with_name(f".check-{width}-{page.name}")
    text = page.read_text(encoding="utf-8")
    end = text.rindex("</body>")  # the page's own end (an output may quote "</body>" in a string)
    probe.write_text(text[:end] + PAGE_CHECK + text[end:], encoding="utf-8")
    try:
        dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
                              f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="mtlib-check"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, f"{page.name}: the page check did not run:\n{dom[-2000:]}"
    return json.loads(html_lib.unescape(found.group(1)))


def pages(build: Path) -> list[Path]:
    """The book's pages: the intro, the chapters and the references."""
    html = build / "book" / "_build" / "html"
    return [html / "intro.html", *sorted((html / "executed").glob("0*.html")), html / "references.html"]


def build_paths(build: Path) -> set[str]:
    """The absolute paths a page must not name: the build folder, the machine's folders above it, the repository."""
    paths = {str(build), str(build.resolve()), str(build.parent), str(chapter.REPO_ROOT)}
    return {p for p in paths if len(p) > 4}


@pytest.mark.slow
def test_smoke_pages_fit_name_no_build_paths_no_warnings_and_describe_their_figures(smoke_book, tmp_path):
    """What a reader of the smoke book sees, page by page: no sideways scrolling at a laptop's or a tablet's
    width (wide tables scroll in their own box), no absolute path of the machine that built it, no Python
    warning in an output, every image with an alt text (a figure's in words, not its file name) and every
    figure with a caption, and one folded parameter table per chapter."""
    forbidden = build_paths(smoke_book)
    problems = []
    for page in pages(smoke_book):
        text = page.read_text(encoding="utf-8")
        problems += [f"{page.name}: names the build path {p}" for p in forbidden if p in text]
        for width in WIDTHS:
            seen = page_check(page, tmp_path / "profile", width)
            if seen["scrollWidth"] > seen["clientWidth"]:
                problems.append(f"{page.name} at {width} px: the page scrolls sideways ({seen['scrollWidth']} > "
                                f"{seen['clientWidth']} px), sticking out: {seen['wide']}")
            problems += [f"{page.name} at {width} px: content cut off on the right: {what}" for what in seen["cut"]]
            if width == WIDTHS[0]:  # on a laptop code wraps, and only a table of many columns scrolls in its box
                problems += [f"{page.name} at {width} px: has to be scrolled sideways: {box['what']}"
                             for box in seen["scrolled"] if box["code"] or box["columns"] < WIDE_TABLE]
        warned = [line for output in seen["outputs"] for line in output.splitlines() if WARNING_WORDS.search(line)]
        problems += [f"{page.name}: a warning in an output: {line[:200]}" for line in warned]
        for image in seen["images"]:
            alt, src = image["alt"], image["src"]
            if not alt or alt == src or alt.endswith((".png", ".svg", ".jpg")) or Path(src).name in alt:
                problems.append(f"{page.name}: an image without alt text in words: {src} (alt {alt!r})")
        figures = [i for i in seen["images"] if i["output"]]
        problems += [f"{page.name}: a figure without a caption: {i['alt'][:60]}" for i in figures if not i["caption"]]
        if page.parent.name == "executed":
            if seen["details"] != 1:
                problems.append(f"{page.name}: {seen['details']} folded parameter tables, not one")
            if "injected-parameters" in text or re.search(r"runs_root\s*=", text):
                problems.append(f"{page.name}: papermill's parameters cell is shown")
    assert not problems, "\n".join(problems)
    intro = (smoke_book / "book" / "_build" / "html" / "intro.html").read_text(encoding="utf-8")
    record = build_record(smoke_book)
    for fact in ("This is a smoke build: its numbers mean nothing", record["build_id"], record["started"][:10],
                 "tiny", "smoke"):
        assert fact in intro, fact


def french_raw_files(folder: Path) -> Path:
    """Multi30k en/fr raw files offline: the shipped English, and a French side made from it (the official
    French files cannot be downloaded here; the words do not matter to the book's wording)."""
    import gzip
    from mtlib import data
    folder.mkdir(parents=True, exist_ok=True)
    for stem in data.RAW_SPLITS:
        english = gzip.decompress((data.SHIPPED_DIR / f"{stem}.en.gz").read_bytes())
        (folder / f"{stem}.en.gz").write_bytes(gzip.compress(english))
        lines = english.decode("utf-8").splitlines()
        (folder / f"{stem}.fr.gz").write_bytes(gzip.compress("".join(f"fr {s}\n" for s in lines).encode()))
    return folder


@pytest.fixture(scope="module")
def french_book(tmp_path_factory):
    """The smoke book into French (``tgt_lang: fr``), its data from a local folder ($MULTI30K_DIR), offline."""
    root = tmp_path_factory.mktemp("french")
    raw = french_raw_files(root / "multi30k")
    profile = root / "smoke_fr.yaml"
    profile.write_text((book.profiles.PROFILE_DIR / "smoke.yaml").read_text() + "\ntgt_lang: fr\n")
    out = root / "build"
    env = {**os.environ, "MULTI30K_DIR": str(raw), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mtlib.book", "--profile", str(profile), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1500, cwd=chapter.REPO_ROOT)
    assert proc.returncode == 0, f"French smoke build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


GERMAN = re.compile(r"\bGerman\b(?! [Ss]hepherd)")  # Multi30k's English captions have German shepherd dogs


@pytest.mark.slow
def test_french_smoke_book_never_says_german(french_book, tmp_path):
    """Built into French, no page speaks of German (the references page lists papers by their titles, such as
    "Multi30K: Multilingual English-German Image Descriptions", and is not checked)."""
    chromium()
    record = build_record(french_book)
    assert record["status"] == "finished"
    said = []
    for page in pages(french_book)[:-1]:
        text = page.read_text(encoding="utf-8")
        said += [f"{page.name}: ...{text[max(0, m.start() - 80):m.end() + 40]!r}..." for m in GERMAN.finditer(text)]
    assert not said, "\n".join(said)
    intro = (french_book / "book" / "_build" / "html" / "intro.html").read_text(encoding="utf-8")
    assert "English into French" in intro
    seen = page_check(pages(french_book)[1], tmp_path / "profile", WIDTHS[0])
    assert seen["scrollWidth"] <= seen["clientWidth"]


def test_next_chapter_kernel_starts_early_with_its_imports_run_once(tmp_path):
    """While a chapter runs, the next chapter's kernel starts and runs that chapter's imports: the next chapter
    begins with them loaded, imported once, in the kernel that then executes it."""
    probe, imports = tmp_path / "lib", tmp_path / "imports.txt"
    probe.mkdir()
    (probe / "slow_import_probe.py").write_text(
        "import os, time\nwith open(os.environ['MTLIB_TEST_IMPORTS'], 'a') as f:\n"
        "    f.write(f'{os.getpid()} {time.time()}\\n')\ntime.sleep(2)\n")
    notebooks = quick_chapter(tmp_path / "nb", "09_first", cells=("import time\ntime.sleep(5)",))
    quick_chapter(notebooks, "10_second", cells=("import os\nimport slow_import_probe\nfrom mtlib import errors",
                                                 "print('pid', os.getpid())"))
    out = tmp_path / "out"
    env = with_lib(probe, MTLIB_TEST_IMPORTS=str(imports))
    proc = subprocess.run([sys.executable, "-m", "mtlib.book", "--out", str(out), "--no-html", "--notebooks",
                           str(notebooks)], capture_output=True, text=True, env=env, timeout=300, cwd=chapter.REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    (line,) = imports.read_text().splitlines()  # once: the chapter's own import cell found the module loaded
    pid, when = line.split()
    started = dt.datetime.fromisoformat(build_record(out)["chapters"]["10_second"]["started"]).timestamp()
    assert float(when) < started - 2, "the import ran while 09_first was running"
    outputs = json.dumps(nbformat.read(out / "book" / "executed" / "10_second.ipynb", as_version=4).cells)
    assert f"pid {pid}" in outputs, "the kernel that imported it executed the chapter"
    assert "started early" in (out / "kernels.log").read_text()


def test_chapter_imports_are_those_of_the_cell_that_imports_mtlib(tmp_path):
    notebooks = quick_chapter(tmp_path / "nb", "09_x", cells=(
        "import os\nimport sys\nif 'google.colab' in sys.modules:\n    pass",
        "%matplotlib inline",
        "import mtlib.modeling as modeling\nimport pandas as pd\nfrom mtlib import chapter, data as d\n"
        "params = chapter.header('09_x', globals())\nimport json"))
    assert book.chapter_imports(notebooks / "09_x.ipynb") == (
        "import mtlib.modeling as modeling\nimport pandas as pd\nfrom mtlib import chapter, data as d\nimport json")
    assert book.chapter_imports(quick_chapter(tmp_path / "nb2", "09_y") / "09_y.ipynb") == ""


def test_a_chapter_whose_early_kernel_is_gone_starts_its_own(tmp_path):
    notebooks = quick_chapter(tmp_path / "nb", "09_z", cells=("from mtlib import errors\nprint('ran')",))
    early = book.EarlyKernel(notebooks / "09_z.ipynb", cwd=tmp_path, log=tmp_path / "kernels.log").start()
    assert early is not None and early.alive()
    early.shutdown()
    assert not early.alive()
    executed = book.execute_chapter(notebooks / "09_z.ipynb", tmp_path / "out" / "09_z.ipynb", {}, cwd=tmp_path,
                                    running_dir=tmp_path / "running", kernel=early, kernel_log=tmp_path / "kernels.log")
    assert "ran" in json.dumps(nbformat.read(executed, as_version=4).cells)


def test_ctrl_c_stops_the_next_chapters_early_kernel_too(tmp_path):
    probe, imports = tmp_path / "lib", tmp_path / "imports.txt"
    probe.mkdir()
    (probe / "pid_probe.py").write_text(
        "import os\nwith open(os.environ['MTLIB_TEST_IMPORTS'], 'a') as f:\n    f.write(f'{os.getpid()}\\n')\n")
    notebooks = quick_chapter(tmp_path / "nb", "09_slow", cells=("import time\nfor _ in range(600):\n"
                                                                 "    time.sleep(0.1)",))
    quick_chapter(notebooks, "10_next", cells=("import pid_probe\nfrom mtlib import errors",))
    out = tmp_path / "out"
    env = with_lib(probe, MTLIB_TEST_IMPORTS=str(imports))
    proc = start_book("--out", out, "--no-html", "--notebooks", notebooks, env=env)
    deadline = time.monotonic() + 120
    while not (imports.exists() and imports.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    (pid,) = map(int, imports.read_text().split())  # the next chapter's kernel, started early, has imported
    read_until(proc, "range(600)", "import time")  # 09_slow's cell has started
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the early kernel {pid} of 10_next outlived the interrupted build")
    assert build_record(out)["chapters"].get("10_next", {}).get("status") != "executed"
    # stopped by the runner, not left to notice (ipykernel's own check, about a second later) that it had gone
    assert "Parent appears to have exited" not in (out / "kernels.log").read_text()


def test_the_next_kernel_starts_only_once_the_running_chapter_is_past_its_imports(tmp_path):
    """Two kernels never import at once: the next chapter's early kernel starts after this chapter's import cell."""
    lib, times = tmp_path / "lib", tmp_path / "times.txt"
    lib.mkdir()
    (lib / "first_imports.py").write_text("import os, time\ntime.sleep(2)\nwith open(os.environ['MTLIB_TEST_TIMES'], "
                                          "'a') as f:\n    f.write(f'first_done {time.time()}\\n')\n")
    (lib / "second_imports.py").write_text("import os, time\nwith open(os.environ['MTLIB_TEST_TIMES'], 'a') as f:\n"
                                           "    f.write(f'second_start {time.time()}\\n')\n")
    notebooks = quick_chapter(tmp_path / "nb", "09_first", cells=("import first_imports\nfrom mtlib import errors",
                                                                 "import time\ntime.sleep(4)"))
    quick_chapter(notebooks, "10_second", cells=("import second_imports\nfrom mtlib import errors",))
    out = tmp_path / "out"
    env = with_lib(lib, MTLIB_TEST_TIMES=str(times))
    proc = subprocess.run([sys.executable, "-m", "mtlib.book", "--out", str(out), "--no-html", "--notebooks",
                           str(notebooks)], capture_output=True, text=True, env=env, timeout=300, cwd=chapter.REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    marks = dict(line.split() for line in times.read_text().splitlines())
    started = dt.datetime.fromisoformat(build_record(out)["chapters"]["10_second"]["started"]).timestamp()
    assert float(marks["first_done"]) <= float(marks["second_start"]) < started - 2


def test_an_early_kernel_is_stopped_with_its_channels_after_its_chapter(tmp_path):
    from jupyter_core.utils import run_sync
    notebooks = quick_chapter(tmp_path / "nb", "09_z", cells=("from mtlib import errors\nprint('ran')",))
    early = book.EarlyKernel(notebooks / "09_z.ipynb", cwd=tmp_path, log=tmp_path / "kernels.log").start()
    km = early.km
    executed = book.execute_chapter(notebooks / "09_z.ipynb", tmp_path / "out" / "09_z.ipynb", {}, cwd=tmp_path,
                                    running_dir=tmp_path / "running", kernel=early, kernel_log=tmp_path / "kernels.log")
    assert "ran" in json.dumps(nbformat.read(executed, as_version=4).cells)
    assert km.clients, "the chapter ran in the early kernel"
    assert not run_sync(km.is_alive)() and not any(c.channels_running for c in km.clients)


def test_an_early_kernel_that_dies_in_its_imports_is_replaced(tmp_path, monkeypatch):
    lib, marker = tmp_path / "lib", tmp_path / "crashed-once"
    lib.mkdir()
    (lib / "crash_once.py").write_text("import os\nif not os.path.exists(os.environ['MTLIB_TEST_MARKER']):\n"
                                       "    open(os.environ['MTLIB_TEST_MARKER'], 'w').close()\n    os._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", with_lib(lib)["PYTHONPATH"])
    monkeypatch.setenv("MTLIB_TEST_MARKER", str(marker))
    notebooks = quick_chapter(tmp_path / "nb", "09_c", cells=("import crash_once\nfrom mtlib import errors",
                                                             "print('ran')"))
    early = book.EarlyKernel(notebooks / "09_c.ipynb", cwd=tmp_path, log=tmp_path / "kernels.log").start()
    deadline = time.monotonic() + 60
    while early.alive() and time.monotonic() < deadline:  # the early kernel dies in its imports...
        time.sleep(0.2)
    assert marker.exists()
    early_km = early.km
    run_sync_alive = early.alive
    monkeypatch.setattr(early, "alive", lambda: True)  # ... after the check at the chapter's turn
    executed = book.execute_chapter(notebooks / "09_c.ipynb", tmp_path / "out" / "09_c.ipynb", {}, cwd=tmp_path,
                                    running_dir=tmp_path / "running", kernel=early, kernel_log=tmp_path / "kernels.log")
    assert "ran" in json.dumps(nbformat.read(executed, as_version=4).cells), "a new kernel executed the chapter"
    assert "failed before its first cell" in (tmp_path / "kernels.log").read_text()
    assert early_km is not None and not run_sync_alive()


def test_ctrl_c_while_the_early_kernel_still_imports_stops_at_once(tmp_path):
    """ipykernel ignores SIGINT while it runs its startup imports: the runner terminates such a kernel instead of
    waiting for them to end."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "slow_start.py").write_text("import time\ntime.sleep(60)\n")
    notebooks = quick_chapter(tmp_path / "nb", "09_quick", cells=("print('quick')",))
    quick_chapter(notebooks, "10_slow_imports", cells=("import slow_start\nfrom mtlib import errors",))
    out = tmp_path / "out"
    env = with_lib(lib)
    proc = start_book("--out", out, "--no-html", "--notebooks", notebooks, env=env)
    read_until(proc, "10_slow_imports (2/2)")
    time.sleep(1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert time.monotonic() - sent < 30, "the runner waited for the kernel's 60-s imports"
    assert stderr.strip().startswith("[book] interrupted in 10_slow_imports") and "Traceback" not in stderr
