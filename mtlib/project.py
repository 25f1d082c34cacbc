"""Where the book lives: its repository address (written once, in pyproject.toml) and what is generated from it.

The Colab badge and the install cell of every chapter and the repository setting of ``_config.yml`` (Jupyter
Book's launch and repository buttons) are generated from ``[project.urls] Repository``; each chapter's
``parameters`` cell is generated from the parameters' declaration (:func:`mtlib.parameters.parameters_cell`).
``python -m mtlib.project`` (``make sync``) rewrites them; ``out_of_step()`` lists what disagrees.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from . import parameters

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CONFIG = REPO_ROOT / "_config.yml"
BRANCH = "main"
COLAB_URL = "https://colab.research.google.com"
GPU_CHAPTERS = ("03_sft", "04_grpo")  # their install cell adds the [gpu] extra (Unsloth, bitsandbytes)
INSTALL_MARK = "# On Colab: fetch the book's repository"
_BADGE = re.compile(r"^# \[!\[Open in Colab\]\([^)]*\)\]\([^)]*\)$", re.M)


def repository_url() -> str:
    """``[project.urls] Repository`` of pyproject.toml (or of the installed package's metadata)."""
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        urls = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        found = urls and re.search(r'^Repository\s*=\s*"([^"]+)"', urls.group(1), re.M)
        if found:
            return found.group(1).rstrip("/")
    for entry in metadata.metadata("mtlib").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip().rstrip("/")
    raise RuntimeError("no Repository URL in pyproject.toml's [project.urls]")


def github_slug() -> str:
    """``owner/name`` of the repository on GitHub."""
    url = repository_url()
    if not url.startswith("https://github.com/"):
        raise RuntimeError(f"the Colab links need a GitHub repository; pyproject.toml names {url}")
    return url.removeprefix("https://github.com/")


def repository_name() -> str:
    """The repository's name (the folder a clone gets)."""
    return github_slug().split("/")[-1]


def colab_link(chapter: str) -> str:
    """The Colab URL that opens ``notebooks/<chapter>.ipynb`` of the book's repository."""
    return f"{COLAB_URL}/github/{github_slug()}/blob/{BRANCH}/notebooks/{chapter}.ipynb"


def badge(chapter: str) -> str:
    """The chapter's "Open in Colab" badge, as the Markdown line of its py:percent source."""
    return f"# [![Open in Colab]({COLAB_URL}/assets/colab-badge.svg)]({colab_link(chapter)})"


def install_cell(chapter: str) -> str:
    """The chapter's first code cell (py:percent, hidden in the book): on Colab, clone the repository and
    install mtlib from it, without a runtime restart; elsewhere nothing."""
    extra = "[gpu]" if chapter in GPU_CHAPTERS else ""
    folder = f"/content/{repository_name()}"
    return f'''# %% tags=["remove-cell"]
{INSTALL_MARK} and install its library (elsewhere it is already
# installed). Generated from pyproject.toml by `make sync`; no runtime restart needed.
import os
import subprocess
import sys

if "google.colab" in sys.modules or any(k.startswith("COLAB_") for k in os.environ):
    repo, folder = "{repository_url()}", "{folder}"
    if not os.path.isdir(folder):
        subprocess.run(["git", "clone", "--depth", "1", repo, folder], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", folder + "{extra}"], check=True)
    sys.path.insert(0, folder)
'''


_INSTALL = re.compile(r"^# %%[^\n]*\n" + re.escape(INSTALL_MARK) + r".*?(?=^# %%)", re.M | re.S)
_PARAMETERS = re.compile(r"^" + re.escape(parameters.CELL_MARK) + r"\n.*?(?=^# %%|\Z)", re.M | re.S)


def parameters_cell_of(text: str) -> str | None:
    """The parameters cell of a chapter's py:percent text (its marker line to the last non-blank line), or None."""
    found = _PARAMETERS.search(text)
    return found.group(0).rstrip("\n") + "\n" if found else None


def synced_source(chapter: str, text: str) -> str:
    """A chapter's py:percent text with its badge, install cell and (for a declared chapter) parameters cell
    regenerated."""
    if not _BADGE.search(text) or not _INSTALL.search(text):
        raise RuntimeError(f"notebooks/{chapter}.py: no Colab badge line or install cell to regenerate")
    text = _BADGE.sub(lambda _: badge(chapter), text, count=1)
    text = _INSTALL.sub(lambda _: install_cell(chapter) + "\n", text, count=1)
    if chapter in parameters.CHAPTERS:
        if len(_PARAMETERS.findall(text)) != 1:
            raise RuntimeError(f"notebooks/{chapter}.py: expected one {parameters.CELL_MARK} cell to regenerate")
        text = _PARAMETERS.sub(lambda _: parameters.parameters_cell(chapter) + "\n", text, count=1)
    return text


def synced_config(text: str) -> str:
    """``_config.yml`` with its ``repository: url:`` and ``branch:`` set from pyproject.toml."""
    text = re.sub(r"(^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)\S+", lambda m: m.group(1) + repository_url(),
                  text, count=1, flags=re.M)
    return re.sub(r"(^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+branch:[ \t]*)\S+", lambda m: m.group(1) + BRANCH,
                  text, count=1, flags=re.M)


def _targets(notebook_dir: Path = NOTEBOOK_DIR, config: Path = CONFIG):
    for source in sorted(Path(notebook_dir).glob("[0-9][0-9]_*.py")):
        yield source, synced_source(source.stem, source.read_text(encoding="utf-8"))
    yield config, synced_config(config.read_text(encoding="utf-8"))


def out_of_step(notebook_dir: Path = NOTEBOOK_DIR, config: Path = CONFIG) -> list[Path]:
    """Files whose repository address disagrees with pyproject.toml, or whose parameters cell disagrees with
    :mod:`mtlib.parameters` (run ``make sync``)."""
    return [path for path, text in _targets(notebook_dir, config) if path.read_text(encoding="utf-8") != text]


def sync(notebook_dir: Path = NOTEBOOK_DIR, config: Path = CONFIG) -> list[Path]:
    """Rewrite the chapters' badges and install cells and ``_config.yml`` from pyproject.toml, and the chapters'
    parameters cells from :mod:`mtlib.parameters`; returns what changed.

    The chapters' ``.ipynb`` twins follow with ``jupytext --sync`` (``make sync`` runs both)."""
    changed = []
    for path, text in list(_targets(notebook_dir, config)):
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv=None) -> int:
    """``python -m mtlib.project``: regenerate what follows from the address and the parameters' declaration;
    ``--check``: only list what is out of step (exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        stale = out_of_step()
        for path in stale:
            print(f"out of step with pyproject.toml's Repository URL or mtlib/parameters.py: "
                  f"{path.relative_to(REPO_ROOT)} (run make sync)")
        return 1 if stale else 0
    for path in sync():
        print(f"updated {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
