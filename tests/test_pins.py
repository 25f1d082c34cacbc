"""Version pins live in pyproject.toml; requirements.txt and the GPU wheel bundle must agree with it."""
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _reqs(lines):
    return {Requirement(l).name.lower().replace("_", "-"): str(Requirement(l).specifier) for l in lines}


def test_requirements_txt_repeats_core_gpu_and_book_pins():
    proj = _pyproject()
    expected = _reqs(proj["dependencies"] + proj["optional-dependencies"]["gpu"]
                     + proj["optional-dependencies"]["book"])
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert _reqs(lines) == expected


def test_versions_satisfy_unsloth_bounds():
    """Unsloth 2026.10.9 accepts trl<=1.15.0, transformers<=5.17.0, datasets<5, torch<2.15."""
    pins = _reqs(_pyproject()["dependencies"] + _pyproject()["optional-dependencies"]["cpu"])
    bounds = {"trl": "<=1.15.0", "transformers": "<=5.17.0", "datasets": "<5", "torch": "<2.15"}
    for name, bound in bounds.items():
        version = re.fullmatch(r"==(.+)", pins[name]).group(1)
        assert Requirement(f"{name}{bound}").specifier.contains(version), (name, version)


def test_installed_versions_match_pins():
    """The CPU environment the tests run in resolves to the same API the GPU path runs."""
    from importlib.metadata import version
    for name, spec in _reqs(_pyproject()["dependencies"]).items():
        if spec.startswith("=="):
            assert version(name) == spec[2:], name


def test_gpu_bundle_reads_pins_from_pyproject():
    """The GPU wheel bundle takes its versions from pyproject.toml, not from a second list."""
    script = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    assert "pyproject.toml" in script and "==" not in script.split("specs=(")[1].split(")")[0]
