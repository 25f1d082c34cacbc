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


def test_the_wheel_carries_the_shipped_corpus_and_loads_it_outside_the_repository(tmp_path):
    """`pip install .` must bring mtlib/corpora (package-data in pyproject.toml): built from a copy of the sources,
    the wheel holds every shipped file byte for byte, and, unpacked away from the repository, loads all four tests."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: an in-tree build would leave build/ and *.egg-info in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mtlib", src / "mtlib", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("mtlib-*.whl")
    shipped = ROOT / "mtlib" / "corpora"
    want = {p.relative_to(ROOT).as_posix(): p.read_bytes() for p in shipped.rglob("*") if p.is_file()}
    assert {"mtlib/corpora/multi30k/README.md", "mtlib/corpora/multi30k/SHA256SUMS",
            "mtlib/corpora/multi30k/train.en.gz"} <= set(want)
    with zipfile.ZipFile(wheel) as zf:
        got = {n: zf.read(n) for n in zf.namelist() if n.startswith("mtlib/corpora/")}
        zf.extractall(tmp_path / "site")  # a pure-Python wheel, unpacked: what pip install puts in site-packages
    assert got == want

    code = ("import mtlib, mtlib.data as d; print(mtlib.__file__); "
            "print(sorted(s for s in d.load_pairs('multi30k') if s.startswith('test')))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("MULTI30K_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site"))
    assert out[-1] == "['test', 'test_2017_flickr', 'test_2017_mscoco', 'test_2018_flickr']"
