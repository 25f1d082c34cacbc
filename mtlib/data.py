"""Multi30k (or any parallel corpus): load from the Hub or local files, take subsets, describe the corpus.

Every source gives a ``DatasetDict`` whose splits have one string column per language code
(``en``, ``de``, ...). Local files are read as raw bytes and split on ``\\n`` only: each line loses
its line terminator (``\\n`` or ``\\r\\n``) and nothing else, so inner and trailing spaces stay
exactly as in the release (Multi30k's ``train.de`` has 40 lines ending in a space and one with a
tab; they are kept, as in the Hub copy, which holds the same raw lines). A lone ``\\r`` inside a
line is kept too: splitting on it would shift the alignment of the two languages.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict, Features, Value

from .errors import ConfigError, DataError

HUB_ID = "bentrevett/multi30k"
MULTI30K = "multi30k"        # the official release: shipped for en/de, downloaded on first use for fr/cs
ENV_VAR = "MULTI30K_DIR"     # a local copy of the official raw files, used instead of the shipped ones
CACHE_VAR = "MULTI30K_CACHE"  # where downloaded languages are kept (default ~/.cache/mtlib/multi30k)
URL_VAR = "MULTI30K_URL"     # a mirror of the official raw folder (tests use a local server)
SHIPPED_DIR = Path(__file__).resolve().parent / "corpora" / "multi30k"
OFFICIAL_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
# Official raw file stems -> split names (the first three are the Hub's splits).
RAW_SPLITS = {
    "train": "train",
    "val": "validation",
    "test_2016_flickr": "test",
    "test_2017_flickr": "test_2017_flickr",
    "test_2017_mscoco": "test_2017_mscoco",
    "test_2018_flickr": "test_2018_flickr",
}
# Which raw files the official task-1 release has for each language (Czech has no 2017 test sets).
OFFICIAL_STEMS = {"en": tuple(RAW_SPLITS), "de": tuple(RAW_SPLITS), "fr": tuple(RAW_SPLITS),
                  "cs": ("train", "val", "test_2016_flickr", "test_2018_flickr")}
# File stems accepted for table files (jsonl/parquet/tsv), on top of RAW_SPLITS.
_STEM_ALIASES = {**RAW_SPLITS, "validation": "validation", "valid": "validation", "dev": "validation",
                 "test": "test"}
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".tsv")
_SPLIT_ORDER = list(dict.fromkeys(RAW_SPLITS.values()))


@dataclass
class SplitReport:
    """What happened to one split while loading: rows read, kept, and the dropped ones."""
    split: str
    files: list[str]
    read: int
    kept: int
    dropped_lines: list[int] = field(default_factory=list)  # 1-based line/row numbers

    @property
    def dropped(self) -> int:
        return self.read - self.kept


@dataclass
class LoadReport:
    """The loading report of :func:`load_pairs`: one :class:`SplitReport` per split."""
    source: str
    src_lang: str
    tgt_lang: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # split -> why it was not loaded

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.splits.values())

    def to_frame(self) -> pd.DataFrame:
        """One row per split: files, rows read, kept, dropped, first dropped line numbers."""
        return pd.DataFrame([{"split": s.split, "files": ", ".join(s.files), "read": s.read, "kept": s.kept,
                              "dropped": s.dropped, "dropped_lines": s.dropped_lines[:10]}
                             for s in self.splits.values()])

    def __str__(self) -> str:
        parts = [f"{s.split}: {s.kept}/{s.read} kept" + (f" ({s.dropped} dropped, lines {s.dropped_lines[:5]})"
                                                          if s.dropped else "")
                 for s in self.splits.values()]
        parts += [f"{split} skipped ({why})" for split, why in self.skipped.items()]
        return f"{self.source} [{self.src_lang}-{self.tgt_lang}] " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Locating data
# ---------------------------------------------------------------------------------------------

def default_raw_dir() -> Path:
    """The folder ``dataset: multi30k`` reads first: ``$MULTI30K_DIR`` (relative to the working directory)
    if set, else the copy shipped with mtlib (English and German)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser().resolve() if env else SHIPPED_DIR


