"""CONTRIBUTING.md's API table agrees with the code where it states defaults."""
import inspect
import re
from pathlib import Path

from mtlib import data

CONTRIBUTING = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()


def test_contributing_gives_load_pairs_its_real_default_and_no_workspace_folder():
    (source,) = re.findall(r'`load_pairs\(source="([^"]+)"', CONTRIBUTING)
    assert source == inspect.signature(data.load_pairs).parameters["source"].default == "multi30k"
    assert "revision=None" in CONTRIBUTING.split("`load_pairs(", 1)[1].split(")", 1)[0]
    assert "shared/data" not in CONTRIBUTING  # the project stands alone: no folder beside the clone
