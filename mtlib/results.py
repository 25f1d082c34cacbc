"""Run records: one folder per run under ``runs/<run-id>/`` with config, metrics, translations and timings.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a crash
never leaves half a JSON file behind, and a run's ``status.json`` says whether it finished.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .credentials import scrub
from .errors import ConfigError, DataError

METRIC_COLUMNS = ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum", "bp", "sys_len", "ref_len", "n"]
ENV_PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "sacrebleu", "rouge_score",
                "bitsandbytes", "unsloth", "unsloth_zoo"]
_STAGE_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def atomic_write_text(path, text: str | Iterable[str]) -> Path:
    """Write ``text`` (a string, or an iterable of string chunks) to ``path`` atomically: a temporary file in
    the same folder, then a rename, so a crash leaves the old file or the new one, never half of one."""
    return _atomic_write(path, [text] if isinstance(text, str) else text, binary=False)


def atomic_write_bytes(path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically, as :func:`atomic_write_text` does."""
    return _atomic_write(path, [payload], binary=True)


def _atomic_write(path, chunks, binary: bool) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return repr(obj)


def _clean_floats(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def write_json(path, obj) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(_clean_floats(obj), indent=2, ensure_ascii=False,
                                              default=_json_default) + "\n")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(repo: Path | None = None) -> str | None:
    """The commit hash of the checkout holding mtlib (or ``repo``), or None when that folder is not the top of
    a git checkout (no git, an exported copy nested in another repository, an install inside one)."""
    repo = (Path(repo) if repo else Path(__file__).parent.parent).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != repo:
        return None
    return lines[1]


def environment() -> dict:
    """Library versions, Python, device and git commit: what ``env.json`` records."""
    versions = {}
    for pkg in ENV_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = platform.processor() or platform.machine()
    cuda, gpus = False, []
    try:
        import torch
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            cuda, device = True, gpus[0]
    except ImportError:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cuda": cuda, "device": device,
            "gpus": gpus, "packages": versions, "git_commit": git_commit(),
            "unsloth_settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("UNSLOTH_")}}


def peak_memory_gb() -> dict:
    """Peak memory so far: GPU memory allocated by torch on CUDA, else the process's max RSS."""
    out = {}
    try:
        import torch
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except ImportError:
        pass
    try:
        import resource
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        out["peak_rss_gb"] = rss_kb * (1 if sys.platform == "darwin" else 1024) / 1e9
    except ImportError:  # Windows
        pass
    out["peak_mem_gb"] = out.get("peak_gpu_mem_gb", out.get("peak_rss_gb"))
    return out


