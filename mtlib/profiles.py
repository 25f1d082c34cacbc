"""YAML parameter profiles: overrides of the chapters' parameters, checked against their one declaration.

The parameters themselves (type, default, bounds, explanation, chapters) are declared in
:mod:`mtlib.parameters`; this module re-exports its schema and checks (``SCHEMA``, ``chapter_names``,
``check_value``, ``check_parameters``) for its callers.

A profile (``profiles/<name>.yaml``) overrides the chapters' parameters. Its top level holds

* ``description`` (text) and ``requires_cuda`` (bool): about the profile itself;
* ``extends: <profile>``: start from that profile's values (a shipped name, or a path relative to this file);
  this file's keys replace the parent's, and a chapter section replaces the parent's values key by key;
* ``<parameter>: value``: applies to every chapter whose parameters cell has that name;
* ``<chapter>: {<parameter>: value}`` (e.g. ``03_sft: {lr: 1e-4}``): applies to that chapter only.

Everything is checked against :data:`SCHEMA` before anything runs: an unknown key, a wrong type or an
impossible value raises :class:`~mtlib.errors.ConfigError` naming the key and the profile file.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from .errors import ConfigError
from .parameters import (CHAPTERS, LOSS_TYPES, MIN_SEQ_LENGTH, SCHEDULERS, SCHEMA, Param,  # noqa: F401 (re-exported)
                         chapter_names, check_combinations, check_parameters, check_value, defaults)

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"

# YAML 1.1 (PyYAML) reads ``1e-4`` as a string: its floats need a dot (``1.0e-4``). YAML 1.2, and everyone
# writing a learning rate, accept ``1e-4``; so does this loader. It also refuses a key given twice in one
# mapping (PyYAML silently keeps the last one).
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                          |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                          |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X)


class ProfileLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads YAML 1.2 floats (``1e-4``) and refuses duplicate keys."""


ProfileLoader.yaml_implicit_resolvers = {  # a deep copy: add_implicit_resolver would append to SafeLoader's lists
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ProfileLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1}, again on line "
                f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


ProfileLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text_or_file):
    """Parse profile YAML (a string or an open file) with :class:`ProfileLoader`: ``1e-4`` is a float, a repeated
    key is an error."""
    return yaml.load(text_or_file, Loader=ProfileLoader)  # noqa: S506 - a SafeLoader subclass


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"profile file {p} does not exist")
        return p.resolve()
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(q.stem for q in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {str(name_or_path)!r}: no {candidate}; shipped profiles: {', '.join(known)}")
    return candidate


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imported lazily: torch is slow to import)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load_profile(name_or_path: str | Path, check_device: bool = True) -> dict:
    """Read and validate a profile (shipped name or YAML path).

    Returns ``{"name", "path", "description", "requires_cuda", "parameters", "chapters"}`` where
    ``parameters`` applies to every chapter that has the name and ``chapters`` maps a chapter to its
    own overrides. With ``check_device``, a profile with ``requires_cuda: true`` raises ConfigError on a
    machine without CUDA.
    """
    path = _resolve(name_or_path)
    where = f"profile {path}"
    raw, parents = _read_extended(path, [])
    description = raw.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be text")
    requires_cuda = raw.pop("requires_cuda", False)
    if not isinstance(requires_cuda, bool):
        raise ConfigError(f"{where}: 'requires_cuda' must be true or false, got {requires_cuda!r}")
    shared, chapters = {}, {}
    for key, value in raw.items():
        if key in CHAPTERS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping of parameter: value")
            chapters[key] = check_parameters(value, key, f"{where}, section {key}")
        else:
            shared[key] = check_value(key, value, where)
    check_combinations(shared, where)
    for chapter in CHAPTERS:  # the merged view each chapter will see must hold together too
        check_combinations({**{k: v for k, v in shared.items() if chapter in SCHEMA[k].chapters},
                             **chapters.get(chapter, {})}, f"{where}, chapter {chapter}")
    profile = {"name": path.stem, "path": str(path), "description": description,
               "requires_cuda": requires_cuda, "parameters": shared, "chapters": chapters,
               "extends": [str(p) for p in parents]}
    if check_device:
        check_cuda(profile)
    return profile


def _read_mapping(path: Path) -> dict:
    where = f"profile {path}"
    try:
        with open(path, encoding="utf-8") as f:  # a file, so that YAML's messages name it
            raw = read_yaml(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of parameter: value, got {type(raw).__name__}")
    return raw


def _read_extended(path: Path, seen: list) -> tuple[dict, list]:
    """The profile's mapping with what it ``extends`` merged under it, and the parent files (nearest first)."""
    if path in seen:
        raise ConfigError(f"profile {seen[0]}: 'extends' goes round in a circle: "
                          + " -> ".join(str(p) for p in [*seen, path]))
    raw = _read_mapping(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, []
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"profile {path}: 'extends' must name a profile, got {parent!r}")
    relative = path.parent / parent
    parent_path = _resolve(relative if relative.suffix in (".yaml", ".yml") else parent)
    base, parents = _read_extended(parent_path, [*seen, path])
    merged = dict(base)
    for key, value in raw.items():
        if key in CHAPTERS and isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged, [parent_path, *parents]


def check_cuda(profile: dict) -> None:
    """Raise ConfigError when the profile says ``requires_cuda: true`` and no CUDA device is visible, or asks
    for more GPUs (``num_gpus``) than the machine has."""
    if profile.get("requires_cuda") and not cuda_available():
        raise ConfigError(f"profile {profile['path']}: 'requires_cuda' is true but this machine has no CUDA "
                          f"device; use the smoke profile on CPU (--profile smoke)")
    from .parallel import resolve_num_gpus
    for section in [profile["parameters"], *profile["chapters"].values()]:
        if "num_gpus" in section:
            resolve_num_gpus(section["num_gpus"], where=f"profile {profile['path']}")


def chapter_parameters(profile: dict, chapter: str) -> dict:
    """The parameters papermill passes to ``chapter``: shared values it uses, its own section, the profile name."""
    names = set(chapter_names(chapter))
    params = {k: v for k, v in profile["parameters"].items() if k in names}
    params.update(profile["chapters"].get(chapter, {}))
    params["profile"] = profile["name"]
    return params


def effective_parameters(profile: dict, chapter: str) -> dict:
    """What ``chapter`` runs with under ``profile``: its declared defaults, then the profile's values."""
    return {**defaults(chapter), **chapter_parameters(profile, chapter)}
