"""Chapters: text sources and .ipynb in sync, no outputs, python3 kernel, one schema-true parameters cell."""
import ast

import jupytext
import nbformat
import pytest

from mtlib import book, chapter, profiles, project
from mtlib.errors import ConfigError

NOTEBOOKS = book.NOTEBOOK_DIR
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


def parameters_cell(nb):
    found = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(found) == 1, f"expected exactly one cell tagged 'parameters', found {len(found)}"
    return found[0]


def defaults(cell) -> dict:
    """Names and literal values assigned in a parameters cell (every statement must be such an assignment)."""
    out = {}
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"parameters cell may only hold 'name = literal' lines, got: {ast.unparse(stmt)}"
        out[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    return out


def test_every_chapter_exists():
    assert [p.stem for p in SOURCES] == list(profiles.CHAPTERS)
    assert [p.stem for p in book.chapters()] == list(profiles.CHAPTERS)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_py_and_ipynb_are_in_sync(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run jupytext --sync {source}"
    text_nb = jupytext.read(source)
    json_nb = nbformat.read(ipynb, as_version=4)
    assert cells(text_nb) == cells(json_nb), f"{source.name} and {ipynb.name} differ: run jupytext --sync"
    assert json_nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_committed_clean(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{source.stem}: a code cell has outputs"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell_matches_schema(source):
    nb = jupytext.read(source)
    values = defaults(parameters_cell(nb))
    chapter = source.stem
    assert sorted(values) == sorted(profiles.chapter_names(chapter)), \
        f"{chapter}: parameters cell and mtlib.profiles.SCHEMA disagree"
    profiles.check_parameters(values, chapter, f"{chapter} defaults")  # the defaults are valid values
    assert values["profile"] is None
    if "model" in values:  # the defaults are the real recipe
        assert values["model"] == "meta-llama/Llama-3.2-3B-Instruct"
    if "dataset" in values:
        assert values["dataset"] == "multi30k"  # the release shipped with mtlib: works offline, four test sets


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapter_opens_in_colab_and_installs_only_there(source):
    nb = jupytext.read(source)
    first_md = next(c for c in nb.cells if c.cell_type == "markdown")
    assert chapter.colab_link(source.stem) in first_md.source
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert "google.colab" in install.source and "pip" in install.source
    assert project.repository_url() in install.source  # generated from pyproject.toml (tests/test_project.py)
    assert "remove-cell" in install.metadata.get("tags", [])  # boilerplate: not shown in the book
    assert "torch" not in install.source and "numpy" not in install.source  # no reinstall, no restart
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "HF_TOKEN" not in code and "hf_token" not in defaults(parameters_cell(nb))
    assert f'chapter.header("{source.stem}", globals())' in code  # shows its parameters (and the smoke notice)


def test_toc_lists_the_executed_chapters():
    toc = (chapter.REPO_ROOT / "_toc.yml").read_text()
    for name in profiles.CHAPTERS:
        assert f"file: executed/{name}" in toc


@pytest.mark.parametrize("name, value", [("batch_size", 0), ("lr", -1e-4), ("num_steps", 0), ("lr", "fast")])
def test_edited_parameters_fail_in_the_chapter_header_before_any_model_loads(name, value):
    """A Colab user who edits the parameters cell gets the error from the header cell, the first one to run."""
    namespace = defaults(parameters_cell(jupytext.read(NOTEBOOKS / "03_sft.py")))
    chapter.chapter_params("03_sft", namespace)  # the defaults pass
    namespace[name] = value
    with pytest.raises(ConfigError, match=name):
        chapter.chapter_params("03_sft", namespace)
