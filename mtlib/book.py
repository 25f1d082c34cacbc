"""The book runner: executes the chapters with papermill and renders the HTML book with Jupyter Book.

``python -m mtlib.book --profile smoke --out build/smoke`` executes every chapter with papermill
(parameters from the profile, run records under ``<out>/runs``) into ``<out>/book/executed/``, then
builds the HTML book with Jupyter Book (execution off) into ``<out>/book/_build/html``.

A build has an identity, ``<out>/build.json``: its id, profile, model, dataset, start time and the state
of each chapter. The chapters get the id as their ``build_id`` parameter; their run records note it, and
they read only the runs of their own build. Building into a folder that already holds a build:

* ``--resume`` continues it: the chapters not executed yet (after a failure or Ctrl-C), or those of ``--only``;
* ``--only CH,...`` alone re-executes those chapters within it (same profile, model and dataset only);
* ``--clean`` moves it aside, to ``<out>.old-<build id>``, and starts a new build;
* ``--render-only`` renders the chapters executed so far, executing nothing;
* anything else is refused with a message naming these flags: two builds never mix silently.

One build at a time per folder (``<out>/.build.lock`` holds the pid). A chapter executes into
``<out>/running/`` and moves to ``book/executed/`` once it succeeded, or to ``<out>/failed/``; the HTML is
rendered aside and swapped in; ``build.json`` and every run record are written atomically.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import profiles
from .chapter import REPO_ROOT
from .credentials import find_secret
from .errors import ConfigError, MtlibError

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BUILD_FILE = "build.json"
LOCK_FILE = ".build.lock"
# Everything a build writes into its folder: what --clean moves aside (nothing else there is touched).
BUILD_ENTRIES = (BUILD_FILE, "runs", "book", "tiny-model", "running", "failed", "jupyter-book.log", "kernels.log",
                 ".render")
# The repository's source folders: a build never writes into them, nor into the repository root itself.
SOURCE_DIRS = ("mtlib", "notebooks", "profiles", "tests", "book", "scripts", "benchmarks")


def chapters(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The chapters' .ipynb files, in order (``NN_name.ipynb``)."""
    return sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


class ChapterFailed(MtlibError):
    """A chapter's cell raised while papermill executed it."""


class BuildRefused(MtlibError):
    """The output folder cannot take this build: another build's output, a build running, not a folder."""


class BuildInterrupted(MtlibError):
    """Ctrl-C during a build. ``str()`` is the one line the runner prints: where it stopped and what was kept."""

    def __init__(self, where: str, kept: Path | None = None):
        super().__init__(where)
        self.where, self.kept = where, kept


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# --------------------------------------------------------------------------- what the terminal shows

_BAR = re.compile(r"\d+%\|")
_DONE = re.compile(r"^(.*: *)?100%\|")


def _bar_key(bar: str) -> str:
    """A bar without its times and rates: ``translate: 100%|████| 24/24``. tqdm refreshes a finished bar when it
    closes, with other times: the same key, the same task."""
    return re.sub(r"\s*\[[^\]]*\].*$", "", bar).strip()


class Progress:
    """What a person watching the build sees: a line per chapter and per code cell (chapter, cell, elapsed
    time), and the chapters' progress bars (training, translation).

    It is papermill's ``stderr_file``: the chapters' stderr passes through ``write``, which shows the bars
    (in place on a terminal; elsewhere one line every ``every`` seconds and at 100%) and drops the rest,
    which stays in the notebook. Each task's bar ends in one line: tqdm's last refresh and its close both
    print 100%, shown once; a finished bar keeps its line on a terminal. The bars themselves are stripped
    from the executed notebook.
    """

    def __init__(self, stream=None, every: float = 30.0):
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.chapter, self.t0, self.cell, self.cells, self._code = None, time.monotonic(), 0, 0, {}
        self._bar_open, self._last_bar, self._last_text = False, 0.0, ""
        self._done_key, self._done_open = None, False  # the finished bar shown last; whether it is on the line

    # -- lines -------------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a progress bar left open on the terminal line (before an error or interruption message)."""
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False

    def where(self) -> str:
        """``03_sft, cell 9/17, 42s in``: where the current chapter is."""
        cell = f", cell {self.cell}/{self.cells}" if self.cell else ""
        return f"{self.chapter}{cell}, {_duration(time.monotonic() - self.t0)} in"

    def _prefix(self) -> str:
        return f"[book] {self.chapter} cell {self.cell}/{self.cells} {_duration(time.monotonic() - self.t0)}"

    # -- chapter and cell events (papermill/nbclient hooks) ---------------------------------------------
    def start_chapter(self, chapter: str, position: int, total: int, profile: str) -> None:
        self.chapter, self.t0, self.cell, self.cells, self._code = chapter, time.monotonic(), 0, 0, {}
        self.line(f"[book] {chapter} ({position}/{total}): executing with profile {profile}")

    def notebook_start(self, notebook=None, **_):
        code = [i for i, c in enumerate(notebook.cells if notebook is not None else []) if c.cell_type == "code"]
        self._code, self.cells = {index: n for n, index in enumerate(code, start=1)}, len(code)

    def cell_start(self, cell=None, cell_index=None, **_):
        if cell is None or cell.cell_type != "code":
            return
        self.cell = self._code.get(cell_index, self.cell + 1)
        first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip() and not ln.strip().startswith("#")),
                     "")
        self._last_text, self._done_key = "", None
        self.line(f"{self._prefix()}: {first[:72]}")

    def end_chapter(self, seconds: float, status: str = "done") -> None:
        self.line(f"[book] {self.chapter}: {status} in {_duration(seconds)}")

    # -- the chapters' stderr (papermill's stderr_file) --------------------------------------------------
    def write(self, text: str) -> None:
        for piece in re.split(r"[\r\n]", text):
            piece = piece.strip()
            if _BAR.search(piece):
                self._bar(piece)

    def flush(self) -> None:
        self.stream.flush()

    def _bar(self, bar: str) -> None:
        if bar == self._last_text:
            return
        done = bool(_DONE.match(bar))
        if done:
            if _bar_key(bar) == self._done_key:  # the same task's 100% again (tqdm's close): shown already
                return
            self._done_key = _bar_key(bar)
        else:
            self._done_key = None  # a bar running: the next 100% ends a new task
        now = time.monotonic()
        if self.tty:
            if self._bar_open and self._done_open:  # a finished task keeps its line; the next bar starts below
                self.stream.write("\n")
            self.stream.write(f"\r{self._prefix()} {bar[:110]}\x1b[K")
            self.stream.flush()
            self._bar_open, self._done_open = True, done
        elif done or now - self._last_bar >= self.every:
            self.line(f"{self._prefix()} {bar}")
            self._last_bar = now
        else:
            return
        self._last_text = bar