class Run:
    """A run folder ``<root>/<utc-time>-<stage>-<suffix>``, created exclusively (never shared)."""

    def __init__(self, path, stage: str, name: str | None = None):
        self.path = Path(path)
        self.run_id = self.path.name
        self.stage = stage
        self.name = name or stage
        self._t0 = time.time()
        self.timings: dict[str, float] = {}

    @classmethod
    def create(cls, stage: str, config: dict | None = None, root="runs", name: str | None = None) -> "Run":
        """Make a new run folder under ``root`` and write config.json, env.json and status.json (running)."""
        if not isinstance(stage, str) or not _STAGE_RE.match(stage):
            raise ConfigError(f"run stage must be a lowercase word such as 'base', 'sft' or 'grpo', got {stage!r}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            path = root / f"{stamp}-{stage}-{os.getpid() % 100000:05d}{secrets.token_hex(3)}"
            try:
                os.mkdir(path)  # exclusive: fails if another process made the same name
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions in a row
            raise RuntimeError(f"could not create a unique run folder under {root}")
        run = cls(path, stage, name)
        run.write_json("config.json", {"stage": stage, "name": run.name, **(config or {})})
        run.write_json("env.json", environment())
        run._status("running")
        return run

    @classmethod
    def open(cls, path) -> "Run":
        """Reopen an existing run folder (to add metrics or mark it finished)."""
        path = Path(path)
        cfg = read_json(path / "config.json") or {}
        return cls(path, cfg.get("stage", "unknown"), cfg.get("name"))

    # -- files ---------------------------------------------------------------------------------------
    def write_json(self, filename: str, obj) -> Path:
        """Atomically write ``obj`` (secrets scrubbed by :func:`mtlib.credentials.scrub`) to ``<run>/<filename>``."""
        return write_json(self.path / filename, scrub(obj))

    def read_json(self, filename: str):
        return read_json(self.path / filename)

    def write_translations(self, rows, filename: str = "translations.jsonl") -> Path:
        """Write translations (DataFrame or iterable of dicts with source, reference, hypothesis) as JSON lines."""
        if hasattr(rows, "to_dict"):
            rows = rows.to_dict("records")
        lines = (json.dumps(_clean_floats(dict(r)), ensure_ascii=False, default=_json_default) + "\n" for r in rows)
        return atomic_write_text(self.path / filename, lines)

    def add_metrics(self, split: str, metrics: dict) -> Path:
        """Add (or replace) one split's scores in metrics.json ({split: {bleu: ..., ...}})."""
        current = self.read_json("metrics.json") or {}
        current[str(split)] = metrics
        return self.write_json("metrics.json", current)

    @contextmanager
    def timer(self, phase: str):
        """``with run.timer("translate"): ...`` records the phase's seconds in timings.json."""
        t0 = time.time()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.time() - t0
            self._write_timings()

    def _write_timings(self, **extra):
        self.write_json("timings.json", {**self.timings, "total": time.time() - self._t0, **peak_memory_gb(),
                                         **extra})

    def _status(self, status: str, **extra):
        prev = self.read_json("status.json") or {}
        record = {"status": status, "stage": self.stage, "name": self.name,
                  "started": prev.get("started", _utc_now()), "updated": _utc_now(), **extra}
        self.write_json("status.json", record)

    @property
    def status(self) -> str | None:
        return (self.read_json("status.json") or {}).get("status")

    # -- endings -------------------------------------------------------------------------------------
    def finish(self, metrics: dict | None = None, split: str = "test") -> "Run":
        """Mark the run finished; ``metrics`` (one split's scores, or {split: scores}) go to metrics.json."""
        if metrics:
            if all(isinstance(v, dict) for v in metrics.values()):
                for s, m in metrics.items():
                    self.add_metrics(s, m)
            else:
                self.add_metrics(split, metrics)
        self._write_timings()
        self._status("finished")
        return self

    def fail(self, exc: BaseException) -> "Run":
        """Mark the run failed with the error; its files stay for inspection."""
        self._write_timings()
        self._status("failed", error=f"{type(exc).__name__}: {exc}")
        return self

    def __repr__(self):
        return f"Run({str(self.path)!r}, stage={self.stage!r})"


class DamagedRecordWarning(UserWarning):
    """A run record that cannot be read (truncated or hand-edited); the run is left out of every table."""


def read_json(path):
    """Parsed JSON of ``path``, or None when it does not exist; DataError naming the file when it is damaged."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
                        f"truncated or edited by hand") from exc


TRANSLATION_KEYS = ("source", "reference", "hypothesis")


def read_translations(path):
    """A run's translations.jsonl as a DataFrame (source, reference, hypothesis); DataError naming the file and
    line when it is damaged."""
    import pandas as pd
    path = Path(path)
    if path.is_dir():
        path = path / "translations.jsonl"
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for i, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {i}: not valid JSON ({exc.msg}): truncated or edited by hand") from exc
        if not isinstance(row, dict) or not all(k in row for k in TRANSLATION_KEYS):
            raise DataError(f"{path}, line {i}: expected an object with keys {', '.join(TRANSLATION_KEYS)}")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TRANSLATION_KEYS) if not rows else None)


def _record(path: Path, name: str, kind=dict, required: bool = False):
    """One JSON file of a run, checked to be a ``kind`` (DataError naming the file otherwise)."""
    value = read_json(path / name)
    if value is None and not required:
        return kind()
    if not isinstance(value, kind):
        raise DataError(f"{path / name}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def _read_run(path: Path, build_id: str | None = None, check_translations: bool = True):
    """``(config, status, timings, metrics)`` of a finished run, None for a run to leave out silently (not
    finished, another build); DataError naming the damaged file."""
    status = _record(path, "status.json")
    if status.get("status") != "finished":
        return None
    config = _record(path, "config.json", required=True)
    if build_id is not None and config.get("build_id") != build_id:
        return None
    timings = _record(path, "timings.json")
    metrics = _record(path, "metrics.json")
    for split, scores in metrics.items():
        if not isinstance(scores, dict):
            raise DataError(f"{path / 'metrics.json'}: the scores of split {split!r} are not an object")
    if metrics and check_translations and (path / "translations.jsonl").exists():
        n = len(read_translations(path))
        expected = {s.get("n") for s in metrics.values()} - {None}
        if expected and n not in expected:
            raise DataError(f"{path / 'translations.jsonl'} holds {n} translations, metrics.json scored "
                            f"{', '.join(map(str, sorted(expected)))}: truncated")
    return config, status, timings, metrics


def _run_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def damaged_records(root="runs", build_id: str | None = None):
    """The run records under ``root`` that cannot be read: a DataFrame (run_id, problem), one row per run.

    With ``build_id``, runs whose config names another build are not checked (a run whose config.json
    itself is damaged cannot say which build it belongs to, so it is listed).
    """
    import pandas as pd
    rows = []
    for path in _run_folders(Path(root)):
        try:
            _read_run(path, build_id)
        except DataError as exc:
            rows.append({"run_id": path.name, "problem": str(exc)})
    return pd.DataFrame(rows, columns=["run_id", "problem"])


def load_runs(root="runs", include_unscored: bool = False, build_id: str | None = None):
    """Finished runs as a DataFrame, one row per run and scored split (failed and running runs excluded).

    Columns: run_id, stage, name, split, model, build_id, the metrics, seconds, peak_mem_gb, started, path.
    Runs without scores (training runs) are included, with ``split`` empty, only when ``include_unscored``.
    ``build_id``: only the runs of that build (their config.json names it). A damaged record (truncated
    JSON, translations cut short) leaves its run out with a :class:`DamagedRecordWarning` naming the file;
    :func:`damaged_records` lists them.
    """
    import pandas as pd
    rows = []
    for path in _run_folders(Path(root)):
        try:
            record = _read_run(path, build_id)
        except DataError as exc:
            warnings.warn(f"skipping damaged run record: {exc}", DamagedRecordWarning, stacklevel=2)
            continue
        if record is None:
            continue
        config, status, timings, metrics = record
        base = {"run_id": path.name, "stage": config.get("stage"), "name": config.get("name"),
                "model": config.get("model"), "build_id": config.get("build_id"), "seconds": timings.get("total"),
                "peak_mem_gb": timings.get("peak_mem_gb"), "started": status.get("started"), "path": str(path)}
        if not metrics and include_unscored:
            rows.append({**base, "split": None})
        for split, scores in metrics.items():
            row = {**base, "split": split}
            row.update({k: v for k, v in scores.items() if not isinstance(v, (dict, list))})
            rows.append(row)
    columns = ["run_id", "stage", "name", "split", "model", "build_id", *METRIC_COLUMNS, "seconds", "peak_mem_gb",
               "started", "path"]
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df:
            df[c] = None
    rest = [c for c in df.columns if c not in columns]
    return df[columns + rest].reset_index(drop=True)
