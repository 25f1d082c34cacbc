"""The book stands alone: a fresh clone with nothing beside it, and chapters opened one by one (as in Colab)."""
import json
import os
import subprocess
import sys

import nbformat
import papermill as pm
import pytest

from mtlib import plots, profiles
from mtlib.project import NOTEBOOK_DIR, REPO_ROOT


def _outputs(notebook) -> str:
    nb = nbformat.read(notebook, as_version=4)
    return "\n".join(json.dumps(out) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


@pytest.mark.slow
def test_fresh_clone_with_nothing_beside_it_runs_the_data_chapter(tmp_path):
    """Issue 11: a clone into an empty folder, no MULTI30K_DIR, no ../shared: the smoke data chapter loads the
    shipped Multi30k with all four test sets."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("MULTI30K_DIR", "MULTI30K_CACHE", "MULTI30K_URL")}
    env.update(PYTHONPATH=str(clone), HOME=str(tmp_path / "home"))
    where = subprocess.run([sys.executable, "-c", "import mtlib.data as d; print(d.SHIPPED_DIR)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(clone / "mtlib" / "corpora" / "multi30k")  # the clone's own copy, nothing outside it
    proc = subprocess.run([sys.executable, "-m", "mtlib.book", "--profile", "smoke", "--only", "01_data", "--no-html",
                           "--out", "out"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = _outputs(tmp_path / "out" / "book" / "executed" / "01_data.ipynb")
    for split, size in (("test_2017_flickr", "1000"), ("test_2017_mscoco", "461"), ("test_2018_flickr", "1071")):
        assert plots.TEST_SET_LABELS[split] in text and size in text, split


def _run_alone(name, workdir):
    """Execute one chapter by itself as a reader would (papermill in a fresh working folder, runs_root left at
    its default), with the smoke profile's sizes so that it runs on a CPU."""
    params = profiles.chapter_parameters(profiles.load_profile("smoke"), name)
    out = workdir / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), parameters=params, kernel_name="python3",
                        cwd=str(workdir), progress_bar=False)
    return _outputs(out)


@pytest.mark.slow
def test_chapters_4_and_5_alone_in_a_fresh_folder(tmp_path):
    """Issue 11: a fresh runtime per chapter. Chapter 5 without runs says what to run first; chapter 4 without an
    SFT adapter trains one itself, visibly; chapter 5 then compares the systems."""
    first = _run_alone("05_results", tmp_path)
    assert "No runs to compare yet" in first and "Run chapter 3 (SFT) and chapter 4" in first
    grpo = _run_alone("04_grpo", tmp_path)
    assert "No SFT adapter found: training one first" in grpo
    stages = {json.loads((run / "config.json").read_text())["stage"] for run in (tmp_path / "runs").iterdir()}
    assert {"sft", "grpo"} <= stages
    sft_runs = [r for r in (tmp_path / "runs").iterdir() if json.loads((r / "config.json").read_text()).get(
        "trained_by") == "04_grpo"]
    assert len(sft_runs) == 1
    second = _run_alone("05_results", tmp_path)
    assert "No runs to compare yet" not in second
    assert plots.TEST_SET_LABELS["test_2018_flickr"] in second  # the last test set's scores, named in words
