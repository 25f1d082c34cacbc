"""dataset "multi30k": the release shipped with mtlib (en/de), other languages downloaded into a checksummed cache.

Downloads are tested against a local HTTP server on 127.0.0.1 standing in for the official repository."""
import functools
import gzip
import hashlib
import http.server
import threading

import pytest

from mtlib import data
from mtlib.errors import DataError

SIZES = {"train": 29000, "validation": 1014, "test": 1000, "test_2017_flickr": 1000, "test_2017_mscoco": 461,
         "test_2018_flickr": 1071}


def test_shipped_release_has_all_splits_and_matches_its_checksums(monkeypatch):
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    dsd, report = data.load_pairs("multi30k", return_report=True)
    assert {s: len(ds) for s, ds in dsd.items()} == SIZES
    assert not report.skipped and report.source == "multi30k"
    sums = data._known_checksums(data.SHIPPED_DIR)
    assert len(sums) == 12
    for name, digest in sums.items():
        assert hashlib.sha256((data.SHIPPED_DIR / name).read_bytes()).hexdigest() == digest, name
    assert (data.SHIPPED_DIR / "README.md").read_text().count("Elliott") >= 2  # credits the authors


def test_none_and_the_default_mean_the_shipped_release(monkeypatch):
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    assert data.load_pairs(None)["test"][0] == data.load_pairs()["test"][0]


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A fake official repository on 127.0.0.1: French for every split, Czech without the 2017 test sets."""
    root = tmp_path / "mirror"
    root.mkdir()
    for stem in data.RAW_SPLITS:
        english = gzip.decompress((data.SHIPPED_DIR / f"{stem}.en.gz").read_bytes()).decode().splitlines()
        (root / f"{stem}.fr.gz").write_bytes(gzip.compress("".join(f"fr {s}\n" for s in english).encode()))
        if stem in data.OFFICIAL_STEMS["cs"]:
            (root / f"{stem}.cs.gz").write_bytes(gzip.compress("".join(f"cs {s}\n" for s in english).encode()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MULTI30K_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("MULTI30K_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    yield root
    server.shutdown()


def test_french_is_downloaded_once_into_the_cache(mirror, tmp_path):
    dsd = data.load_pairs("multi30k", "en", "fr")
    assert {s: len(ds) for s, ds in dsd.items()} == SIZES
    assert dsd["test"][0]["fr"] == "fr " + dsd["test"][0]["en"]
    cache = tmp_path / "cache"
    recorded = data._known_checksums(cache)
    assert len(recorded) == 6 and all(n.endswith(".fr.gz") for n in recorded)
    for f in mirror.iterdir():
        f.unlink()  # the mirror is gone: the cache serves
    assert len(data.load_pairs("multi30k", "fr", "en")["train"]) == 29000


def test_czech_loads_the_splits_it_has_and_reports_the_rest(mirror):
    with pytest.warns(UserWarning, match="skipped"):
        dsd, report = data.load_pairs("multi30k", "en", "cs", return_report=True)
    assert set(dsd) == {"train", "validation", "test", "test_2018_flickr"}
    assert set(report.skipped) == {"test_2017_flickr", "test_2017_mscoco"}
    assert "skipped" in str(report)


def test_a_changed_cached_file_is_refused(mirror, tmp_path):
    data.load_pairs("multi30k", "en", "fr")
    cached = tmp_path / "cache" / "val.fr.gz"
    cached.write_bytes(gzip.compress(b"tampered\n" * 1014))
    with pytest.raises(DataError, match="val.fr.gz does not match its recorded checksum"):
        data.load_pairs("multi30k", "en", "fr")


def test_a_download_that_is_not_gzip_is_not_saved(mirror, tmp_path):
    (mirror / "train.fr.gz").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataError, match="train.fr.gz is not a readable gzip file"):
        data.load_pairs("multi30k", "en", "fr")
    assert not (tmp_path / "cache" / "train.fr.gz").exists()


def test_offline_names_the_url_and_the_local_copy_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTI30K_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MULTI30K_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    with pytest.raises(DataError, match=r"could not download http://127.0.0.1:9/train.fr.gz.*set MULTI30K_DIR"):
        data.load_pairs("multi30k", "en", "fr")


def test_unknown_language_names_the_ones_multi30k_has():
    with pytest.raises(DataError, match="no language 'es'; it has en, de, fr, cs"):
        data.load_pairs("multi30k", "en", "es")


def test_multi30k_dir_replaces_the_shipped_copy_and_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    local = tmp_path / "copy"
    local.mkdir()
    for lang in ("en", "de"):
        (local / f"train.{lang}").write_text(f"only {lang}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MULTI30K_DIR", "copy")
    dsd = data.load_pairs("multi30k")
    assert dsd["train"].to_list() == [{"en": "only en", "de": "only de"}]
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("MULTI30K_DIR", "file")
    with pytest.raises(DataError, match="MULTI30K_DIR=file is not a folder"):
        data.load_pairs("multi30k")


def test_relative_dataset_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    for lang in ("en", "de"):
        (tmp_path / "mine" / f"train.{lang}").write_text(f"{lang} line\n")
    monkeypatch.chdir(tmp_path)
    assert len(data.load_pairs("mine")["train"]) == 1
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        data.load_pairs("./nowhere")
