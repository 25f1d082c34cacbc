"""mtlib.parameters: each parameter is declared once; the cells, the schema and the trainers' defaults follow it."""
import ast
import dataclasses
import shutil

import pytest

from mtlib import chapter, parameters, project, train
from mtlib.errors import ConfigError

SOURCES = sorted(project.NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
TRAINER_CLASSES = {"sft": train.SFTParams, "grpo": train.GRPOParams}


def assigned(cell: str) -> dict:
    return {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(cell).body}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_each_chapter_parameters_cell_is_the_generated_one(source):
    cell = project.parameters_cell_of(source.read_text(encoding="utf-8"))
    assert cell == parameters.parameters_cell(source.stem), \
        f"{source.name}: parameters cell differs from mtlib/parameters.py; run `make sync`"


@pytest.mark.parametrize("name", parameters.CHAPTERS)
def test_generated_cell_assigns_the_declared_defaults_readably(name):
    cell = parameters.parameters_cell(name)
    values = assigned(cell)
    assert list(values) == parameters.chapter_names(name)
    defaults = parameters.defaults(name)
    assert values == defaults
    assert [type(v) for v in values.values()] == [type(v) for v in defaults.values()]  # 2e-4 stays a float
    lines = cell.splitlines()
    assert lines[0] == parameters.CELL_MARK
    assert all(len(line) <= parameters.CELL_WIDTH for line in lines)
    columns, previous = set(), None
    for line in lines[1:]:
        code = line.split("  #")[0].rstrip()
        column = line.index("#", len(code))
        if not code:  # a comment continued: under the line's comment
            assert column == previous, line
        elif len(code) <= parameters.ALIGN_LIMIT:  # short assignments: one column
            columns.add(column)
        previous = column
    assert len(columns) == 1, (name, columns)


def test_literals_read_as_a_person_writes_them():
    assert [parameters.literal(v) for v in (2e-4, 5e-6, 1e-5, 0.01, 0.0, 1.0, 4, None, True)] == \
        ["2e-4", "5e-6", "1e-5", "0.01", "0.0", "1.0", "4", "None", "True"]
    assert parameters.literal(["bleu", "length"]) == '["bleu", "length"]'
    assert parameters.literal([1.0, 0.5]) == "[1.0, 0.5]"
    for value in (2.5e-4, 3.14159e-7, 'say "hi"', "a\\b"):
        assert ast.literal_eval(parameters.literal(value)) == value


def test_an_edited_cell_or_a_changed_default_is_out_of_step_and_sync_rewrites_the_cell(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(project.NOTEBOOK_DIR, notebooks, ignore=shutil.ignore_patterns("*.ipynb"))
    config = shutil.copy(project.CONFIG, tmp_path / "_config.yml")
    sft = notebooks / "03_sft.py"
    original = sft.read_text()
    sft.write_text(original.replace("\nlr = 2e-4 ", "\nlr = 1e-4 ", 1))
    assert project.out_of_step(notebooks, config) == [sft]
    assert project.sync(notebooks, config) == [sft] and sft.read_text() == original
    lr = parameters.SCHEMA["lr"]  # a new default, declared in the one place
    monkeypatch.setitem(parameters.SCHEMA, "lr", dataclasses.replace(lr, default={**lr.default, "03_sft": 1e-4}))
    assert project.out_of_step(notebooks, config) == [sft]
    project.sync(notebooks, config)
    assert "\nlr = 1e-4 " in sft.read_text() and sft.read_text().count("\n") == original.count("\n")


def test_an_undeclared_line_in_a_cell_is_out_of_step(tmp_path):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(project.NOTEBOOK_DIR, notebooks, ignore=shutil.ignore_patterns("*.ipynb"))
    config = shutil.copy(project.CONFIG, tmp_path / "_config.yml")
    data = notebooks / "01_data.py"
    data.write_text(data.read_text().replace(parameters.CELL_MARK + "\n", parameters.CELL_MARK + "\nextra = 1\n"))
    assert project.out_of_step(notebooks, config) == [data]


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_trainer_defaults_are_the_chapters(stage):
    cls = TRAINER_CLASSES[stage]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(parameters.trainer_fields(stage).values()) <= fields
    made = cls()
    for field, value in parameters.trainer_defaults(stage).items():
        assert getattr(made, field) == value, field
    # the chapter's defaults, mapped to the trainer, are exactly the trainer's defaults
    params = parameters.defaults(parameters.TRAINERS[stage])
    mapped = chapter.sft_params(params) if stage == "sft" else chapter.grpo_params(params)
    assert mapped == made


def test_short_names_map_to_trainer_fields():
    params = {**parameters.defaults("03_sft"), "num_steps": 7, "batch_size": 3, "grad_accum": 2,
              "lr_scheduler": "cosine", "group_by_length": True}
    sft = chapter.sft_params(params)
    assert (sft.max_steps, sft.per_device_train_batch_size, sft.gradient_accumulation_steps) == (7, 3, 2)
    assert (sft.lr_scheduler_type, sft.train_sampling_strategy) == ("cosine", "group_by_length")
    grpo = chapter.grpo_params({**parameters.defaults("04_grpo"), "fast_decode": True, "rewards": ["chrf"],
                                "reward_weights": None})
    assert grpo.fast_generation is True and (grpo.rewards, grpo.reward_weights) == (["chrf"], [1.0])


def _outside(p):
    """A value just outside one of ``p``'s bounds (None when it has none)."""
    if p.kind not in ("int", "float"):
        return None
    low = p.trainer_min if p.trainer_min is not None else p.min
    if low is not None:
        return low - 1
    if p.above is not None:
        return p.above
    if p.max is not None:
        return p.max + 1
    return None


CHECKED = [(stage, name) for stage in ("sft", "grpo") for name, p in parameters.SCHEMA.items()
           if stage in p.train and p.to_field is None and _outside(p) is not None]


@pytest.mark.parametrize("stage, name", CHECKED, ids=[f"{s}-{n}" for s, n in CHECKED])
def test_one_rule_for_a_parameter_and_its_trainer_field(stage, name):
    """The bound a profile or a cell breaks is the bound the trainer dataclass enforces, naming its field."""
    p, bad = parameters.SCHEMA[name], _outside(parameters.SCHEMA[name])
    field = parameters.trainer_fields(stage)[name]
    with pytest.raises(ConfigError, match=rf"{type(TRAINER_CLASSES[stage]()).__name__}\.{field}: parameter '{name}'"):
        train.params_from_dict(TRAINER_CLASSES[stage], {field: bad})
    if p.trainer_min is None:
        with pytest.raises(ConfigError, match=name):
            parameters.check_value(name, bad)


def test_the_trainer_keeps_its_looser_max_seq_length():
    """The chapters need room for the chat prompt; the trainer checks the data itself (tests/test_train.py)."""
    assert train.SFTParams(max_seq_length=16).validate().max_seq_length == 16
    with pytest.raises(ConfigError, match="max_seq_length"):
        parameters.check_value("max_seq_length", 16)


def test_every_parameter_is_declared_completely():
    for name, p in parameters.SCHEMA.items():
        assert p.chapters and set(p.chapters) <= set(parameters.CHAPTERS), name
        for ch in p.chapters:
            parameters.check_value(name, p.default_for(ch), f"default of {name} in {ch}")
            assert p.comment(ch), name
        if isinstance(p.default, dict):
            assert set(p.default) == set(p.chapters), name
        if isinstance(p.cell_help, dict):
            assert set(p.cell_help) == set(p.chapters), name
        assert set(p.train) <= set(parameters.TRAINERS), name
