"""The book runner: executes the chapters with papermill and renders the HTML book with Jupyter Book.

``python -m mtlib.book --profile smoke --out build/smoke`` executes every chapter with papermill
(parameters from the profile, run records under ``<out>/runs``) into ``<out>/book/executed/``, then
builds the HTML book with Jupyter Book (execution off) into ``<out>/book/_build/html``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import profiles
from .chapter import REPO_ROOT
from .credentials import find_secret
from .errors import ConfigError, MtlibError

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def chapters(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The chapters' .ipynb files, in order (``NN_name.ipynb``)."""
    return sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


class ChapterFailed(MtlibError):
    """A chapter's cell raised while papermill executed it."""


def execute_chapter(source: Path, output: Path, parameters: dict, cwd: Path) -> Path:
    """Execute one chapter with papermill; on a failing cell raise ChapterFailed naming chapter and cell."""
    import papermill as pm
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                            cwd=str(cwd), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as exc:
        first = next((line for line in (exc.source or "").splitlines() if line.strip()), "").strip()
        raise ChapterFailed(f"chapter {source.stem} failed in cell {exc.cell_index} "
                            f"(In [{exc.exec_count}]: {first[:80]}): {exc.ename}: {exc.evalue}\n"
                            f"the partially executed notebook is kept at {output}") from exc
    return output


_PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|.*$|^\s*$")


def strip_progress_bars(notebook: Path) -> int:
    """Drop tqdm progress-bar lines from a notebook's stderr outputs (noise on a printed page); returns how many
    outputs were changed. Warnings and other stderr text stay."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    changed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = re.split(r"[\r\n]", out.get("text", ""))
                text = "\n".join(line for line in lines if not _PROGRESS_LINE.match(line))
                if text != out.get("text", ""):
                    changed += 1
                if not text.strip():
                    continue
                out["text"] = text + "\n"
            kept.append(out)
        cell["outputs"] = kept
    if changed:
        nbformat.write(nb, notebook)
    return changed


def assemble(out: Path, executed: list[Path]) -> Path:
    """Lay out the book's sources under ``<out>/book``: config, TOC, hand-written pages, executed chapters."""
    book = out / "book"
    book.mkdir(parents=True, exist_ok=True)
    for notebook in executed:
        strip_progress_bars(notebook)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO_ROOT / name, book / name)
    for page in (REPO_ROOT / "book").iterdir():
        if page.is_file() and page.suffix in (".md", ".bib", ".png", ".svg"):
            shutil.copy2(page, book / page.name)
    toc = (book / "_toc.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"file:\s*executed/(\S+)", toc))
    missing = listed - {p.stem for p in executed}
    if missing:
        raise MtlibError(f"_toc.yml names executed chapters that were not executed: {', '.join(sorted(missing))}")
    return book


_PROBLEM = re.compile(r"(WARNING:|ERROR:|CRITICAL:|SEVERE:|Traceback \(most recent call last\)|Exception occurred|"
                      r"build finished with problems)")


def build_html(book: Path, log_path: Path) -> Path:
    """``jupyter-book build`` (execution off, warnings are errors); grep its log, since it can exit 0 anyway."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book), "--builder", "html",
           "-W", "-n", "--keep-going", "--all"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    log_path.write_text(log, encoding="utf-8")
    problems = [line for line in log.splitlines() if _PROBLEM.search(line)]
    if proc.returncode != 0 or problems:
        shown = "\n".join(problems[:20]) or log[-3000:]
        raise MtlibError(f"jupyter-book build failed (exit {proc.returncode}); full log at {log_path}:\n{shown}")
    return book / "_build" / "html"


# Progress bars are for people watching; in an executed (published) chapter they are stderr noise.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def build(profile: str, out: str | os.PathLike, only: list[str] | None = None, html: bool = True,
          notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Execute the chapters with ``profile`` into ``<out>/book/executed`` and render the book; returns ``<out>``."""
    prof = profiles.load_profile(profile)  # validates, and refuses requires_cuda on a CPU machine
    out = Path(out).resolve()
    runs_root = out / "runs"
    executed_dir = out / "book" / "executed"
    runs_root.mkdir(parents=True, exist_ok=True)
    sources = chapters(notebook_dir)
    if only:
        sources = [s for s in sources if s.stem in only]
    if not sources:
        raise ConfigError(f"no chapters to run in {notebook_dir} (only={only})")
    executed, timings = [], {}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)  # inherited by the kernels papermill starts
    if os.environ.get("MULTI30K_DIR"):
        os.environ["MULTI30K_DIR"] = str(Path(os.environ["MULTI30K_DIR"]).expanduser().resolve())
    for source in sources:
        params = profiles.chapter_parameters(prof, source.stem) if source.stem in profiles.CHAPTERS \
            else {"profile": prof["name"]}
        if "runs_root" in profiles.SCHEMA and source.stem in profiles.SCHEMA["runs_root"].chapters:
            params["runs_root"] = str(runs_root)
        print(f"[book] {source.stem}: executing with profile {prof['name']}", flush=True)
        start = time.perf_counter()
        # The kernel starts where the user ran the command, so relative paths in the profile mean the same
        # in every chapter as on the command line.
        executed.append(execute_chapter(source, executed_dir / source.name, params, cwd=Path.cwd()))
        timings[source.stem] = time.perf_counter() - start
        print(f"[book] {source.stem}: done in {timings[source.stem]:.0f}s", flush=True)
    if html:
        book = assemble(out, executed)
        print("[book] rendering HTML with jupyter-book", flush=True)
        html_dir = build_html(book, out / "jupyter-book.log")
        print(f"[book] HTML book at {html_dir / 'index.html'}", flush=True)
    leaks = find_secret(out)  # the token, when it looks like one (a placeholder such as "none" is not searched)
    if leaks:
        raise MtlibError(f"the Hugging Face token appears in {len(leaks)} output file(s), e.g. {leaks[0]}; "
                         f"do not print it or pass it as a parameter")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlib.book", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", help="shipped profile name or YAML path (default: smoke)")
    parser.add_argument("--out", default=None, help="output folder (default: build/<profile>)")
    parser.add_argument("--only", default=None, help="comma-separated chapters to run, e.g. 01_data,02_metrics")
    parser.add_argument("--no-html", action="store_true", help="execute the chapters but do not render the book")
    parser.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out or str(REPO_ROOT / "build" / Path(args.profile).stem)
    only = args.only.split(",") if args.only else None
    start = time.perf_counter()
    try:
        build(args.profile, out, only=only, html=not args.no_html, notebook_dir=Path(args.notebooks))
    except MtlibError as exc:
        print(f"[book] error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"[book] finished in {time.perf_counter() - start:.0f}s", flush=True)
    return 0


# --------------------------------------------------------------------------- Sphinx extension

def _fix_launch_urls(app, pagename, templatename, context, doctree):
    """Point launch buttons of executed chapters at the source notebooks (``notebooks/``) in the repository."""
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            url = button.get("url", "")
            if "/executed/" in url:
                button["url"] = url.replace("/executed/", "/notebooks/")


def setup(app):
    """Sphinx extension (listed in _config.yml): corrects the Colab launch links of executed chapters."""
    app.connect("html-page-context", _fix_launch_urls, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    sys.exit(main())