# --------------------------------------------------------------------------- the kernel

_ACTIVE_KERNEL: dict = {}
EARLY_KERNEL_WAIT_S = 600  # longest wait for an early kernel's imports (papermill's own start timeout: 60 s)
# The chapters' kernels get these on top of the runner's environment. Loading bars of datasets and the Hub are
# noise even on a terminal; the tqdm bars of training (MTLIB_TERMINAL_PROGRESS: mtlib.train shows a text bar
# instead of the notebook's HTML progress table) and of translation reach the terminal through Progress (at
# most one update a second) and are stripped from the notebooks.
KERNEL_ENV = {"TQDM_MININTERVAL": "1", "MTLIB_TERMINAL_PROGRESS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def _can_encrypt(kernel_name: str) -> bool:
    """Whether pyzmq has CurveZMQ and the kernelspec declares it, so the manager can provision keys."""
    try:
        import zmq
        from jupyter_client.kernelspec import KernelSpecManager
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except Exception:  # no such kernelspec, an old jupyter_client: papermill reports it itself
        return False
    supported = (spec.metadata or {}).get("supported_encryption") or []
    supported = [supported] if isinstance(supported, str) else supported
    return bool(zmq.has("curve")) and "curve" in {str(s).lower() for s in supported}


def kernel_options(kernel_name: str = "python3", log: Path | None = None, label: str = "") -> dict:
    """papermill engine options for the chapters' kernel.

    * ipykernel >= 7 warns on every start that a kernel on plain TCP is unencrypted. Where pyzmq has CurveZMQ
      and the kernelspec supports it (ipykernel 7's does), the kernel manager provisions keys, which encrypts
      the channel and ends the warning.
    * The kernel process's own stderr (its log: that warning where keys cannot be provisioned, "KeyboardInterrupt
      caught in kernel" when papermill shuts it down, ...) goes to ``log`` instead of the terminal; what the
      chapters print still goes into the notebook.
    * KERNEL_ENV is added to its environment; the manager registers the kernel, so that Ctrl-C can interrupt the
      running cell.
    """
    from jupyter_client.manager import AsyncKernelManager
    encrypt = _can_encrypt(kernel_name)

    class BookKernelManager(AsyncKernelManager):
        def __init__(self, register: bool = True, **kw):
            super().__init__(**kw)
            if encrypt:
                self.transport_encryption = "auto"
            if register:  # an early kernel registers when its chapter begins (execute_chapter)
                _ACTIVE_KERNEL["km"] = self
            self.clients = []

        def client(self, **kw):
            client = super().client(**kw)
            self.clients.append(client)
            return client

        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**(kw.get("env") or os.environ), **KERNEL_ENV}
            return await super()._async_pre_start_kernel(**kw)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if log is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as sink:  # the child keeps its own copy of the descriptor
                sink.write(f"--- kernel of {label or 'a chapter'}, started {_now()}\n".encode())
                sink.flush()
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": sink, "stderr": sink})

    return {"kernel_manager_class": BookKernelManager}


def _import_nodes(text: str) -> list | None:
    """The top-level import statements of a code cell's source, in order; None where it is no plain Python."""
    import ast
    try:
        tree = ast.parse(text)
    except SyntaxError:  # IPython magics: not a cell of plain imports
        return None
    return [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]


def _unparse(nodes: list) -> str:
    import ast
    return "\n".join(ast.unparse(node) for node in nodes)


