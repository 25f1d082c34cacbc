"""mtlib.project: the repository address is written once (pyproject.toml) and everything else follows it."""
import shutil

from mtlib import project

FORK = "https://github.com/someone/my-mt-book"


def test_badges_install_cells_and_config_are_in_step():
    assert project.out_of_step() == [], \
        "run `make sync` after changing pyproject.toml's Repository URL or mtlib/parameters.py"


def test_config_names_the_repository_of_pyproject():
    config = project.CONFIG.read_text()
    assert f"url: {project.repository_url()}" in config
    assert project.repository_url() == "https://github.com/" + project.github_slug()


def test_a_fork_changes_one_setting_and_sync_rewrites_the_rest(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(project.NOTEBOOK_DIR, notebooks, ignore=shutil.ignore_patterns("*.ipynb"))
    config = shutil.copy(project.CONFIG, tmp_path / "_config.yml")
    old = project.repository_url()
    monkeypatch.setattr(project, "repository_url", lambda: FORK)
    assert project.out_of_step(notebooks, config)  # every file still names the old address
    changed = project.sync(notebooks, config)
    assert len(changed) == len(list(notebooks.glob("*.py"))) + 1
    assert project.out_of_step(notebooks, config) == []
    for path in [*notebooks.glob("*.py"), config]:
        text = path.read_text()
        assert old not in text, path
    sft = (notebooks / "03_sft.py").read_text()
    assert "https://colab.research.google.com/github/someone/my-mt-book/blob/main/notebooks/03_sft.ipynb" in sft
    assert f'"{FORK}", "/content/my-mt-book"' in sft and '"[gpu]"' in sft
    assert f"url: {FORK}" in config.read_text()


def test_colab_link_and_install_cell():
    assert project.colab_link("01_data").endswith(f"/github/{project.github_slug()}/blob/main/notebooks/01_data.ipynb")
    cell = project.install_cell("01_data")
    assert cell.startswith('# %% tags=["remove-cell"]') and "[gpu]" not in cell
    assert "[gpu]" in project.install_cell("04_grpo")
