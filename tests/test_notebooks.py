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


# --- prose that follows the language pair (issue 13) -------------------------------------------------

PAIR_CHAPTERS = ["01_data", "02_metrics", "03_sft", "04_grpo"]


@pytest.mark.parametrize("name", PAIR_CHAPTERS)
def test_chapter_text_names_no_language_of_its_own(name):
    """Chapters 1-4 take the pair from src_lang/tgt_lang: no German (or any other language) typed into prose,
    example sentences or code; the parameters cell's defaults are the only place a code such as "de" appears."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    text = "\n".join(c.source for c in nb.cells if "parameters" not in c.metadata.get("tags", []))
    for word in ("German", "Deutsch", "French", "Czech", "Übersetzung", "ä", "ö", "ü", "ß"):
        assert word not in text, f"{name}: {word!r} is typed in; generate it from tgt_lang (prompts.language_name)"
    assert '"de"' not in text and "'de'" not in text


def test_intro_is_neutral_to_the_language_pair():
    intro = (chapter.REPO_ROOT / "book" / "intro.md").read_text()
    assert "German" not in intro and "Deutsch" not in intro


def _glyphs(latex: str) -> int:
    """About how many symbols a line of LaTeX renders: commands count one (sizing and font commands none),
    braces, sub/superscript marks, alignment marks and spaces nothing."""
    import re
    silent = {"big", "Big", "bigg", "Bigg", "left", "right", "text", "mathrm", "operatorname", "mathbb", "mathcal",
              "frac", "tfrac", "qquad", "quad", "begin", "end"}
    commands = [c for c in re.findall(r"\\([a-zA-Z]+)", latex) if c not in silent]
    return len(re.sub(r"\\[a-zA-Z]+|\\.|[{}^_\s&]", "", latex)) + len(commands)


@pytest.mark.parametrize("name", PAIR_CHAPTERS)
def test_display_formulas_and_tables_fit_the_page(name):
    """A long $$ line overflows the page: chapter 4's display formulas (GRPO's objective overflowed) are broken
    over lines (aligned) of at most 60 rendered symbols (a crude count: a fraction counts both its parts, so
    chapter 2's stacked BLEU precision is left out); Markdown table rows stay short and hold no long formula,
    which cannot wrap."""
    import re
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for block in re.findall(r"\$\$(.*?)\$\$", markdown, re.S) if name == "04_grpo" else []:
        for line in re.split(r"\\\\", block):
            assert _glyphs(line) <= 60, f"{name}: a formula line renders about {_glyphs(line)} symbols: {line.strip()}"
    for row in (line for line in markdown.splitlines() if line.startswith("|")):
        assert len(row) <= 170, f"{name}: a table row of {len(row)} characters: {row[:60]}..."
        assert all(_glyphs(m) <= 25 for m in re.findall(r"\$([^$]+)\$", row)), f"{name}: a long formula in {row[:60]}"


def test_grpo_objective_is_aligned():
    assert "\\begin{aligned}" in (NOTEBOOKS / "04_grpo.py").read_text()


def _stats(src_words, src_len, src_types, tgt_words, tgt_len, tgt_types):
    import pandas as pd
    rows = [{"split": "overall", "lang": lang, "mean_words": w, "mean_word_len": l, "types": t, "hapax_share": 0.5}
            for lang, w, l, t in (("en", src_words, src_len, src_types), ("fr", tgt_words, tgt_len, tgt_types))]
    return pd.DataFrame(rows)


def test_chapter_1_comparison_is_worded_from_the_numbers_both_ways():
    from mtlib import data
    fewer_longer = data.compare_languages(_stats(12.0, 4.2, 100, 11.0, 5.4, 160), "en", "fr")
    assert "French uses fewer words than English, but longer ones" in fewer_longer
    assert "a French sentence" in fewer_longer and "an English one" in fewer_longer and "1.60×" in fewer_longer
    more_shorter = data.compare_languages(_stats(12.0, 4.2, 100, 13.5, 4.0, 105), "en", "fr")
    assert "French uses more words than English, but shorter ones" in more_shorter
    assert "fewer" not in more_shorter and "longer" not in more_shorter
    more_longer = data.compare_languages(_stats(12.0, 4.2, 100, 13.5, 4.6, 105), "en", "fr")
    assert "more words than English, and longer ones" in more_longer
    same = data.compare_languages(_stats(12.0, 4.2, 100, 12.1, 4.21, 100), "en", "fr")
    assert "about as many words as English, and words of about the same length" in same
    assert "en " not in fewer_longer and " fr" not in fewer_longer  # names, not codes


def test_chapter_1_comparison_names_missing_languages():
    from mtlib import data
    from mtlib.errors import DataError
    with pytest.raises(DataError, match="cs"):
        data.compare_languages(_stats(12, 4, 100, 11, 5, 160), "en", "cs")


def test_chapter_2_examples_come_from_the_data_of_the_target_language():
    from datasets import Dataset
    from mtlib import data
    split = Dataset.from_dict({"en": ["Hi.", "A small dog runs across the green lawn in a park.", "x"],
                               "fr": ["Salut.", "Un petit chien court sur la pelouse verte dans un parc.", "y"]})
    source, reference = data.example_pair(split, "en", "fr")
    assert reference.startswith("Un petit chien") and source.startswith("A small dog")
    v = data.variants(source, reference)
    assert list(v) == ["exact", "one letter dropped", "one word dropped", "first half only", "halves swapped",
                       "untranslated"]
    assert v["exact"] == reference and v["untranslated"] == source
    assert v["one letter dropped"] == "Un petit chien court sur la pelous verte dans un parc."  # longest word
    assert v["one word dropped"] == "Un petit chien court sur la verte dans un parc."
    assert sorted(v["halves swapped"].rstrip(".").split()) == sorted(reference.rstrip(".").split())
    assert v["halves swapped"] == "la pelouse verte dans un parc Un petit chien court sur."
    assert v["first half only"] == "Un petit chien court sur"
    last = data.variants("A dog looks closely.", "Un chien regarde attentivement.")  # longest word ends it
    assert last["one word dropped"] == "Un chien regarde." and last["one letter dropped"] == "Un chien regarde attentivemen."
    with pytest.raises(data.DataError, match="two words"):
        data.variants("Hi.", "Salut.")
    short = Dataset.from_dict({"en": ["A dog.", "A big dog."], "fr": ["Un chien.", "Un grand chien."]})
    assert data.example_pair(short, "en", "fr") == ("A big dog.", "Un grand chien.")  # none fits: the longest
