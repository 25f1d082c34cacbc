"""mtlib.data: loading (raw folder, table files, Hub path offline), errors, subsets, corpus statistics."""
import gzip
import json
import warnings

import pandas as pd
import pytest
from datasets import DatasetDict

from mtlib import data
from mtlib.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def multi30k(raw_dir):
    return data.load_pairs(raw_dir, return_report=True)


def write(path, lines, gz=False, newline="\n"):
    raw = "".join(line + newline for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def raw_folder(tmp_path, pairs, stem="train", src="en", tgt="de", gz=False):
    ext = ".gz" if gz else ""
    write(tmp_path / f"{stem}.{src}{ext}", [a for a, _ in pairs], gz)
    write(tmp_path / f"{stem}.{tgt}{ext}", [b for _, b in pairs], gz)
    return tmp_path


PAIRS = [("A dog runs.", "Ein Hund rennt."), ("Two  cats sleep. ", "Zwei Katzen schlafen."),
         ("A girl.", "Ein Mädchen.")]


# ------------------------------------------------------------------------------------------------ real data

def test_real_raw_folder_matches_hub_layout(multi30k):
    dsd, report = multi30k
    sizes = {s: len(ds) for s, ds in dsd.items()}
    assert sizes == {"train": 29000, "validation": 1014, "test": 1000, "test_2017_flickr": 1000,
                     "test_2017_mscoco": 461, "test_2018_flickr": 1071}
    assert all(ds.column_names == ["en", "de"] for ds in dsd.values())
    assert dsd["train"][0] == {"en": "Two young, White males are outside near many bushes.",
                               "de": "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."}
    assert dsd["validation"][0]["de"] == "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"
    assert dsd["test"][-1]["en"] == "A girl at the shore of a beach with a mountain in the distance."
    assert report.dropped == 0 and report.splits["train"].read == 29000


def test_real_lines_are_kept_verbatim(multi30k, raw_dir):
    dsd, _ = multi30k
    lines = gzip.decompress((raw_dir / "train.de.gz").read_bytes()).decode("utf-8").split("\n")[:-1]
    assert dsd["train"]["de"] == lines  # trailing spaces and the one inner tab included
    assert dsd["train"][5908]["de"].endswith("Trampolin. ")


def test_hub_path_offline_names_the_fix():
    # conftest sets HF_HUB_OFFLINE=1: the Hub id is tried, fails, and the error names the offline fix
    with pytest.raises(DataError, match="raw folder path, or set MULTI30K_DIR"):
        data.load_pairs("bentrevett/multi30k")


def test_none_source_uses_default_raw_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTI30K_DIR", str(raw_folder(tmp_path, PAIRS)))
    assert data.load_pairs(None)["train"].to_list() == [{"en": a, "de": b} for a, b in PAIRS]


def test_default_raw_dir_env_and_fallback(monkeypatch, tmp_path, raw_dir):
    monkeypatch.setenv("MULTI30K_DIR", str(tmp_path))
    assert data.default_raw_dir() == tmp_path
    monkeypatch.delenv("MULTI30K_DIR")
    assert data.default_raw_dir() == data.SHIPPED_DIR
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MULTI30K_DIR", "rel/raw")
    assert data.default_raw_dir() == tmp_path / "rel" / "raw"  # relative to where the user runs the command


# ------------------------------------------------------------------------------------------------ raw layout

def test_gz_and_plain_give_the_same_rows(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    plain = data.load_pairs(raw_folder(tmp_path / "p", PAIRS))
    gz = data.load_pairs(raw_folder(tmp_path / "g", PAIRS, gz=True))
    assert list(plain) == list(gz) == ["train"]
    assert plain["train"].to_list() == gz["train"].to_list() == [{"en": a, "de": b} for a, b in PAIRS]


def test_line_endings_strip_only_the_terminator(tmp_path):
    (tmp_path / "train.en").write_bytes("a  b \r\nc\x0cd\u2028e\r\nlast".encode("utf-8"))
    (tmp_path / "train.de").write_bytes(b"x\r\ny\r\nz\n")
    ds = data.load_pairs(tmp_path)["train"]
    assert ds["en"] == ["a  b ", "c\x0cd\u2028e", "last"]
    assert ds["de"] == ["x", "y", "z"]


def test_extra_test_sets_and_split_names(tmp_path):
    for stem in ("train", "val", "test_2016_flickr", "test_2018_flickr"):
        raw_folder(tmp_path, PAIRS[:2], stem=stem, gz=True)
    dsd = data.load_pairs(tmp_path)
    assert list(dsd) == ["train", "validation", "test", "test_2018_flickr"]


def test_languages_are_parameters(tmp_path):
    raw_folder(tmp_path, [("A dog.", "Un chien.")], src="en", tgt="fr")
    dsd = data.load_pairs(tmp_path, src_lang="fr", tgt_lang="en")
    assert dsd["train"].column_names == ["fr", "en"]
    assert dsd["train"][0] == {"fr": "Un chien.", "en": "A dog."}
    with pytest.raises(DataError, match="train.de"):
        data.load_pairs(tmp_path, src_lang="en", tgt_lang="de")


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        data.load_pairs(missing)
    with pytest.raises(DataError, match="nowhere.jsonl"):
        data.load_pairs("./nowhere.jsonl")


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no data"):
        data.load_pairs(tmp_path)


def test_line_count_mismatch_names_both_files(tmp_path):
    write(tmp_path / "train.en", ["a", "b", "c"])
    write(tmp_path / "train.de", ["x", "y"])
    with pytest.raises(DataError) as err:
        data.load_pairs(tmp_path)
    msg = str(err.value)
    assert "train.en has 3 lines" in msg and "train.de has 2" in msg


def test_undecodable_bytes_name_file_and_line(tmp_path):
    write(tmp_path / "train.en", ["a", "b", "c"])
    (tmp_path / "train.de").write_bytes(b"x\ny\nz\xff\xfe\n")
    with pytest.raises(DataError, match=r"train\.de, line 3"):
        data.load_pairs(tmp_path)


def test_empty_pairs_are_dropped_counted_and_reported(tmp_path):
    raw_folder(tmp_path, [("a", "x"), ("", "y"), ("c", "   "), ("d", "w")])
    with pytest.warns(UserWarning, match="dropped 2 pairs"):
        dsd, report = data.load_pairs(tmp_path, return_report=True)
    assert dsd["train"]["en"] == ["a", "d"]
    split = report.splits["train"]
    assert (split.read, split.kept, split.dropped, split.dropped_lines) == (4, 2, 2, [2, 3])
    assert report.to_frame().loc[0, "dropped"] == 2


def test_clean_load_does_not_warn(tmp_path):
    raw_folder(tmp_path, PAIRS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_pairs(tmp_path)


def test_bad_language_arguments():
    with pytest.raises(ConfigError):
        data.load_pairs("x", src_lang="en", tgt_lang="en")
    with pytest.raises(ConfigError):
        data.load_pairs("x", src_lang="", tgt_lang="de")


# ------------------------------------------------------------------------------------------------ table files

def expected():
    return [{"en": a, "de": b} for a, b in PAIRS]


def test_jsonl_parquet_tsv_files_and_folders(tmp_path):
    df = pd.DataFrame(PAIRS, columns=["en", "de"])
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in expected()),
                                          encoding="utf-8")
    df.to_parquet(tmp_path / "validation.parquet")
    write(tmp_path / "test.tsv", ["de\ten"] + [f"{b}\t{a}" for a, b in PAIRS])  # header in the other order
    dsd = data.load_pairs(tmp_path)
    assert list(dsd) == ["train", "validation", "test"]
    for split in dsd:
        assert dsd[split].column_names == ["en", "de"]
        assert dsd[split].to_list() == expected(), split
    single = data.load_pairs(tmp_path / "validation.parquet")
    assert list(single) == ["validation"] and single["validation"].to_list() == expected()


def test_tsv_without_header_is_src_tgt_and_quotes_are_text(tmp_path):
    path = write(tmp_path / "pairs.tsv", ['"Hi," he said.\t"Hallo", sagte er.'])
    dsd = data.load_pairs(path)
    assert list(dsd) == ["train"]
    assert dsd["train"][0] == {"en": '"Hi," he said.', "de": '"Hallo", sagte er.'}


def test_tsv_wrong_column_count_names_line(tmp_path):
    path = write(tmp_path / "train.tsv", ["en\tde", "a\tb", "c\td\te"])
    with pytest.raises(DataError, match=r"train\.tsv, line 3: expected 2"):
        data.load_pairs(path)


def test_jsonl_missing_key_and_bad_json(tmp_path):
    path = write(tmp_path / "train.jsonl", ['{"en": "a", "de": "b"}', '{"en": "c"}'])
    with pytest.raises(DataError, match=r"line 2: needs keys 'en' and 'de'"):
        data.load_pairs(path)
    write(path, ['{"en": "a", "de": "b"', ""])
    with pytest.raises(DataError, match="line 1: not valid JSON"):
        data.load_pairs(path)


def test_parquet_missing_column(tmp_path):
    pd.DataFrame({"en": ["a"], "fr": ["b"]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"no column \['de'\]"):
        data.load_pairs(tmp_path / "train.parquet")


# ------------------------------------------------------------------------------------------------ subsets

@pytest.fixture()
def small():
    return DatasetDict({"train": data.Dataset.from_dict({"en": [str(i) for i in range(20)],
                                                         "de": [f"d{i}" for i in range(20)]}),
                        "test": data.Dataset.from_dict({"en": ["a", "b", "c"], "de": ["x", "y", "z"]})})


def test_subset_first_n_and_whole_split(small):
    out = data.subset(small, 5)
    assert out["train"]["en"] == ["0", "1", "2", "3", "4"]
    assert out["test"]["en"] == ["a", "b", "c"]  # n beyond the split keeps it whole
    assert data.subset(small, None) is small


def test_subset_seeded_sample(small):
    a = data.subset(small, 5, seed=1)["train"]["en"]
    assert a == data.subset(small, 5, seed=1)["train"]["en"]
    assert a != data.subset(small, 5, seed=2)["train"]["en"] or a != data.subset(small, 5, seed=3)["train"]["en"]
    assert a != ["0", "1", "2", "3", "4"] and len(set(a)) == 5
    assert a == sorted(a, key=int)  # corpus order kept


def test_subset_per_split(small):
    out = data.subset(small, {"test": 1})
    assert len(out["train"]) == 20 and out["test"]["en"] == ["a"]


@pytest.mark.parametrize("n", [0, -3, 2.5, True, {"train": 0}, {"dev": 2}])
def test_subset_rejects_bad_n(small, n):
    with pytest.raises(ConfigError):
        data.subset(small, n)


# ------------------------------------------------------------------------------------------------ statistics

def test_corpus_stats_hand_computed():
    dsd = DatasetDict({
        "train": data.Dataset.from_dict({"en": ["a bb a", "cccc"], "de": ["x y", "z"]}),
        "test": data.Dataset.from_dict({"en": ["a dd"], "de": ["x"]}),
    })
    df = data.corpus_stats(dsd).set_index(["split", "lang"])
    tr = df.loc[("train", "en")]
    # tokens a,bb,a,cccc: 3 types, types seen once: bb,cccc; 8 chars / 4 words; 4 words / 2 sentences
    assert (tr.sentences, tr.tokens, tr.types, tr.max_words) == (2, 4, 3, 3)
    assert tr.ttr == pytest.approx(0.75) and tr.hapax_share == pytest.approx(2 / 3)
    assert tr.mean_word_len == pytest.approx(2.0) and tr.mean_words == pytest.approx(2.0)
    de = df.loc[("train", "de")]
    assert (de.tokens, de.types, de.hapax_share, de.mean_words, de.max_words) == (3, 3, 1.0, 1.5, 2)
    ov = df.loc[("overall", "en")]
    # a,bb,a,cccc,a,dd: 4 types, hapax bb,cccc,dd
    assert (ov.sentences, ov.tokens, ov.types) == (3, 6, 4)
    assert ov.hapax_share == pytest.approx(3 / 4) and ov.mean_word_len == pytest.approx(11 / 6)
    assert len(df) == 6 and set(df.index.get_level_values("lang")) == {"en", "de"}
    assert list(data.corpus_stats(dsd, langs=["de"])["lang"].unique()) == ["de"]
    with pytest.raises(ConfigError, match="fr"):
        data.corpus_stats(dsd, langs=["fr"])


def test_length_histogram():
    from matplotlib.figure import Figure

    dsd = DatasetDict({"train": data.Dataset.from_dict({"en": ["a b c", "d"], "de": ["x y", "z w v u"]})})
    fig = data.length_histogram(dsd, langs=["en", "de"])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("en") and labels[1].startswith("de")
    heights = [sorted(p.get_height() for p in c) for c in ax.containers]
    assert [sum(h) for h in heights] == [2, 2]  # one bar per sentence, per language
    with pytest.raises(ConfigError, match="validation"):
        data.length_histogram(dsd, split="validation")


def test_length_percentiles_per_language():
    dsd = DatasetDict({"train": data.Dataset.from_dict({"en": ["a b c", "d", "e f"], "de": ["x y", "z w v u", "q"]})})
    table = data.length_percentiles(dsd, langs=["en", "de"])
    assert list(table.columns) == ["en", "de"]
    assert table.loc["mean", "en"] == pytest.approx(2.0) and table.loc["max", "de"] == 4
    assert table.loc["50%", "de"] == 2 and "99%" in table.index
    with pytest.raises(ConfigError, match="validation"):
        data.length_percentiles(dsd, split="validation")


def test_column_reads_a_dataset_at_once_and_keeps_its_selection():
    ds = data.Dataset.from_dict({"en": [f"s{i}" for i in range(10)]})
    picked = ds.shuffle(seed=1).select(range(4))  # an indices mapping over the Arrow table
    assert data.column(picked, "en") == [row["en"] for row in picked]
    assert data.column(pd.DataFrame({"en": ["a", "b"]}), "en") == ["a", "b"]
    assert data.column({"en": ("a",)}, "en") == ["a"]
    both = data.Dataset.from_dict({"en": ["a", "b"], "de": ["x", "y"]})
    assert data.sentences(both, ["en", "de"]) == ["a", "b", "x", "y"]


# ------------------------------------------------------------------------------------------------ damaged files

def test_corrupt_or_truncated_gzip_names_the_file(tmp_path):
    raw_folder(tmp_path, PAIRS * 50, gz=True)
    packed = (tmp_path / "train.en.gz").read_bytes()
    (tmp_path / "train.en.gz").write_bytes(packed[:20] + bytes(b ^ 0xFF for b in packed[20:40]) + packed[40:])
    with pytest.raises(DataError, match=r"corrupt or truncated gzip file .*train\.en\.gz"):
        data.load_pairs(tmp_path)
    (tmp_path / "train.en.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"corrupt or truncated gzip file .*train\.en\.gz"):
        data.load_pairs(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_utf8_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path, gz):
    raw_folder(tmp_path, PAIRS, gz=gz)
    name = "train.en.gz" if gz else "train.en"
    raw = gzip.decompress((tmp_path / name).read_bytes()) if gz else (tmp_path / name).read_bytes()
    bom = b"\xef\xbb\xbf" + raw
    (tmp_path / name).write_bytes(gzip.compress(bom) if gz else bom)
    assert data.load_pairs(tmp_path)["train"]["en"][0] == PAIRS[0][0]


def test_all_blank_split_is_an_error_naming_its_files(tmp_path):
    raw_folder(tmp_path, [("", "x"), ("  ", "y")])
    with pytest.raises(DataError, match=r"split 'train' has no sentence pairs: all 2 pairs have an empty side "
                                        r"\(.*train\.en, .*train\.de\)"):
        data.load_pairs(tmp_path)
    raw_folder(tmp_path, [])
    with pytest.raises(DataError, match=r"split 'train' has no sentence pairs: they hold no lines"):
        data.load_pairs(tmp_path)


def test_folder_without_test_files_names_the_missing_split_and_files(tmp_path):
    from mtlib import chapter
    raw_folder(tmp_path, PAIRS)  # train only
    dsd = data.load_pairs(tmp_path)
    assert list(dsd) == ["train"]  # a train-only corpus loads
    with pytest.raises(DataError, match=rf"{tmp_path} has no 'test' split \(it has: train\).*test_2016_flickr"):
        dsd["test"]
    with pytest.raises(KeyError):  # still a KeyError for code that expects one
        dsd["validation"]
    with pytest.raises(DataError, match="has no 'test' split"):  # what chapters 3 and 4 call
        chapter.chapter_pairs({"dataset": str(tmp_path), "src_lang": "en", "tgt_lang": "de", "seed": 0})


def test_multi30k_dir_pointing_to_a_file_says_to_pass_the_folder(tmp_path, monkeypatch):
    raw_folder(tmp_path, PAIRS, gz=True)
    monkeypatch.setenv("MULTI30K_DIR", str(tmp_path / "train.en.gz"))
    with pytest.raises(DataError, match=r"MULTI30K_DIR=.*train\.en\.gz is not a folder: point it at the folder"):
        data.load_pairs(None)
