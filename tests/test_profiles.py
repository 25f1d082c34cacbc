"""Profiles: every shipped profile validates; bad keys, types and values fail early, naming key and file."""
from pathlib import Path

import pytest

from mtlib import profiles
from mtlib.errors import ConfigError

SHIPPED = sorted(p.stem for p in profiles.PROFILE_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_three_profiles_ship():
    assert {"smoke", "seed", "fast"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_validates(name):
    prof = profiles.load_profile(name, check_device=False)
    assert prof["name"] == name and prof["description"]
    for chapter in profiles.CHAPTERS:
        params = profiles.chapter_parameters(prof, chapter)
        assert set(params) <= set(profiles.chapter_names(chapter))
        assert params["profile"] == name


def test_smoke_runs_on_cpu_with_the_tiny_model():
    prof = profiles.load_profile("smoke")  # check_device on: must not need CUDA
    assert prof["requires_cuda"] is False
    sft = profiles.chapter_parameters(prof, "03_sft")
    assert sft["model"] == "tiny" and sft["load_in_4bit"] is False


def test_gpu_check_is_the_fast_profile_on_the_shape_twin():
    """Issue 14: anyone with a GPU checks the whole GPU path offline, with the fast settings."""
    fast, check = (profiles.load_profile(n, check_device=False) for n in ("fast", "gpu-check"))
    assert check["requires_cuda"] is True
    assert check["parameters"].pop("model") == "twin:meta-llama/Llama-3.2-3B-Instruct"
    assert fast["parameters"].pop("model") == "meta-llama/Llama-3.2-3B-Instruct"
    assert check["parameters"] == fast["parameters"] and check["chapters"] == fast["chapters"]


# The original study's recipe (Unsloth's Llama 3.2 SFT recipe, then GRPO/DAPO), written out here on purpose:
# the seed profile leaves these to the chapters' defaults, and a changed default must not change it silently.
ORIGINAL_STUDY = {
    "03_sft": dict(model="meta-llama/Llama-3.2-3B-Instruct", dataset="multi30k", load_in_4bit=True,
                   max_seq_length=512, lora_r=16, lora_alpha=16, lora_dropout=0.0, seed=3407, train_size=None,
                   test_size=None, num_steps=200, batch_size=4, grad_accum=4, lr=2e-4, warmup_steps=5,
                   weight_decay=0.01, lr_scheduler="linear", eval_batch_size=64, max_new_tokens=128),
    "04_grpo": dict(model="meta-llama/Llama-3.2-3B-Instruct", dataset="multi30k", load_in_4bit=True,
                    max_seq_length=512, lora_r=16, lora_alpha=16, lora_dropout=0.0, seed=3407, train_size=None,
                    test_size=None, num_steps=500, batch_size=2, grad_accum=2, num_generations=4, lr=5e-6,
                    warmup_steps=0, weight_decay=0.0, lr_scheduler="linear", loss_type="bnpo", beta=0.0,
                    epsilon=0.2, epsilon_high=0.28, max_completion_length=76, temperature=0.9,
                    rewards=["bleu", "length"], reward_weights=[1.0, 1.0], eval_batch_size=64, max_new_tokens=128),
    "05_results": dict(n_bootstrap=1000),
}


@pytest.mark.parametrize("section", sorted(ORIGINAL_STUDY))
def test_seed_profile_runs_the_original_study(section):
    prof = profiles.load_profile("seed", check_device=False)
    effective = profiles.effective_parameters(prof, section)
    assert {k: effective[k] for k in ORIGINAL_STUDY[section]} == ORIGINAL_STUDY[section]
    assert effective["profile"] == "seed"


def test_seed_profile_does_not_repeat_the_defaults():
    """Its values are the chapters' defaults; it names only the model and the data (the build records them)."""
    prof = profiles.load_profile("seed", check_device=False)
    assert prof["chapters"] == {} and set(prof["parameters"]) == {"model", "dataset"}
    for name, value in prof["parameters"].items():
        assert all(profiles.SCHEMA[name].default_for(c) == value for c in profiles.SCHEMA[name].chapters)


@pytest.mark.parametrize("name", ["seed", "fast", "gpu-check"])
def test_gpu_profiles_require_cuda(name):
    assert profiles.load_profile(name, check_device=False)["requires_cuda"] is True


def test_chapter_section_overrides_shared_value(tmp_path):
    path = write(tmp_path, "lr: 0.001\n04_grpo:\n  lr: 0.00001\n", "two.yaml")
    prof = profiles.load_profile(path)
    assert profiles.chapter_parameters(prof, "03_sft")["lr"] == 0.001
    assert profiles.chapter_parameters(prof, "04_grpo")["lr"] == 0.00001
    assert "lr" not in profiles.chapter_parameters(prof, "01_data")


@pytest.mark.parametrize("text, key", [
    ("learning_rate: 0.001\n", "learning_rate"),                 # unknown key
    ("lr: fast\n", "lr"),                                        # wrong type
    ("batch_size: 0\n", "batch_size"),                           # impossible value
    ("batch_size: 2.5\n", "batch_size"),                         # float for an int
    ("lr: -0.0001\n", "lr"),                                     # negative learning rate
    ("03_sft:\n  num_steps: 0\n", "num_steps"),                  # zero steps
    ("load_in_4bit: 'yes'\n", "load_in_4bit"),                   # string for a bool
    ("lr_scheduler: cosine_annealing\n", "lr_scheduler"),        # not a choice
    ("04_grpo:\n  num_generations: 1\n", "num_generations"),     # a group needs two
    ("04_grpo:\n  batch_size: 3\n  grad_accum: 1\n  num_generations: 2\n", "num_generations"),
    ("04_grpo:\n  epsilon: 0.3\n  epsilon_high: 0.2\n", "epsilon_high"),
    ("04_grpo:\n  rewards: [bleu, length]\n  reward_weights: [1.0]\n", "reward_weights"),
    ("01_data:\n  lr: 0.001\n", "lr"),                           # not a parameter of that chapter
    ("03_sft: 5\n", "03_sft"),                                   # section that is not a mapping
    ("requires_cuda: maybe\n", "requires_cuda"),
    ("model: null\n", "model"),                                  # required value missing
])
def test_bad_profile_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        profiles.load_profile(path, check_device=False)
    msg = str(err.value)
    assert key in msg and str(path) in msg


def test_unknown_profile_name_lists_shipped():
    with pytest.raises(ConfigError, match="smoke"):
        profiles.load_profile("no_such_profile")


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        profiles.load_profile(write(tmp_path, "- lr\n- 3\n"))


def test_requires_cuda_on_cpu_fails_before_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "cuda_available", lambda: False)
    path = write(tmp_path, "requires_cuda: true\nbatch_size: 8\n", "gpu.yaml")
    with pytest.raises(ConfigError) as err:
        profiles.load_profile(path)
    assert "requires_cuda" in str(err.value) and str(path) in str(err.value)
    monkeypatch.setattr(profiles, "cuda_available", lambda: True)
    assert profiles.load_profile(path)["parameters"]["batch_size"] == 8


def test_check_value_accepts_ints_for_floats_and_none_when_optional():
    assert profiles.check_value("lr", 1) == 1.0 and isinstance(profiles.check_value("lr", 1), float)
    assert profiles.check_value("train_size", None) is None
    with pytest.raises(ConfigError):
        profiles.check_value("batch_size", True)  # a bool is not a batch size


@pytest.mark.parametrize("name", ["smoke", "seed", "fast"])
def test_shipped_profile_builds_valid_trainer_parameters(name, monkeypatch):
    """Every shipped profile passes the trainers' own checks too, not only the schema."""
    from mtlib import chapter, train
    monkeypatch.setattr(train, "_cuda", lambda: True)  # the GPU profiles' 8-bit AdamW is checked as on CUDA
    prof = profiles.load_profile(name, check_device=False)
    sft = chapter.sft_params(profiles.chapter_parameters(prof, "03_sft"))
    grpo = chapter.grpo_params(profiles.chapter_parameters(prof, "04_grpo"))
    sft.validate(), grpo.validate()
    sections = prof["chapters"]
    if sections.get("03_sft", {}).get("group_by_length"):
        assert sft.train_sampling_strategy == "group_by_length"
    if "batch_size" in sections.get("04_grpo", {}):
        assert grpo.per_device_train_batch_size == sections["04_grpo"]["batch_size"]


def test_schema_choices_are_the_trainers():
    from mtlib import train
    assert profiles.SCHEMA["loss_type"].choices == train.LOSS_TYPES
    assert profiles.SCHEMA["lr_scheduler"].choices == train.SCHEDULERS


def test_yaml_1_2_floats_such_as_1e_4_are_floats(tmp_path):
    """``lr: 1e-4`` is how everyone writes a learning rate (and this module's docstring); YAML 1.1 reads a string."""
    path = write(tmp_path, "lr: 1e-4\nweight_decay: 1E-2\n03_sft: {lr: 2e-4}\n04_grpo:\n  lr: +5e-6\n  beta: .5e-1\n"
                           "  num_steps: 10\n", "floats.yaml")
    prof = profiles.load_profile(path)
    assert prof["parameters"]["lr"] == 1e-4 and prof["parameters"]["weight_decay"] == 0.01
    assert profiles.chapter_parameters(prof, "03_sft")["lr"] == 2e-4
    grpo = profiles.chapter_parameters(prof, "04_grpo")
    assert (grpo["lr"], grpo["beta"], grpo["num_steps"]) == (5e-6, 0.05, 10) and isinstance(grpo["num_steps"], int)
    import yaml
    assert yaml.safe_load("lr: 1e-4") == {"lr": "1e-4"}  # PyYAML's own loader is left as it was
    with pytest.raises(ConfigError, match="num_steps"):  # 1e3 is a float, not a step count
        profiles.load_profile(write(tmp_path, "num_steps: 1e3\n", "steps.yaml"))


@pytest.mark.parametrize("text, key, lines", [
    ("lr: 0.001\nbatch_size: 4\nlr: 0.002\n", "lr", (1, 3)),
    ("03_sft:\n  num_steps: 5\n  warmup_steps: 1\n  num_steps: 50\n", "num_steps", (2, 4)),
    ("03_sft:\n  lr: 0.001\n03_sft:\n  lr: 0.002\n", "03_sft", (1, 3)),
])
def test_duplicate_keys_are_refused_naming_key_and_lines(tmp_path, text, key, lines):
    path = write(tmp_path, text, "dup.yaml")
    with pytest.raises(ConfigError) as err:
        profiles.load_profile(path)
    msg = str(err.value)
    assert f"duplicate key {key!r}" in msg and str(path) in msg
    assert f"line {lines[0]}" in msg and f"line {lines[1]}" in msg


def test_max_seq_length_below_the_working_minimum_is_refused(tmp_path):
    path = write(tmp_path, "max_seq_length: 16\n", "short.yaml")
    with pytest.raises(ConfigError, match=rf"max_seq_length.*>= {profiles.MIN_SEQ_LENGTH}.*chat prompt alone"):
        profiles.load_profile(path)
    ok = write(tmp_path, f"max_seq_length: {profiles.MIN_SEQ_LENGTH}\n", "ok.yaml")
    assert profiles.load_profile(ok)["parameters"]["max_seq_length"] == profiles.MIN_SEQ_LENGTH


def test_a_profile_extends_another_and_says_what_it_changes(tmp_path):
    """extends: the parent's values, with the child's keys replacing them (chapter sections key by key)."""
    (tmp_path / "base.yaml").write_text("requires_cuda: false\nmax_new_tokens: 64\n03_sft:\n  num_steps: 9\n  lr: 1e-4\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmax_new_tokens: 32\n03_sft:\n  lr: 2e-4\n")
    child = profiles.load_profile(tmp_path / "child.yaml")
    assert child["parameters"]["max_new_tokens"] == 32
    assert child["chapters"]["03_sft"] == {"num_steps": 9, "lr": 2e-4}
    assert child["extends"] == [str(tmp_path / "base.yaml")]
    fast, check = (profiles.load_profile(n, check_device=False) for n in ("fast", "gpu-check"))
    assert check["requires_cuda"] and check["chapters"] == fast["chapters"]
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        profiles.load_profile(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("extends: base.yaml\n03_sft:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="lr"):
        profiles.load_profile(tmp_path / "bad.yaml")


def test_fast_profiles_state_only_what_differs_from_what_they_extend():
    """fast repeats no chapter default; gpu-check and fast_2gpu repeat nothing of fast's (they extend it)."""
    from mtlib import parameters
    for name in ("fast", "gpu-check", "fast_2gpu"):
        raw = profiles.read_yaml((profiles.PROFILE_DIR / f"{name}.yaml").read_text())
        parent = profiles.load_profile(raw["extends"], check_device=False) if "extends" in raw else None
        for key, value in raw.items():
            if key in parameters.CHAPTERS:
                for k, v in value.items():
                    before = (parent["chapters"].get(key, {}).get(k, parent["parameters"].get(k)) if parent
                              else None)
                    if before is None:
                        before = parameters.defaults(key)[k]
                    assert v != before, f"{name}.yaml repeats {key}'s {k} = {v!r}"
            elif key in parameters.SCHEMA and key not in ("model", "dataset"):
                before = parent["parameters"].get(key) if parent else None
                assert value != (parameters.SCHEMA[key].default if before is None else before), \
                    f"{name}.yaml repeats {key} = {value!r}"