def cache_dir() -> Path:
    """Where downloaded Multi30k languages are kept: ``$MULTI30K_CACHE``, else ``$XDG_CACHE_HOME/mtlib/multi30k``."""
    env = os.environ.get(CACHE_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mtlib" / "multi30k"


def _known_checksums(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` from a folder's ``SHA256SUMS`` (empty when it has none)."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return {}
    pairs = (line.split() for line in sums.read_text(encoding="utf-8").splitlines() if line.strip())
    return {name.lstrip("*"): digest for digest, name in pairs}


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _fetch(url: str) -> bytes:
    """The bytes at ``url``; offline, a DataError that says how to use a local copy instead."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"could not download {url} ({exc}). Without network access, download the Multi30k raw "
                        f"files yourself (https://github.com/multi30k/dataset, data/task1/raw) into a folder "
                        f"and set {ENV_VAR}=/that/folder, or pass the folder as the dataset") from exc


def download_multi30k(lang: str, cache: Path | None = None) -> Path:
    """Download the official raw files of ``lang`` that the cache lacks (from ``$MULTI30K_URL`` or GitHub).

    A download must be a readable gzip file and match the shipped ``SHA256SUMS`` where that lists it; its
    checksum is recorded in the cache's ``SHA256SUMS``, and a cached file that no longer matches is an
    error. Returns the cache folder.
    """
    from .results import atomic_write_bytes, atomic_write_text  # lazy: results is not needed to read files

    if lang not in OFFICIAL_STEMS:
        raise DataError(f"Multi30k task 1 has no language {lang!r}; it has {', '.join(OFFICIAL_STEMS)}. "
                        f"For another corpus pass a folder or file as the dataset")
    cache = Path(cache) if cache else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    base = os.environ.get(URL_VAR, OFFICIAL_URL).rstrip("/")
    recorded = _known_checksums(cache)
    known = {**recorded, **_known_checksums(SHIPPED_DIR)}
    for stem in OFFICIAL_STEMS[lang]:
        name = f"{stem}.{lang}.gz"
        target = cache / name
        if target.is_file():
            if name in known and _sha256(target.read_bytes()) != known[name]:
                raise DataError(f"{target} does not match its recorded checksum {known[name]}: delete it and "
                                f"load again to download it afresh")
            continue
        url = f"{base}/{name}"
        payload = _fetch(url)
        try:
            gzip.decompress(payload)
        except (OSError, EOFError) as exc:
            raise DataError(f"{url} is not a readable gzip file ({exc}); nothing was saved") from exc
        digest = _sha256(payload)
        if name in known and digest != known[name]:
            raise DataError(f"{url} does not match its checksum {known[name]} (got {digest}); nothing was saved")
        atomic_write_bytes(target, payload)
        recorded[name] = digest
        atomic_write_text(cache / "SHA256SUMS", "".join(f"{d}  {n}\n" for n, d in sorted(recorded.items())))
    return cache


def multi30k_folders(src_lang: str, tgt_lang: str) -> list[Path]:
    """The folders ``dataset: multi30k`` reads for a language pair, downloading missing languages first.

    ``$MULTI30K_DIR`` alone when it is set; else the shipped copy (en, de) and, for other languages, the cache.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        folder = default_raw_dir()
        if not folder.is_dir():
            raise DataError(f"{ENV_VAR}={env} is not a folder: point it at the folder holding the Multi30k raw "
                            f"files (train.en.gz, ...)")
        return [folder]
    folders = [SHIPPED_DIR]
    for lang in (src_lang, tgt_lang):
        if lang not in OFFICIAL_STEMS or not all(_raw_file(SHIPPED_DIR, stem, lang) for stem in OFFICIAL_STEMS[lang]):
            folders.append(download_multi30k(lang))
    return list(dict.fromkeys(folders))


def _looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a local path rather than a Hub id like ``owner/name``."""
    s = str(source)
    return (s.startswith(("/", "./", "../", "~", ".\\")) or os.sep in s.replace("/", "") or s.count("/") > 1
            or s.endswith(TABLE_SUFFIXES + (".gz",)) or (len(s) > 1 and s[1] == ":"))


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def _read_lines(path: Path) -> list[str]:
    """Lines of a text file (optionally gzipped), split on ``\\n`` only, minus the line terminator."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        what = "corrupt or truncated gzip file" if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)) \
            else "cannot read"
        raise DataError(f"{what} {path}: {type(exc).__name__}: {exc}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first sentence
        raw = raw[3:]
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":  # the file's final newline ends the last line, it opens no new one
        chunks.pop()
    lines = []
    for i, chunk in enumerate(chunks, start=1):
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}, line {i}: bytes that are not UTF-8 ({exc.reason} at byte {exc.start}); "
                            f"re-encode the file as UTF-8") from exc
    return lines


def _raw_file(folders, stem: str, lang: str) -> Path | None:
    """``<stem>.<lang>`` or ``<stem>.<lang>.gz`` in the first of ``folders`` (one folder or several) that has it."""
    for folder in [folders] if isinstance(folders, Path) else folders:
        for name in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_raw_folder(folders, src: str, tgt: str,
                     report: LoadReport) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """``{split: (src_lines, tgt_lines, files)}`` from folders in the official raw layout.

    A split with only one side (Czech has no 2017 test sets) is skipped and noted in ``report.skipped``."""
    folders = [folders] if isinstance(folders, Path) else list(folders)
    out = {}
    for stem, split in RAW_SPLITS.items():
        fs, ft = _raw_file(folders, stem, src), _raw_file(folders, stem, tgt)
        if fs is None and ft is None:
            continue
        if fs is None or ft is None:
            have, missing = (fs, src if fs is None else tgt)
            report.skipped[split] = f"{have.name} has no {missing!r} counterpart {stem}.{missing}[.gz]"
            continue
        a, b = _read_lines(fs), _read_lines(ft)
        if len(a) != len(b):
            raise DataError(f"line counts differ: {fs} has {len(a)} lines, {ft} has {len(b)}; "
                            f"the two files must be aligned line by line")
        out[split] = (a, b, [str(fs), str(ft)])
    return out


def _read_tsv(path: Path, src: str, tgt: str) -> tuple[list[str], list[str]]:
    """Two tab-separated columns: named by a header line (``en<TAB>de``) or, without one, in src/tgt order.
    No quoting: quotes are text."""
    lines = _read_lines(path)
    order = (src, tgt)
    start = 0
    if lines:
        head = lines[0].split("\t")
        if len(head) == 2 and set(h.strip() for h in head) == {src, tgt}:
            order, start = tuple(h.strip() for h in head), 1
    cols: dict[str, list[str]] = {order[0]: [], order[1]: []}
    for i, line in enumerate(lines[start:], start=start + 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}, line {i}: expected 2 tab-separated columns ({order[0]}, {order[1]}), "
                            f"found {len(fields)}")
        cols[order[0]].append(fields[0])
        cols[order[1]].append(fields[1])
    return cols[src], cols[tgt]


def _read_jsonl(path: Path, src: str, tgt: str) -> tuple[list[str], list[str]]:
    a, b = [], []
    for i, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {i}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or src not in row or tgt not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}, line {i}: needs keys {src!r} and {tgt!r}, found {keys}")
        a.append(row[src])
        b.append(row[tgt])
    return a, b


def _read_parquet(path: Path, src: str, tgt: str) -> tuple[list, list]:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"cannot read parquet file {path}: {exc}") from exc
    missing = [c for c in (src, tgt) if c not in df.columns]
    if missing:
        raise DataError(f"{path} has no column {missing}; its columns are {list(df.columns)}")
    return df[src].tolist(), df[tgt].tolist()


def _read_table(path: Path, src: str, tgt: str) -> tuple[list, list]:
    if path.suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path} is not a table file ({', '.join(TABLE_SUFFIXES)}); a raw Multi30k file such as "
                        f"train.en.gz is read from its folder: pass (or set {ENV_VAR} to) {path.parent}")
    if path.suffix == ".parquet":
        return _read_parquet(path, src, tgt)
    if path.suffix == ".tsv":
        return _read_tsv(path, src, tgt)
    if path.suffix == ".json":
        try:
            rows = json.loads(_read_text(path))
        except json.JSONDecodeError:
            return _read_jsonl(path, src, tgt)  # many ".json" files are JSON lines
        if not isinstance(rows, list) or not all(isinstance(r, dict) and src in r and tgt in r for r in rows):
            raise DataError(f"{path}: expected a list of objects with keys {src!r} and {tgt!r}")
        return [r[src] for r in rows], [r[tgt] for r in rows]
    return _read_jsonl(path, src, tgt)


def _read_text(path: Path) -> str:
    return "\n".join(_read_lines(path))


def _split_name(path: Path) -> str:
    stem = path.name[: -len(path.suffix)]
    return _STEM_ALIASES.get(stem, stem)


def _read_table_source(path: Path, src: str, tgt: str) -> dict[str, tuple[list, list, list[str]]]:
    """A single table file (split named by its stem: ``train``/``val``/``test``..., any other name -> ``train``)
    or a folder of them (one split per file)."""
    if path.is_file():
        split = _split_name(path)
        split = split if split in _SPLIT_ORDER else "train"
        return {split: (*_read_table(path, src, tgt), [str(path)])}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TABLE_SUFFIXES)
    out: dict[str, tuple[list, list, list[str]]] = {}
    for f in files:
        split = _split_name(f)
        if split in out:
            raise DataError(f"two files give split {split!r} in {path}: {out[split][2][0]} and {f}; keep one")
        out[split] = (*_read_table(f, src, tgt), [str(f)])
    return out


# ---------------------------------------------------------------------------------------------
# Building the DatasetDict
# ---------------------------------------------------------------------------------------------

class MissingSplitError(DataError, KeyError):
    """A split that the data source does not have (a ``KeyError`` too, for ``dsd[split]`` callers)."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _missing_split(dsd, split, source) -> MissingSplitError:
    hint = {"train": "train.<lang>[.gz]", "validation": "val.<lang>[.gz]",
            "test": "test_2016_flickr.<lang>[.gz]"}.get(split, f"{split}.<lang>[.gz]")
    return MissingSplitError(f"{source or 'the data'} has no {split!r} split (it has: {', '.join(dsd) or 'none'}); "
                             f"a raw folder needs the files {hint} for both languages, a folder of tables a file "
                             f"named {split}.jsonl/.parquet/.tsv")


class Pairs(DatasetDict):
    """The ``DatasetDict`` that :func:`load_pairs` returns: asking for a split it lacks names the source."""
    source: str | None = None

    def __missing__(self, split):
        raise _missing_split(self, split, self.source)


def require_splits(dsd, splits=("train", "test"), source: str | None = None) -> None:
    """Raise :class:`MissingSplitError` (a ``DataError``) naming the source when ``dsd`` lacks one of ``splits``."""
    for split in splits:
        if split not in dsd:
            raise _missing_split(dsd, split, source or getattr(dsd, "source", None))


def _is_empty(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x)) or (isinstance(x, str) and not x.strip())


def _build(parts: Mapping[str, tuple[list, list, list[str]]], src: str, tgt: str,
           report: LoadReport) -> DatasetDict:
    features = Features({src: Value("string"), tgt: Value("string")})
    splits = {}
    for split in sorted(parts, key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else 99, s)):
        a, b, files = parts[split]
        keep_a, keep_b, dropped = [], [], []
        for i, (x, y) in enumerate(zip(a, b), start=1):
            if _is_empty(x) or _is_empty(y):
                dropped.append(i)
                continue
            if not isinstance(x, str) or not isinstance(y, str):
                raise DataError(f"{files[0]}, row {i}: expected text in {src!r} and {tgt!r}, "
                                f"got {type(x).__name__} and {type(y).__name__}")
            keep_a.append(x)
            keep_b.append(y)
        report.splits[split] = SplitReport(split, files, len(a), len(keep_a), dropped)
        if not keep_a:
            why = f"all {len(a)} pairs have an empty side" if len(a) else "they hold no lines"
            raise DataError(f"split {split!r} has no sentence pairs: {why} ({', '.join(files)})")
        splits[split] = Dataset.from_dict({src: keep_a, tgt: keep_b}, features=features)
    out = Pairs(splits)
    out.source = report.source
    return out


def _load_hub(source: str, src: str, tgt: str, report: LoadReport, revision: str | None = None) -> DatasetDict:
    import datasets

    try:
        dsd = datasets.load_dataset(source, revision=revision)
    except Exception as exc:  # offline, unknown id, no access: one clear message for all
        raise DataError(f"could not load {source!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
                        f"Without network access, use dataset {MULTI30K!r} (shipped with mtlib), a raw folder path, "
                        f"or set {ENV_VAR} (e.g. load_pairs('/path/to/multi30k/raw'))") from exc
    if isinstance(dsd, Dataset):
        dsd = DatasetDict({"train": dsd})
    parts = {}
    for split, ds in dsd.items():
        missing = [c for c in (src, tgt) if c not in ds.column_names]
        if missing:
            raise DataError(f"{source!r} split {split!r} has no column {missing}; columns: {ds.column_names}")
        parts[split] = (column(ds, src), column(ds, tgt), [f"{source}:{split}"])
    return _build(parts, src, tgt, report)


def load_pairs(source: str | os.PathLike | None = MULTI30K, src_lang: str = "en", tgt_lang: str = "de",
               return_report: bool = False, revision: str | None = None):
    """Load a parallel corpus as a ``DatasetDict`` with one string column per language.

    ``source`` is

    * ``"multi30k"`` (the default; ``None`` means the same): the official Multi30k task-1 release. English
      and German ship with mtlib; French and Czech are downloaded on first use (:func:`download_multi30k`);
      ``$MULTI30K_DIR`` points at a local copy instead. Splits ``train``, ``validation``, ``test`` (test
      2016 Flickr) and the later test sets ``test_2017_flickr``, ``test_2017_mscoco``, ``test_2018_flickr``;
      a split the language pair lacks is skipped and reported;
    * a folder in the same raw layout (``train.en[.gz]``, ``val.*``, ``test_2016_flickr.*``, ...), a folder of
      ``jsonl``/``json``/``parquet``/``tsv`` files (one split per file, named by the file stem), or one such
      file; relative paths are relative to the working directory;
    * a Hugging Face Hub id such as ``bentrevett/multi30k`` (needs network; ``revision`` pins a commit).

    Pairs where either side is empty (or blank) are dropped, counted and reported with a warning; with
    ``return_report=True`` the result is ``(dsd, LoadReport)``.
    """
    for name, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if not isinstance(code, str) or not code.strip():
            raise ConfigError(f"{name} must be a language code such as 'en', got {code!r}")
    if src_lang == tgt_lang:
        raise ConfigError(f"src_lang and tgt_lang are both {src_lang!r}; pick two languages")
    if source is None or str(source) == MULTI30K:
        folders = multi30k_folders(src_lang, tgt_lang)
        report = LoadReport(MULTI30K if len(folders) > 1 or folders[0] == SHIPPED_DIR else str(folders[0]),
                            src_lang, tgt_lang)
        parts = _read_raw_folder(folders, src_lang, tgt_lang, report)
        if not parts:
            raise DataError(f"{', '.join(map(str, folders))} hold no Multi30k files for {src_lang}-{tgt_lang}: "
                            f"expected train.{src_lang}.gz and train.{tgt_lang}.gz")
        dsd = _build(parts, src_lang, tgt_lang, report)
    else:
        report = LoadReport(str(source), src_lang, tgt_lang)
        path = Path(source).expanduser()
        if path.exists():
            if path.is_dir() and any(_raw_file(path, stem, src_lang) or _raw_file(path, stem, tgt_lang)
                                     for stem in RAW_SPLITS):
                parts = _read_raw_folder(path, src_lang, tgt_lang, report)
            else:
                parts = _read_table_source(path, src_lang, tgt_lang)
            if not parts:
                raise DataError(f"{path} holds no data for {src_lang}-{tgt_lang}: expected raw files such as "
                                f"train.{src_lang}[.gz] + train.{tgt_lang}[.gz], or {'/'.join(TABLE_SUFFIXES)} "
                                f"files")
            dsd = _build(parts, src_lang, tgt_lang, report)
        elif isinstance(source, os.PathLike) or _looks_like_path(str(source)):
            raise DataError(f"data path {path.resolve()} does not exist; pass an existing raw folder or file, "
                            f"or dataset {MULTI30K!r} for the shipped Multi30k")
        else:
            dsd = _load_hub(str(source), src_lang, tgt_lang, report, revision)
    if report.skipped:
        warnings.warn(f"load_pairs skipped splits without both languages: {report.skipped}", stacklevel=2)
    if report.dropped:
        warnings.warn(f"load_pairs dropped {report.dropped} pairs with an empty side: {report}", stacklevel=2)
    return (dsd, report) if return_report else dsd


# ---------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------

def _check_n(n, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ConfigError(f"{where} must be a whole number of rows, got {n!r}")
    if n <= 0:
        raise ConfigError(f"{where} must be positive, got {n}; use n=None to keep every row")
    return int(n)


def subset(dsd: DatasetDict, n: int | Mapping[str, int] | None = None, seed: int | None = None) -> DatasetDict:
    """The first ``n`` rows of each split (or of the splits named in a ``{split: n}`` dict), or a seeded
    random sample (kept in corpus order) when ``seed`` is given. ``n`` beyond a split's size keeps it whole."""
    if n is None:
        return dsd
    if isinstance(n, Mapping):
        unknown = [s for s in n if s not in dsd]
        if unknown:
            raise ConfigError(f"subset sizes name unknown splits {unknown}; splits are {list(dsd)}")
        sizes = {s: _check_n(v, f"n[{s!r}]") for s, v in n.items()}
    else:
        k = _check_n(n, "n")
        sizes = {s: k for s in dsd}
    out = {}
    for split, ds in dsd.items():
        k = sizes.get(split)
        if k is None or k >= len(ds):
            out[split] = ds
        elif seed is None:
            out[split] = ds.select(range(k))
        else:
            rng = np.random.default_rng(seed)
            out[split] = ds.select(np.sort(rng.choice(len(ds), size=k, replace=False)).tolist())
    return DatasetDict(out)


# ---------------------------------------------------------------------------------------------
# Corpus statistics
# ---------------------------------------------------------------------------------------------

def column(rows, name: str) -> list:
    """A column as a list: a ``datasets.Dataset``'s read from Arrow at once (iterating ``ds[name]`` goes row by
    row), anything else (a DataFrame, a dict of lists) through ``list(rows[name])``."""
    if hasattr(rows, "with_format"):
        return rows.with_format("arrow")[name].to_pylist()
    return list(rows[name])


def sentences(rows, langs: Sequence[str]) -> list:
    """Every sentence of the columns ``langs``, one column after the other (the texts a tokenizer is trained on)."""
    return [s for lang in langs for s in column(rows, lang)]


def _text_columns(dsd: DatasetDict, langs: Sequence[str] | None) -> list[str]:
    first = next(iter(dsd.values()))
    if langs is None:
        return [c for c, f in first.features.items() if getattr(f, "dtype", None) == "string"]
    for split, ds in dsd.items():
        missing = [l for l in langs if l not in ds.column_names]
        if missing:
            raise ConfigError(f"split {split!r} has no column {missing}; columns: {ds.column_names}")
    return list(langs)


def _stats(sentences: Sequence[str]) -> dict:
    words = [w for s in sentences for w in s.split()]
    lengths = [len(s.split()) for s in sentences]
    counts = pd.Series(words, dtype=object).value_counts() if words else pd.Series(dtype=int)
    n_tok, n_types = len(words), len(counts)
    return {
        "sentences": len(sentences),
        "tokens": n_tok,
        "types": n_types,
        "ttr": n_types / n_tok if n_tok else float("nan"),
        "hapax_share": float((counts == 1).sum()) / n_types if n_types else float("nan"),
        "mean_word_len": sum(len(w) for w in words) / n_tok if n_tok else float("nan"),
        "mean_words": n_tok / len(sentences) if sentences else float("nan"),
        "max_words": max(lengths) if lengths else 0,
    }


def corpus_stats(dsd: DatasetDict, langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Per split and language, plus ``overall`` (all splits together): sentences, tokens, types,
    type-token ratio, hapax share (types seen once / types), mean word length (characters per word),
    mean words per sentence and the longest sentence in words.

    Words are whitespace tokens (``str.split()``), case-sensitive, punctuation attached to its word.
    """
    cols = _text_columns(dsd, langs)
    rows = []
    for lang in cols:
        by_split = {split: column(ds, lang) for split, ds in dsd.items()}
        for split, texts in by_split.items():
            rows.append({"split": split, "lang": lang, **_stats(texts)})
        rows.append({"split": "overall", "lang": lang, **_stats([s for texts in by_split.values() for s in texts])})
    return pd.DataFrame(rows)


def word_lengths(dsd: DatasetDict, split: str = "train", langs: Sequence[str] | None = None) -> dict[str, list[int]]:
    """Sentence lengths in whitespace words, per language, of one split."""
    if split not in dsd:
        raise ConfigError(f"no split {split!r}; splits are {list(dsd)}")
    cols = _text_columns(DatasetDict({split: dsd[split]}), langs)
    return {lang: [len(s.split()) for s in column(dsd[split], lang)] for lang in cols}


def length_percentiles(dsd: DatasetDict, split: str = "train", langs: Sequence[str] | None = None,
                       percentiles: Sequence[float] = (0.5, 0.9, 0.99)) -> pd.DataFrame:
    """``describe()`` of the sentence lengths in words (:func:`word_lengths`), one column per language."""
    return pd.DataFrame({lang: pd.Series(v, dtype=float).describe(percentiles=list(percentiles))
                         for lang, v in word_lengths(dsd, split, langs).items()})


def length_histogram(dsd: DatasetDict, split: str = "train", langs: Sequence[str] | None = None):
    """Overlaid histograms of sentence length (whitespace words) per language for one split."""
    from matplotlib.figure import Figure

    lengths = word_lengths(dsd, split, langs)
    top = max((max(v) for v in lengths.values() if v), default=1)
    bins = np.arange(0.5, top + 1.5, 1.0)
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    for lang, v in lengths.items():
        ax.hist(v, bins=bins, alpha=0.55, label=f"{lang} (mean {np.mean(v):.1f})" if v else lang)
    ax.set_xlabel("words per sentence")
    ax.set_ylabel("sentences")
    ax.set_title(f"Sentence length, {split} split ({len(dsd[split])} pairs)")
    ax.legend()
    fig.tight_layout()
    return fig


def pair_columns(split, src_lang: str, tgt_lang: str) -> tuple[list, list]:
    """Source and target sentences of a Dataset or DataFrame split; DataError naming missing columns."""
    if hasattr(split, "column_names"):  # datasets.Dataset
        cols = split.column_names
        if src_lang not in cols or tgt_lang not in cols:
            raise DataError(f"split needs columns {src_lang!r} and {tgt_lang!r}, has {cols}")
        return column(split, src_lang), column(split, tgt_lang)
    if hasattr(split, "columns"):  # pandas.DataFrame
        if src_lang not in split.columns or tgt_lang not in split.columns:
            raise DataError(f"split needs columns {src_lang!r} and {tgt_lang!r}, has {list(split.columns)}")
        return split[src_lang].tolist(), split[tgt_lang].tolist()
    raise DataError(f"split must be a datasets.Dataset or DataFrame with {src_lang!r}/{tgt_lang!r} columns, "
                    f"got {type(split).__name__}")


def _direction(a: float, b: float, more: str, fewer: str, same: str, tolerance: float = 0.02) -> str:
    """``more`` when ``a`` exceeds ``b`` by more than ``tolerance`` (relative), ``fewer`` when it falls short, else ``same``."""
    if abs(a - b) <= tolerance * abs(b):
        return same
    return more if a > b else fewer


def _article(word: str) -> str:
    """"an" before a vowel ("an English one"), else "a" ("a Czech one"; "a Ukrainian one")."""
    return "an" if word[:1].upper() in "AEIO" or word[:1].upper() == "U" and not word.upper().startswith("UK") else "a"


def compare_languages(stats: pd.DataFrame, src_lang: str, tgt_lang: str, split: str = "overall") -> str:
    """Markdown saying how the target side of a corpus differs from its source side, from
    :func:`corpus_stats`'s rows of ``split``: words per sentence, characters per word, distinct words and the
    share seen once. Each comparison is worded from the numbers ("more words" only when there are more, "but"
    only when word count and word length go opposite ways; within 2% counts as "about the same")."""
    from .prompts import language_name

    rows = stats[stats["split"] == split].set_index("lang")
    missing = [lang for lang in (src_lang, tgt_lang) if lang not in rows.index]
    if missing:
        raise DataError(f"corpus_stats has no {split!r} rows for {missing}; it has {sorted(set(rows.index))}")
    s, t = rows.loc[src_lang], rows.loc[tgt_lang]
    src, tgt = language_name(src_lang), language_name(tgt_lang)
    words = _direction(t["mean_words"], s["mean_words"], f"more words than {src}", f"fewer words than {src}",
                       f"about as many words as {src}")
    length = _direction(t["mean_word_len"], s["mean_word_len"], "longer", "shorter", "same")
    contrast = (words.startswith("more") and length == "shorter") or (words.startswith("fewer") and length == "longer")
    length_text = "words of about the same length" if length == "same" else f"{length} ones"
    ratio = t["types"] / s["types"]
    text = (f"On average {_article(tgt)} {tgt} sentence has **{t['mean_words']:.1f}** words and {_article(src)} {src} one "
            f"**{s['mean_words']:.1f}**: {tgt} uses {words}, {'but' if contrast else 'and'} {length_text} "
            f"(**{t['mean_word_len']:.2f}** characters per word against **{s['mean_word_len']:.2f}**). "
            f"The {tgt} side has **{ratio:.2f}×** as many distinct words as the {src} side "
            f"({int(t['types']):,} against {int(s['types']):,}), and **{t['hapax_share']:.0%}** of them occur only "
            f"once, against **{s['hapax_share']:.0%}**.")
    return text


def example_pair(split, src_lang: str, tgt_lang: str, words: tuple[int, int] = (8, 14)) -> tuple[str, str]:
    """``(source, reference)``: the first pair of ``split`` whose reference has ``words[0]`` to ``words[1]``
    words and differs from its source (chapter 2's metric examples, in whatever language the data has);
    the pair with the longest reference when none does."""
    sources, targets = pair_columns(split, src_lang, tgt_lang)
    if not targets:
        raise DataError("example_pair needs a split with at least one pair")
    lo, hi = words
    for s, t in zip(sources, targets):
        if lo <= len(t.split()) <= hi and s.strip() != t.strip():
            return s, t
    i = max(range(len(targets)), key=lambda k: len(targets[k].split()))
    return sources[i], targets[i]


def variants(source: str, reference: str) -> dict[str, str]:
    """Hypotheses made from ``reference`` by rule, for showing what metrics see: the exact reference, one letter
    dropped from its longest word (like a wrong ending), that word dropped, the first half only, the two halves
    swapped (every word kept), and the untranslated ``source``. Final punctuation stays at the end (the first
    half has none, as a cut-off output)."""
    body = reference.rstrip(".!?;:,")
    end, words = reference[len(body):], body.split()
    if len(words) < 2:
        raise DataError(f"variants needs a reference of at least two words, got {reference!r}")
    letters = [sum(ch.isalpha() for ch in w) for w in words]
    i = max(range(len(words)), key=lambda k: (letters[k], -k))
    word, half = words[i], len(words) // 2
    last = max(j for j, ch in enumerate(word) if ch.isalpha()) if letters[i] else len(word) - 1
    return {
        "exact": reference,
        "one letter dropped": " ".join(words[:i] + [word[:last] + word[last + 1:]] + words[i + 1:]) + end,
        "one word dropped": " ".join(words[:i] + words[i + 1:]) + end,
        "first half only": " ".join(words[:half]),
        "halves swapped": " ".join(words[half:] + words[:half]) + end,
        "untranslated": source,
    }
