"""What the book runner records and says (build.json's revisions, the line Ctrl-C leaves after the chapters)."""
from mtlib import book, profiles


def _profile(tmp_path, extra=""):
    path = tmp_path / "pinned.yaml"
    path.write_text("description: pinned revisions\nrequires_cuda: false\ndataset: bentrevett/multi30k\n"
                    "model: some-org/some-model\n" + extra)
    return profiles.load_profile(path)


def test_build_json_records_the_pinned_model_and_dataset_revisions(tmp_path):
    record = book.new_build(_profile(tmp_path, "model_revision: abc123\ndataset_revision: v2.0\n"))
    assert (record["model"], record["model_revision"]) == ("some-org/some-model", "abc123")
    assert (record["dataset"], record["dataset_revision"]) == ("bentrevett/multi30k", "v2.0")
    unpinned = book.new_build(_profile(tmp_path))
    assert unpinned["model_revision"] is None and unpinned["dataset_revision"] is None  # None: the newest