def chapter_imports(source: Path) -> str:
    """The import statements of the chapter's first code cell that imports mtlib, in order ("" if none)."""
    cells = json.loads(Path(source).read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        imports = _import_nodes("".join(cell.get("source", ""))) or []
        names = [alias.name for node in imports for alias in node.names]
        modules = [getattr(node, "module", None) or "" for node in imports]
        if any(n == "mtlib" or n.startswith("mtlib.") for n in names + modules):
            return _unparse(imports)
    return ""


class EarlyKernel:
    """The next chapter's kernel, started while the current chapter runs, with the chapter's imports already
    executed in it (chapter_imports; nothing of its parameters or results): its turn begins with its libraries
    loaded. On a GPU, importing Unsloth (mtlib.modeling) takes about 23 s of chapters 3 and 4 on the H200.

    The runner starts it once the current chapter is past its own imports (``astart`` from a cell-start hook, on
    papermill's event loop), so two kernels never import at once. What those imports print goes nowhere (no cell
    is running yet); their errors recur in the chapter's own import cell, which runs the same statements again.
    """

    def __init__(self, source: Path, cwd: Path, log: Path | None = None, kernel_name: str = "python3"):
        self.source, self.code, self.cwd, self.log = Path(source), chapter_imports(source), Path(cwd), log
        self.kernel_name, self.km, self.failed = kernel_name, None, None

    async def astart(self) -> None:
        """Start the kernel (once). A kernel that cannot start is noted in ``failed`` and in the kernels' log:
        the chapter then starts its own at its turn, and reports what fails there."""
        if self.km is not None or self.failed is not None:
            return
        manager = kernel_options(self.kernel_name, self.log, f"{self.source.stem} (started early)")
        self.km = manager["kernel_manager_class"](kernel_name=self.kernel_name, register=False)
        # nbclient adds the in-memory history file to the kernels it starts; an early kernel needs it as well,
        # else two kernels at once share the profile's history database.
        args = ["--HistoryManager.hist_file=:memory:"]
        if self.code:
            args.append(f"--IPKernelApp.exec_lines={self.code}")
        try:
            await self.km.start_kernel(cwd=str(self.cwd), extra_arguments=args)
        except BaseException as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            await self._astop()
            self.note(f"--- the early kernel of {self.source.stem} did not start ({self.failed}); "
                       f"it starts at its turn instead\n")
            if not isinstance(exc, Exception):
                raise

    def start(self) -> "EarlyKernel":
        """``astart`` where no event loop is running (the runner between chapters)."""
        from jupyter_core.utils import run_sync
        run_sync(self.astart)()
        return self

    def note(self, line: str) -> None:
        """Append ``line`` to the kernels' log (if any)."""
        if self.log is not None:
            Path(self.log).parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as sink:
                sink.write(line)

    def alive(self) -> bool:
        from jupyter_core.utils import run_sync
        if self.km is None:
            return False
        try:
            return bool(run_sync(self.km.is_alive)())
        except Exception:
            return False

    async def _astop(self) -> None:
        km, self.km = self.km, None
        if km is None:
            return
        for client in getattr(km, "clients", ()):  # papermill stops the channels only of kernels it started
            try:
                client.stop_channels()
            except Exception:
                pass
        try:
            if await km.is_alive():
                await km.shutdown_kernel()
        except Exception:  # already gone
            pass
        try:
            await km.cleanup_resources()
        except Exception:
            pass

    def shutdown(self) -> None:
        """Stop the kernel and its clients' channels (a no-op once it is gone, or if it never started)."""
        from jupyter_core.utils import run_sync
        if self.km is not None:
            run_sync(self._astop)()


def _interrupt_kernel(sig: int = signal.SIGINT) -> bool:
    """Send ``sig`` to the running chapter's kernel (SIGINT: its cell raises KeyboardInterrupt); False if there is
    none."""
    provisioner = getattr(_ACTIVE_KERNEL.get("km"), "provisioner", None)
    pgid, pid = getattr(provisioner, "pgid", None), getattr(provisioner, "pid", None)
    try:
        if pgid and hasattr(os, "killpg"):
            os.killpg(pgid, sig)
        elif pid:
            os.kill(pid, sig)
        else:
            return False
    except OSError:
        return False
    return True


class _CtrlC:
    """While a chapter executes, the first Ctrl-C interrupts the kernel's cell (so that the running code ends
    its run record as failed) and stops the chapter; a second one stops the runner at once. Before the first
    cell, the kernel is still starting (or running an early kernel's imports, during which ipykernel ignores
    SIGINT): it is terminated instead."""

    def __init__(self):
        self.requested, self.cell_started, self._previous = False, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        _ACTIVE_KERNEL.clear()
        return False

    def _handle(self, signum, frame):
        if self.requested or not _interrupt_kernel(signal.SIGINT if self.cell_started else signal.SIGTERM):
            raise KeyboardInterrupt
        self.requested = True


# --------------------------------------------------------------------------- one chapter

def _keep(notebook: Path, folder: Path) -> Path | None:
    """Move a partly executed notebook to ``folder`` (progress bars stripped); its new path, or None."""
    if not notebook.exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tidy_notebook(notebook)
    except Exception:  # a notebook cut short while being written: keep it as it is
        pass
    kept = folder / notebook.name
    os.replace(notebook, kept)
    return kept


def execute_chapter(source: Path, output: Path, parameters: dict, cwd: Path, progress: Progress | None = None,
                    running_dir: Path | None = None, failed_dir: Path | None = None,
                    kernel_log: Path | None = None, kernel: EarlyKernel | None = None,
                    next_kernel: EarlyKernel | None = None) -> Path:
    """Execute one chapter with papermill into ``output``; on a failing cell raise ChapterFailed naming chapter and
    cell, on Ctrl-C BuildInterrupted.

    The notebook executes in ``running_dir`` and is moved to ``output`` only once it succeeded (so ``output``
    always holds a whole chapter), or to ``failed_dir`` (default: next to ``output``) when it did not. The
    kernel's own log goes to ``kernel_log`` (default: the terminal). ``kernel``: an EarlyKernel started for this
    chapter, used while it is alive (one that dies before it answers is replaced by a new kernel) and shut down
    afterwards. ``next_kernel``: the next chapter's EarlyKernel, started once this chapter is past its imports.
    """
    import papermill as pm
    output = Path(output)
    progress = progress or Progress()
    running_dir = Path(running_dir or output.parent)
    failed_dir = Path(failed_dir or output.parent)
    running_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = running_dir / (output.name if running_dir != output.parent else f".{output.name}.running")
    ctrl_c = _CtrlC()
    imports = chapter_imports(source)
    state = {"past_imports": not imports}  # a chapter without an mtlib import cell is past its imports at once

    def on_cell_start(cell=None, cell_index=None, **kw):
        if ctrl_c.requested:
            raise KeyboardInterrupt
        ctrl_c.cell_started = True
        progress.cell_start(cell=cell, cell_index=cell_index)
        starting_next = state["past_imports"] and next_kernel is not None and next_kernel.km is None
        if cell is not None and cell.get("cell_type") == "code" and imports \
                and _unparse(_import_nodes("".join(cell.get("source", ""))) or []) == imports:
            state["past_imports"] = True  # the next cell to start comes after them
        if starting_next:
            return next_kernel.astart()  # awaited by nbclient, on its event loop

    def run(options: dict) -> None:
        pm.execute_notebook(str(source), str(scratch), parameters=parameters, kernel_name="python3",
                            cwd=str(cwd), progress_bar=False, log_output=False, stderr_file=progress,
                            on_notebook_start=progress.notebook_start, on_cell_start=on_cell_start,
                            **kernel_options("python3", kernel_log, source.stem), **options)

    try:
        with ctrl_c:
            if kernel is not None and kernel.alive():
                _ACTIVE_KERNEL["km"] = kernel.km
                try:
                    # A kernel still running its imports answers only once they are done: wait for them, not 60 s.
                    run({"km": kernel.km, "start_timeout": EARLY_KERNEL_WAIT_S})
                except pm.PapermillExecutionError:
                    raise
                except Exception as exc:
                    if ctrl_c.requested or ctrl_c.cell_started:
                        raise
                    kernel.shutdown()
                    kernel.note(f"--- the early kernel of {source.stem} failed before its first cell "
                                 f"({type(exc).__name__}: {exc}); the chapter runs in a new kernel\n")
                    progress.line(f"[book] {source.stem}: its early kernel failed ({exc}); starting a new kernel "
                                  f"(see {kernel_log or 'the kernel log'})")
                    run({})
            else:
                run({})
    except pm.PapermillExecutionError as exc:
        where = progress.where()
        kept = _keep(scratch, failed_dir)
        if ctrl_c.requested or exc.ename == "KeyboardInterrupt":
            raise BuildInterrupted(where, kept) from None
        first = next((line for line in (exc.source or "").splitlines() if line.strip()), "").strip()
        raise ChapterFailed(f"chapter {source.stem} failed in cell {exc.cell_index} "
                            f"(In [{exc.exec_count}]: {first[:80]}): {exc.ename}: {exc.evalue}\n"
                            f"the partially executed notebook is kept at {kept}") from exc
    except KeyboardInterrupt:
        where = progress.where()
        raise BuildInterrupted(where, _keep(scratch, failed_dir)) from None
    except Exception:
        if ctrl_c.requested:  # Ctrl-C while the kernel started: it died before it answered
            raise BuildInterrupted(progress.where(), _keep(scratch, failed_dir)) from None
        raise
    finally:
        if kernel is not None:  # papermill stops only the kernels it started
            kernel.shutdown()
    tidy_notebook(scratch)
    os.replace(scratch, output)
    if failed_dir != output.parent:
        (failed_dir / output.name).unlink(missing_ok=True)  # an earlier failure of this chapter is superseded
    return output


class _KernelStartNoise(logging.Filter):
    """Drops nbclient's log line for a kernel that died before it answered: the runner says what happened itself
    (the interrupted line, the early kernel replaced, or the error that stops the chapter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Error occurred while starting new kernel client")


_PAPERMILL_LOG = logging.getLogger("papermill")  # the logger papermill hands nbclient
if not any(isinstance(f, _KernelStartNoise) for f in _PAPERMILL_LOG.filters):
    _PAPERMILL_LOG.addFilter(_KernelStartNoise())


_PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|.*$|^\s*$")
# Lines libraries print on import or before training that say nothing about the chapter: Unsloth's sloth
# banner (version, GPU, licence; before training: examples, batch, trainable parameters) and its notices that
# it patched the libraries. Unsloth has no setting that silences them (its own logging is already off unless
# UNSLOTH_ENABLE_LOGGING=1), so the runner drops them from the published notebook; warnings stay. (In a build,
# the import's share of them is printed in the chapter's early kernel before any cell runs: nowhere.)
BANNER_LINES = (
    r"^\s*(\N{SLOTH}\s*)?Unsloth( Zoo)?:? (Will patch your computer|will now patch everything)",
    r"^\s*==\(\(====\)\)==",            # the sloth's head, with the version or the training run's sizes
    r"^\s*\\\\\s*/\|",                  # its arms
    r"^\s*O\^O/\s*\\_/\s*\\",           # its face
    r"^\s*\\\s+/(\s|$)",                # its chin
    r"^\s*\"-____-\"",                  # its feet, with the licence
    r"^\s*Unsloth: Fast downloading is enabled",
)
_BANNER = re.compile("|".join(f"(?:{b})" for b in BANNER_LINES))
# Cells the reader does not see: the chapter's defaults and papermill's injected values (chapter.header shows
# the values the chapter ran with, folded, once); the downloadable notebook keeps them.
HIDDEN_CELLS = ("parameters", "injected-parameters")
HIDE_TAG = "remove-cell"


def _clean_streams(nb) -> int:
    """Drop progress bars (stderr) and banner lines (stdout and stderr) from a notebook's stream outputs."""
    changed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                old = out.get("text", "")
                if out.get("name") == "stderr":
                    lines = re.split(r"[\r\n]", old)
                    text = "\n".join(ln for ln in lines if not _PROGRESS_LINE.match(ln) and not _BANNER.match(ln))
                else:
                    lines = old.split("\n")
                    text = "\n".join(ln for ln in lines if not _BANNER.match(ln))
                if not text.strip():
                    changed += 1
                    continue
                text = text.strip("\n") + "\n"
                if text != old and text.strip("\n") != old.strip("\n"):
                    changed += 1
                    out["text"] = text
            kept.append(out)
        cell["outputs"] = kept
    return changed


def _hide_boilerplate(nb) -> int:
    """Tag the parameters cell and papermill's injected-parameters cell ``remove-cell`` (kept beside their own
    tags: papermill finds the cell by ``parameters``)."""
    changed = 0
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if any(t in tags for t in HIDDEN_CELLS) and HIDE_TAG not in tags:
            cell.setdefault("metadata", {})["tags"] = [*tags, HIDE_TAG]
            changed += 1
    return changed


def _figure_html(png: str, alt: str, caption: str) -> str:
    from html import escape
    data = "".join(str(png).split())
    return (f'<figure class="mtlib-figure"><img src="data:image/png;base64,{data}" alt="{escape(alt)}"/>'
            + (f"<figcaption>{escape(caption)}</figcaption>" if caption else "") + "</figure>")


def _describe_figures(nb) -> int:
    """Give the page's figures the alt text and caption that ``chapter.show_figures`` put into each PNG output's
    metadata. A figure alone in its cell: the cell's ``mystnb.image.alt`` and ``mystnb.figure.caption`` (a
    numbered figure of the book). Several figures in a cell, or a figure among tables and text (where a caption
    of the cell would wrap every output): each figure gets an HTML rendering of its own, ``<figure>`` with its
    ``<img alt>`` and ``<figcaption>``, which the book shows in place of the PNG."""
    changed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        rich = [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]
        described = [(o, (o.get("metadata") or {}).get("image/png") or {}) for o in rich
                     if "image/png" in o.get("data", {})]
        described = [(o, md) for o, md in described if md.get("alt")]
        if not described:
            continue
        if len(described) == 1 and len(rich) == 1:
            out, md = described[0]
            mystnb = cell.setdefault("metadata", {}).setdefault("mystnb", {})
            wanted = {"image": {**mystnb.get("image", {}), "alt": md["alt"]}}
            if md.get("caption"):
                wanted["figure"] = {**mystnb.get("figure", {}), "caption": md["caption"]}
            if any(mystnb.get(k) != v for k, v in wanted.items()):
                mystnb.update(wanted)
                changed += 1
            continue
        for out, md in described:
            html = _figure_html(out["data"]["image/png"], md["alt"], md.get("caption") or "")
            if out["data"].get("text/html") != html:
                out["data"]["text/html"] = html
                changed += 1
    return changed


def tidy_notebook(notebook: Path) -> int:
    """Make an executed notebook fit to publish; returns how many changes it made (0: the file is untouched).

    * progress bars (stderr) and known banner lines (``BANNER_LINES``) are dropped; warnings and other text stay;
    * the parameters cell and papermill's injected cell are tagged ``remove-cell`` (``HIDDEN_CELLS``);
    * figures get their alt text and caption (:func:`_describe_figures`).

    Running it again changes nothing."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    changed = _clean_streams(nb) + _hide_boilerplate(nb) + _describe_figures(nb)
    if changed:
        from .results import atomic_write_text
        atomic_write_text(notebook, nbformat.writes(nb))
    return changed


# --------------------------------------------------------------------------- rendering

def _build_facts(out: Path) -> dict | None:
    """What the intro says about the build in ``out``: from its ``build.json`` and profile; None without one."""
    from .chapter import is_smoke, shown_path
    from .prompts import language_name
    try:
        record = read_build(out)
    except BuildRefused:
        record = None
    if record is None:
        return None
    params, description = {}, ""
    for source in (record.get("profile_path"), record.get("profile")):
        if source:
            try:
                prof = profiles.load_profile(source, check_device=False)
            except (MtlibError, OSError):
                continue
            params, description = profiles.effective_parameters(prof, "03_sft"), prof.get("description") or ""
            break
    model = record.get("model") or params.get("model")
    smoke = record.get("profile") == "smoke" or is_smoke({"model": model})
    dataset = record.get("dataset") or params.get("dataset")
    if dataset and Path(str(dataset)).expanduser().is_absolute():
        dataset = shown_path(dataset, out)
    data = str(dataset) if dataset else "(the chapters' default)"
    if params.get("src_lang") and params.get("tgt_lang"):
        data += f", {language_name(params['src_lang'])} into {language_name(params['tgt_lang'])}"
    sizes = [f"{params['train_size']:,} training pairs" if params.get("train_size") else "every training pair",
             f"{params['test_size']:,} sentences per test set" if params.get("test_size") else "whole test sets"]
    if os.environ.get("MULTI30K_DIR") and str(record.get("dataset")) == "multi30k":
        sizes.append("files from a local copy ($MULTI30K_DIR)")
    started = str(record.get("started") or "")
    return {"profile": record.get("profile"), "description": " ".join(description.split()),
            "model": model, "data": f"{data} ({'; '.join(sizes)})", "date": started[:10], "started": started,
            "build_id": record.get("build_id"), "commit": (record.get("git_commit") or "")[:12], "smoke": smoke}


def build_block(facts: dict) -> str:
    """The intro's section naming the build the reader is looking at (MyST): profile, model, data, date, and
    whether it is a smoke build, whose numbers mean nothing."""
    profile = f"`{facts['profile']}`" + (f": {facts['description']}" if facts["description"] else "")
    model = f"`{facts['model']}`" + (" (a tiny random model)" if facts["smoke"] else "")
    built = (f"{facts['date']} (build `{facts['build_id']}`" + (f", commit `{facts['commit']}`" if facts["commit"]
                                                                else "") + ")")
    rows = [("profile", profile), ("model", model), ("data", facts["data"]), ("built", built)]
    listed = "\n".join(f"- **{k}**: {v}" for k, v in rows)
    if facts["smoke"]:
        head = ":::{admonition} This is a smoke build: its numbers mean nothing\n:class: warning\n\n"
        text = ("It ran with a tiny, randomly initialised model, a few hundred sentence pairs and a handful of "
                "training steps, to check that the whole book builds. Every score, curve and translation in the "
                "chapters that train or evaluate a model is noise; build the `seed` or `fast` profile on a GPU "
                "for real results.")
    else:
        head = ":::{admonition} The build you are reading\n:class: note\n\n"
        text = ("The scores, curves and translations of the chapters come from this build's runs; the appendix's "
                "GPU timings come from the benchmark results stored in the repository.")
    return f"{BUILD_BLOCK_START}\n{head}{text}\n\n{listed}\n:::\n{BUILD_BLOCK_END}\n"


BUILD_BLOCK_START, BUILD_BLOCK_END = "<!-- mtlib.book: this build -->", "<!-- mtlib.book: end of this build -->"


def _with_build_block(text: str, block: str) -> str:
    """``text`` (the intro) with ``block`` right after its title (replacing an earlier one)."""
    text = re.sub(re.escape(BUILD_BLOCK_START) + r".*?" + re.escape(BUILD_BLOCK_END) + r"\n?", "", text, flags=re.S)
    title = re.search(r"^# .*\n", text, re.M)
    at = title.end() if title else 0
    return text[:at] + "\n" + block + text[at:]


def assemble(out: Path, executed: list[Path]) -> Path:
    """Lay out the book's sources under ``<out>/book``: config, hand-written pages, the stylesheet
    (``book/_static``), and a TOC of the executed chapters (a chapter never executed in this folder is left out
    of the TOC). The intro gets a section naming this build (:func:`build_block`, from ``build.json``); the
    source page is not changed."""
    book = out / "book"
    book.mkdir(parents=True, exist_ok=True)
    for notebook in executed:
        tidy_notebook(notebook)
    shutil.copy2(REPO_ROOT / "_config.yml", book / "_config.yml")
    static = REPO_ROOT / "book" / "_static"
    if static.is_dir():
        shutil.copytree(static, book / "_static", dirs_exist_ok=True)
    present = {p.stem for p in executed}
    facts = _build_facts(out)
    for page in (REPO_ROOT / "book").iterdir():
        if page.is_file() and page.suffix in (".md", ".bib", ".png", ".svg"):
            shutil.copy2(page, book / page.name)
        if page.is_file() and page.suffix == ".md":  # a link to a chapter left out becomes plain text
            text = page.read_text(encoding="utf-8")
            kept = re.sub(r"\[([^\]]+)\]\(executed/([^)\s]+?)(?:\.ipynb)?\)",
                          lambda m: m.group(0) if m.group(2) in present else f"{m.group(1)} (not in this build)", text)
            if page.stem == "intro" and facts is not None:
                kept = _with_build_block(kept, build_block(facts))
            if kept != text:
                (book / page.name).write_text(kept, encoding="utf-8")
    toc = [line for line in (REPO_ROOT / "_toc.yml").read_text(encoding="utf-8").splitlines(keepends=True)
           if not (m := re.search(r"file:\s*executed/(\S+)", line)) or m.group(1) in present]
    if not any(re.search(r"file:\s*executed/", line) for line in toc):
        raise MtlibError(f"no executed chapter in {book / 'executed'} to render")
    from .results import atomic_write_text
    atomic_write_text(book / "_toc.yml", "".join(toc))
    return book


def missing_chapters(executed: list[Path]) -> list[str]:
    """Chapters that ``_toc.yml`` lists but that are not among ``executed`` (left out of the rendered book)."""
    toc = (REPO_ROOT / "_toc.yml").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"file:\s*executed/(\S+)", toc)) - {p.stem for p in executed})


_PROBLEM = re.compile(r"(WARNING:|ERROR:|CRITICAL:|SEVERE:|Traceback \(most recent call last\)|Exception occurred|"
                      r"build finished with problems)")


def build_html(book: Path, log_path: Path) -> Path:
    """``jupyter-book build`` (execution off, warnings are errors); grep its log, since it can exit 0 anyway.

    Renders into ``<out>/.render`` and swaps the result into ``book/_build`` only when it succeeded: a failed
    render leaves the previous HTML as it was.
    """
    from .results import atomic_write_text
    exe = Path(sys.executable).with_name("jupyter-book")
    staging = book.parent / ".render"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book), "--builder", "html",
           "-W", "-n", "--keep-going", "--all", "--path-output", str(staging)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    atomic_write_text(log_path, log)
    problems = [line for line in log.splitlines() if _PROBLEM.search(line)]
    if proc.returncode != 0 or problems or not (staging / "_build" / "html" / "index.html").exists():
        shown = "\n".join(problems[:20]) or log[-3000:]
        raise MtlibError(f"jupyter-book build failed (exit {proc.returncode}); full log at {log_path}:\n{shown}")
    final, old = book / "_build", book / ".build-old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging / "_build", final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return final / "html"


# --------------------------------------------------------------------------- the output folder

def check_out(out: str | os.PathLike) -> Path:
    """The resolved ``--out``, refused up front (BuildRefused) when it is the repository, holds it, lies in one of
    its source folders, is a file, or cannot be written."""
    out = Path(out).expanduser().resolve()
    repo = REPO_ROOT.resolve()
    if out == repo or out in repo.parents:
        what = "the repository's root" if out == repo else f"a folder that holds the repository ({repo})"
        raise BuildRefused(f"--out {out} is {what}: a build writes runs/, book/ and more into its folder; "
                           f"give it a folder of its own, e.g. --out {repo / 'build' / 'smoke'}")
    if repo in out.parents:
        top = out.relative_to(repo).parts[0]
        if top in SOURCE_DIRS or top.startswith("."):
            raise BuildRefused(f"--out {out} is inside the repository's {top}/ folder, among its sources; "
                               f"use a folder under {repo / 'build'} or outside the repository")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BuildRefused(f"--out {out}: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BuildRefused(f"--out {out}: {probe} is not writable by this user; choose another --out")
    return out


class BuildLock:
    """``with BuildLock(out):`` one build at a time per folder: ``<out>/.build.lock`` is locked (``flock``) and
    names the holder's pid; a second build is refused with BuildRefused naming it. The lock dies with its
    process, so a killed build leaves no stale lock behind."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: an exclusive create, stale if its pid is gone
            return self._enter_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 500).decode("utf-8", "replace").strip() or "a process"
            os.close(fd)
            raise BuildRefused(f"another build is writing to {self.path.parent} ({holder}); wait for it to end or "
                               f"stop it, or build into another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}\n".encode())
        self.fd = fd
        return self

    def _enter_exclusive(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.path.read_text(encoding="utf-8", errors="replace").strip()
                pid = re.match(r"pid (\d+)", holder)
                if pid and _alive(int(pid.group(1))):
                    raise BuildRefused(f"another build is writing to {self.path.parent} ({holder}); wait for it "
                                       f"to end or stop it, or build into another --out") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}\n".encode())
            self.fd, self._exclusive = fd, True
            return self
        raise BuildRefused(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            if getattr(self, "_exclusive", False):
                self.path.unlink(missing_ok=True)
            self.fd = None
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# --------------------------------------------------------------------------- the build record

def read_build(out: Path) -> dict | None:
    """``<out>/build.json``, or None when there is none; BuildRefused when it is damaged."""
    path = Path(out) / BUILD_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildRefused(f"{path} is damaged ({exc}); pass --clean to move this build aside and start anew") \
            from None
    if not isinstance(record, dict) or not isinstance(record.get("build_id"), str):
        raise BuildRefused(f"{path} names no build_id; pass --clean to move this build aside and start anew")
    record.setdefault("chapters", {})
    return record


def _save_build(out: Path, record: dict) -> None:
    from .results import write_json
    record["updated"] = _now()
    write_json(Path(out) / BUILD_FILE, record)


def _profile_digest(prof: dict) -> str:
    text = json.dumps({"parameters": prof["parameters"], "chapters": prof["chapters"]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_build(prof: dict) -> dict:
    """A new build record: id, profile, model and dataset with their pinned revisions (None: the newest), start
    time."""
    from .results import git_commit
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    sft = profiles.chapter_parameters(prof, "03_sft")  # a revision not pinned is None, its default: the newest
    return {"build_id": f"{stamp}-{prof['name']}-{_secrets.token_hex(3)}", "profile": prof["name"],
            "profile_path": prof["path"], "profile_digest": _profile_digest(prof),
            "model": sft.get("model", "(the chapters' default)"), "model_revision": sft.get("model_revision"),
            "dataset": sft.get("dataset", "(the chapters' default)"), "dataset_revision": sft.get("dataset_revision"),
            "started": _now(), "updated": _now(), "status": "new", "git_commit": git_commit(), "chapters": {}}


def _describe(record: dict) -> str:
    return (f"build {record['build_id']} (profile {record.get('profile')}, model {record.get('model')}, "
            f"started {record.get('started')}, {record.get('status')})")


def move_aside(out: Path, record: dict | None) -> Path:
    """Move the build's own entries (BUILD_ENTRIES) to a sibling folder ``<out>.old-<build id>``; returns it."""
    tag = record["build_id"] if record else "unnamed-" + _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    dest = out.with_name(f"{out.name}.old-{tag}")
    n = 1
    while dest.exists():
        n += 1
        dest = out.with_name(f"{out.name}.old-{tag}-{n}")
    dest.mkdir()
    for name in BUILD_ENTRIES:
        if (out / name).exists():
            os.replace(out / name, dest / name)
    return dest


def open_build(out: Path, prof: dict | None, *, only=None, resume=False, clean=False, render_only=False,
               say: Progress) -> tuple[dict, bool]:
    """The build to work on in ``out`` and whether it continues an earlier one; BuildRefused when the folder
    holds something this invocation must not mix with."""
    existing = None
    try:
        existing = read_build(out)
    except BuildRefused:
        if not clean:
            raise
    leftovers = [e for e in BUILD_ENTRIES if e != BUILD_FILE and (out / e).exists()]
    others = sorted(p.name for p in out.iterdir() if p.name not in BUILD_ENTRIES and not p.name.startswith("."))
    if existing is None and not leftovers and not (out / BUILD_FILE).exists() and others:
        raise BuildRefused(f"--out {out} holds other files ({', '.join(others[:5])}{' ...' if len(others) > 5 else ''})"
                           f"; build into a new or empty folder")
    if clean and (existing is not None or leftovers or (out / BUILD_FILE).exists()):
        dest = move_aside(out, existing)
        say.line(f"[book] --clean: moved {'build ' + existing['build_id'] if existing else 'the earlier output'} "
                 f"aside to {dest}")
        existing, leftovers = None, []
    if render_only:
        if existing is None:
            raise BuildRefused(f"--render-only: {out} holds no build ({BUILD_FILE}) to render")
        return existing, True
    if existing is None:
        if leftovers:
            raise BuildRefused(f"--out {out} holds the output of an earlier build without {BUILD_FILE} "
                               f"({', '.join(leftovers)}); pass --clean to move it aside and start a new build")
        if resume:
            raise BuildRefused(f"--resume: {out} holds no build to continue; leave out --resume to start one there")
        return new_build(prof), False
    if not (resume or only):
        raise BuildRefused(f"--out {out} already holds {_describe(existing)}. Pass --resume to continue it (the "
                           f"chapters not executed yet), --only CHAPTER to re-execute chapters in it, --render-only "
                           f"to render it, or --clean to move it aside to {out.name}.old-{existing['build_id']} and "
                           f"start a new build")
    mine = new_build(prof)
    differ = [k for k in ("profile", "model", "dataset") if existing.get(k) != mine[k]]
    if differ:
        raise BuildRefused(f"--out {out} holds {_describe(existing)}, whose "
                           + ", ".join(f"{k} is {existing.get(k)!r}, not {mine[k]!r}" for k in differ)
                           + ": its runs must not mix with this one's. Pass --clean to move it aside, or build "
                             "into another --out")
    if existing.get("profile_digest") != mine["profile_digest"]:
        say.line(f"[book] note: profile {prof['name']} changed since build {existing['build_id']} started; the "
                 f"chapters executed now use its new values")
        existing["profile_digest"] = mine["profile_digest"]
    say.line(f"[book] continuing {_describe(existing)}")
    return existing, True


# --------------------------------------------------------------------------- the build

def _kept_line(out: Path, record: dict, kept: Path | None) -> str:
    done = [c for c, s in record["chapters"].items() if s.get("status") == "executed"]
    parts = [f"kept build {record['build_id']} in {out}",
             f"executed: {', '.join(done) if done else 'none'}"]
    if kept is not None:
        parts.append(f"partial notebook {kept}")
    parts.append("runs cut short are marked failed; continue with --resume")
    return "; ".join(parts)


def build(profile: str, out: str | os.PathLike, only: list[str] | None = None, html: bool = True,
          notebook_dir: Path = NOTEBOOK_DIR, resume: bool = False, clean: bool = False, render_only: bool = False,
          progress: Progress | None = None) -> Path:
    """Execute the chapters with ``profile`` into ``<out>/book/executed`` and render the book; returns ``<out>``.

    See the module docstring for ``resume``, ``clean``, ``only`` and ``render_only`` on a folder that holds a
    build. Raises BuildRefused before anything runs when ``out`` cannot take this build.
    """
    say = progress or Progress()
    if resume and clean:
        raise ConfigError("--resume continues the build in --out and --clean moves it aside: pass one of them")
    if render_only and (only or resume or clean or not html):
        raise ConfigError("--render-only renders what is executed; it takes no --only, --resume, --clean or --no-html")
    out = check_out(out)
    prof = None if render_only else profiles.load_profile(profile)  # validates; refuses requires_cuda on a CPU
    sources = chapters(notebook_dir)
    if only:
        unknown = [c for c in only if c not in {s.stem for s in sources}]
        if unknown:
            raise ConfigError(f"--only names unknown chapters {', '.join(unknown)}; chapters are "
                              f"{', '.join(s.stem for s in sources)}")
    if not sources and not render_only:
        raise ConfigError(f"no chapters to run in {notebook_dir}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildRefused(f"cannot create --out {out}: {exc.strerror or exc}") from None
    runs_root, executed_dir = out / "runs", out / "book" / "executed"
    with BuildLock(out):
        record, continuing = open_build(out, prof, only=only, resume=resume, clean=clean, render_only=render_only,
                                        say=say)
        if render_only:
            todo = []
        elif only:
            todo = [s for s in sources if s.stem in only]
        elif continuing:
            todo = [s for s in sources if record["chapters"].get(s.stem, {}).get("status") != "executed"
                    or not (executed_dir / s.name).exists()]
            if not todo:
                say.line(f"[book] every chapter of build {record['build_id']} is executed; --only CHAPTER "
                         f"re-executes one")
        else:
            todo = sources
        if not todo and not html:
            _check_leaks(out)
            return out
        runs_root.mkdir(parents=True, exist_ok=True)
        if os.environ.get("MULTI30K_DIR"):
            os.environ["MULTI30K_DIR"] = str(Path(os.environ["MULTI30K_DIR"]).expanduser().resolve())
        record.update(status="running", pid=os.getpid())
        _save_build(out, record)
        stage, kept, kernel, early = "before the first chapter", None, None, None
        try:
            for position, source in enumerate(todo, start=1):
                kernel, early = early, None
                if position < len(todo):  # the next chapter's kernel loads its libraries while this one runs
                    early = EarlyKernel(todo[position], cwd=Path.cwd(), log=out / "kernels.log")
                params = profiles.chapter_parameters(prof, source.stem) if source.stem in profiles.CHAPTERS \
                    else {"profile": prof["name"]}
                for name, value in (("runs_root", str(runs_root)), ("build_id", record["build_id"])):
                    if name in profiles.SCHEMA and source.stem in profiles.SCHEMA[name].chapters:
                        params[name] = value
                state = record["chapters"].setdefault(source.stem, {})
                state.update(status="running", started=_now())
                _save_build(out, record)
                stage = f"after {source.stem} had started"
                say.start_chapter(source.stem, position, len(todo), prof["name"])
                start = time.perf_counter()
                try:
                    # The kernel starts where the user ran the command: relative paths in the profile and in
                    # MULTI30K_DIR mean the same in every chapter as on the command line.
                    execute_chapter(source, executed_dir / source.name, params, cwd=Path.cwd(), progress=say,
                                    running_dir=out / "running", failed_dir=out / "failed",
                                    kernel_log=out / "kernels.log", kernel=kernel, next_kernel=early)
                except BuildInterrupted as exc:
                    state.update(status="interrupted", seconds=round(time.perf_counter() - start, 1),
                                 notebook=str(exc.kept) if exc.kept else None)
                    stage, kept = f"in {exc.where}", exc.kept
                    raise
                except BaseException as exc:
                    state.update(status="failed", seconds=round(time.perf_counter() - start, 1),
                                 error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    raise
                seconds = time.perf_counter() - start
                state.update(status="executed", seconds=round(seconds, 1), finished=_now(),
                             executions=state.get("executions", 0) + 1)
                state.pop("error", None)
                state.pop("notebook", None)
                _save_build(out, record)
                say.end_chapter(seconds)
                stage = f"after {source.stem}"
            try:
                (out / "running").rmdir()  # empty once every chapter moved on
            except OSError:
                pass
            if html:
                stage = "while rendering the book"
                executed = chapters(executed_dir)
                book = assemble(out, executed)
                left_out = missing_chapters(executed)
                if left_out:
                    say.line(f"[book] not executed in this build, so not in the book: {', '.join(left_out)}")
                say.line(f"[book] rendering HTML with jupyter-book ({len(executed)} chapters)")
                html_dir = build_html(book, out / "jupyter-book.log")
                record["rendered"] = _now()
                say.line(f"[book] HTML book at {html_dir / 'index.html'}")
        except (BuildInterrupted, KeyboardInterrupt):
            _stop_kernels(kernel, early)
            say.close()
            record["status"] = "interrupted"
            _save_build(out, record)
            raise BuildInterrupted(f"interrupted {stage}; {_kept_line(out, record, kept)}", kept) from None
        except BaseException:
            _stop_kernels(kernel, early)
            say.close()
            record["status"] = "failed"
            _save_build(out, record)
            raise
        done = all(record["chapters"].get(s.stem, {}).get("status") == "executed" for s in sources)
        record["status"] = "finished" if done else "incomplete"
        _save_build(out, record)
    _check_leaks(out)
    return out


def _stop_kernels(*kernels: EarlyKernel | None) -> None:
    """Stop the early kernels a stopped build leaves (the running chapter's, if it never reached papermill, and the
    next one's)."""
    for kernel in kernels:
        if kernel is not None:
            kernel.shutdown()


def _check_leaks(out: Path) -> None:
    """MtlibError when the token (one that looks like a token; a placeholder such as "none" is not searched)
    appears in any output file."""
    leaks = find_secret(out)
    if leaks:
        raise MtlibError(f"the Hugging Face token appears in {len(leaks)} output file(s), e.g. {leaks[0]}; "
                         f"do not print it or pass it as a parameter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlib.book", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", help="shipped profile name or YAML path (default: smoke)")
    parser.add_argument("--out", default=None, help="output folder (default: build/<profile>)")
    parser.add_argument("--only", default=None, help="comma-separated chapters to run, e.g. 01_data,02_metrics; in a "
                        "folder that holds a build of the same profile, re-executes them within it")
    parser.add_argument("--resume", action="store_true", help="continue the build in --out: execute the chapters "
                        "not executed yet (or those of --only), then render")
    parser.add_argument("--clean", action="store_true", help="move the build in --out aside "
                        "(to <out>.old-<build id>) and start a new one")
    parser.add_argument("--render-only", action="store_true", help="render the chapters already executed in --out")
    parser.add_argument("--no-html", action="store_true", help="execute the chapters but do not render the book")
    parser.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out or str(REPO_ROOT / "build" / Path(args.profile).stem)
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    start, started_at = time.perf_counter(), time.time()
    # Which chapters read the runs of which: re-executing one leaves the later ones on its superseded runs.
    reads_runs_of = {"04_grpo": ("03_sft",), "05_results": ("03_sft", "04_grpo")}

    def record_now():
        try:
            return read_build(Path(out).expanduser().resolve())
        except (BuildRefused, OSError):
            return None

    def interrupted_line() -> str:
        """Ctrl-C outside a chapter (opening the build, --clean's move aside, the final token-leak check): what
        the folders hold now, from the files themselves."""
        where = Path(out).expanduser().resolve()

        def entries(folder):
            return [e for e in BUILD_ENTRIES if (folder / e).exists()]
        aside = [p for p in (where.parent.iterdir() if args.clean and where.parent.is_dir() else ())
                 if p.name.startswith(f"{where.name}.old-") and p.is_dir() and p.stat().st_mtime >= started_at - 1]
        if aside:
            dest = max(aside, key=lambda p: p.stat().st_mtime)
            moved, left = entries(dest), entries(where)
            if not moved:
                return (f"interrupted before --clean moved anything: the earlier build is still whole in {where}; "
                        f"nothing new was built")
            if left:
                return (f"interrupted while --clean moved the earlier build aside: {', '.join(moved)} now in {dest}, "
                        f"{', '.join(left)} still in {where}; nothing new was built. Move those into {dest} to keep "
                        f"that build whole, then build again")
            return (f"interrupted after --clean moved the earlier build aside to {dest}; nothing new was built; "
                    f"{where} is free for a new build")
        record = record_now()
        if record is None:
            left = entries(where) if where.is_dir() else []
            return ("interrupted before any chapter ran; nothing was kept" if not left else
                    f"interrupted before any chapter ran; nothing new was kept ({where} holds {', '.join(left)}, as "
                    f"before)")
        done = [c for c, s in record["chapters"].items() if s.get("status") == "executed"]
        what = f"build {record['build_id']} in {where} ({record.get('status')}; executed: {', '.join(done) or 'none'})"
        if (where / BUILD_FILE).stat().st_mtime < started_at:
            return f"interrupted before any chapter ran; {what} is as it was"
        if record.get("status") in ("finished", "incomplete"):
            again = "--resume --no-html" if args.no_html else "--render-only"
            return (f"interrupted after the chapters, during the final token-leak check: kept {what}; the check did "
                    f"not finish: {again} runs it again")
        return f"interrupted; kept {what}; continue with --resume"

    def stale_advice() -> str | None:
        """Chapters executed before a chapter whose runs they read was executed again, and the fix."""
        record = record_now()
        finished = {c: st["finished"] for c, st in (record["chapters"] if record else {}).items()
                    if st.get("status") == "executed" and st.get("finished")}
        pairs = [(c, d) for c, needs in reads_runs_of.items() for d in needs
                 if c in finished and d in finished and finished[c] < finished[d]]
        stale = {c for c, _ in pairs}
        redo = stale | {c for c, needs in reads_runs_of.items() if c in finished and stale & set(needs)}
        why = "; ".join(f"{c} still uses the runs {d} made before it was executed again" for c, d in pairs)
        return f"[book] note: {why}: re-execute them with --only {','.join(sorted(redo))}" if pairs else None

    try:
        build(args.profile, out, only=only, html=not args.no_html, notebook_dir=Path(args.notebooks),
              resume=args.resume, clean=args.clean, render_only=args.render_only)
    except BuildInterrupted as exc:
        print(f"[book] {exc}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:  # outside the chapters
        print(f"[book] {interrupted_line()}", file=sys.stderr, flush=True)
        return 130
    except MtlibError as exc:
        print(f"[book] error: {exc}", file=sys.stderr, flush=True)
        return 1
    advice = stale_advice()
    if advice:
        print(advice, flush=True)
    print(f"[book] finished in {_duration(time.perf_counter() - start)}", flush=True)
    return 0


# --------------------------------------------------------------------------- Sphinx extension

def _fix_launch_urls(app, pagename, templatename, context, doctree):
    """Point the launch (Colab) buttons of executed chapters at the source notebooks (``notebooks/``) in the
    repository; the download button keeps serving the executed notebook the page was rendered from."""
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            url = button.get("url", "")
            if url.startswith(("http://", "https://")) and "/executed/" in url:
                button["url"] = url.replace("/executed/", "/notebooks/")


def setup(app):
    """Sphinx extension (listed in _config.yml): corrects the Colab launch links of executed chapters."""
    app.connect("html-page-context", _fix_launch_urls, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    sys.exit(main())
