"""Several GPUs, checked on CPU: two gloo processes through `accelerate launch` run the data-parallel SFT (and
GRPO) and the sharded evaluation on the tiny model; the records match the single-process ones and every
test sentence is translated once, in order."""
import json

import pytest

from mtlib import chapter, parallel, profiles
from mtlib.errors import ConfigError, TrainingError

SFT = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, warmup_steps=0, max_steps=4, save_steps=100)
N_TEST = 13  # odd: the two shards differ in size


def _splits(pairs):
    from datasets import Dataset
    train = Dataset.from_dict({"en": [p[0] for p in pairs[:64]], "de": [p[1] for p in pairs[:64]]})
    test = Dataset.from_dict({"en": [p[0] for p in pairs[100:100 + N_TEST]],
                              "de": [p[1] for p in pairs[100:100 + N_TEST]]})
    return train, test


def _lora(tiny_dir):
    from mtlib.modeling import add_lora, load_model
    model, tok = load_model(tiny_dir, backend="hf")
    return add_lora(model, r=8, alpha=16, gradient_checkpointing=False), tok


def _files(run_dir):
    skip = {"launch", "parallel.json"}
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.is_file() and not set(p.relative_to(run_dir).parts) & skip
                  and "checkpoints" not in p.parts)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir, pairs):
    """The same SFT + evaluation once in this process and once on two processes."""
    from mtlib.generate import evaluate
    from mtlib.train import SFTParams, run_sft
    root = tmp_path_factory.mktemp("parallel")
    train, test = _splits(pairs)
    model, tok = _lora(tiny_dir)
    one = run_sft(model, tok, train, SFTParams(**SFT), runs_root=root / "one")
    one_eval = evaluate(one, test, runs_root=root / "one", batch_size=4, max_new_tokens=12, split_name="test")
    model, tok = _lora(tiny_dir)
    lines = []
    two = parallel.run_sft(model, tok, train, SFTParams(**SFT), num_processes=2, runs_root=root / "two",
                           echo=lines.append)
    # The model trained on two processes, translated here and on two processes: the same sentences.
    here = evaluate(two, test, runs_root=root / "here", batch_size=4, max_new_tokens=12, split_name="test")
    two_eval = parallel.evaluate_splits(two, {"test": test}, num_processes=2, runs_root=root / "two",
                                        batch_size=4, max_new_tokens=12, echo=lines.append)["test"]
    return dict(root=root, test=test, one=one, one_eval=one_eval, two=two, two_eval=two_eval, here=here,
                lines=lines, train=train)


def test_two_process_sft_writes_the_single_process_record(runs):
    one, two = runs["one"], runs["two"]
    assert _files(two.run_dir) == _files(one.run_dir)  # config, env, status, timings, log, adapter, ...
    config = json.loads((two.run_dir / "config.json").read_text())
    one_config = json.loads((one.run_dir / "config.json").read_text())
    assert set(one_config) <= set(config) and config["params"] == one_config["params"]
    assert config["num_processes"] == 2 and config["backend"] == "hf"
    assert config["parallel"]["effective_batch_size"] == 2 * SFT["per_device_train_batch_size"]
    assert config["parallel"]["lr"] == one_config["params"]["lr"]
    info = json.loads((two.run_dir / "parallel.json").read_text())
    assert info["num_processes"] == 2 and [r["rank"] for r in info["ranks"]] == [0, 1]
    assert "MULTI_CPU" in info["distributed_type"]
    status = json.loads((two.run_dir / "status.json").read_text())
    assert status["status"] == "finished"
    history = json.loads((two.run_dir / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert history[0]["epoch"] == pytest.approx(2 * 4 / 64)  # each step: 4 examples on each of 2 processes
    assert (two.run_dir / "launch" / "sft.log").is_file() and not (two.run_dir / "launch" / "train").exists()
    assert any("sft step 4/4" in line for line in runs["lines"])


def test_the_launching_process_gets_the_trained_adapter(runs):
    from safetensors.torch import load_file
    two = runs["two"]
    assert two.stage == "sft" and two.adapter_dir == two.run_dir / "adapter"
    saved = load_file(str(two.adapter_dir / "adapter_model.safetensors"))
    params = dict(two.model.named_parameters())
    for key, value in list(saved.items())[:4]:
        name = key.replace(".weight", ".default.weight")
        assert (params[name].detach() == value).all(), name
    assert any((v != 0).any() for k, v in saved.items() if "lora_B" in k)  # trained: B left zero


def test_sharded_evaluation_translates_each_sentence_once_in_order(runs):
    test, two_eval, here = runs["test"], runs["two_eval"], runs["here"]
    rows = [json.loads(line) for line in (two_eval.run_dir / "translations.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == list(test["en"]) and [r["reference"] for r in rows] == list(test["de"])
    assert list(two_eval.translations["hypothesis"]) == list(here.translations["hypothesis"])  # greedy: identical
    for key, value in here.metrics.items():
        assert two_eval.metrics[key] == (value if isinstance(value, str) else pytest.approx(value)), key
    config = json.loads((two_eval.run_dir / "config.json").read_text())
    assert config["shards"] == [[0, 7], [7, 13]] and config["num_processes"] == 2
    assert config["stage"] == "sft" and config["train_run"] == str(runs["two"].run_dir)
    info = json.loads((two_eval.run_dir / "parallel.json").read_text())
    assert [(r["start"], r["stop"], r["stats"]["n"]) for r in info["ranks"]] == [(0, 7, 7), (7, 13, 6)]
    assert two_eval.stats.n == N_TEST


def test_sharded_evaluation_writes_the_single_process_record(runs):
    one_eval, two_eval = runs["one_eval"], runs["two_eval"]
    assert _files(two_eval.run_dir) == _files(one_eval.run_dir)
    one_config = json.loads((one_eval.run_dir / "config.json").read_text())
    two_config = json.loads((two_eval.run_dir / "config.json").read_text())
    assert set(one_config) <= set(two_config)
    one_m = json.loads((one_eval.run_dir / "metrics.json").read_text())
    two_m = json.loads((two_eval.run_dir / "metrics.json").read_text())
    assert set(one_m) == set(two_m) == {"test"} and set(one_m["test"]) == set(two_m["test"])
    from mtlib.results import load_runs
    table = load_runs(runs["root"] / "two")
    assert list(table.split.dropna()) == ["test"] and table.n.dropna().tolist() == [N_TEST]
    assert not any(p.name.startswith(".launch") for p in (runs["root"] / "two").iterdir())  # cleaned up


def test_two_process_grpo_continues_the_sft_adapter(runs):
    from mtlib.train import GRPOParams
    params = GRPOParams(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=4,
                        max_completion_length=8, max_steps=2, save_steps=100)
    grpo = parallel.run_grpo(runs["two"], None, runs["train"], params, num_processes=2,
                             runs_root=runs["root"] / "two", echo=lambda line: None)
    config = json.loads((grpo.run_dir / "config.json").read_text())
    assert grpo.stage == "grpo" and config["from_stage"] == "sft" and config["num_processes"] == 2
    assert config["parallel"]["completions_per_step"] == 8 and config["parallel"]["prompts_per_step"] == 2
    assert "not verified" in config["parallel"]["backend_note"]
    history = json.loads((grpo.run_dir / "log_history.json").read_text())
    assert [h["step"] for h in history if "reward" in h] == [1, 2]


def test_a_failing_worker_fails_the_run_and_names_the_log(tmp_path, tiny_dir):
    from datasets import Dataset
    from mtlib.train import SFTParams
    model, tok = _lora(tiny_dir)
    bad = Dataset.from_dict({"english": ["a"] * 8, "german": ["b"] * 8})  # no en/de columns
    with pytest.raises(TrainingError, match="sft.log") as err:
        parallel.run_sft(model, tok, bad, SFTParams(**SFT), num_processes=2, runs_root=tmp_path, echo=lambda l: None)
    assert "en" in str(err.value)  # the worker's own error, not only the launcher's
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


# -- without launching ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_item_once_in_order(n, world):
    bounds = [parallel.shard_bounds(n, world, r) for r in range(world)]
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_num_gpus_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.delenv(parallel.CPU_ENV, raising=False)
    assert parallel.resolve_num_gpus(1) == 1 and parallel.resolve_num_gpus("auto") == 1
    with pytest.raises(ConfigError, match="num_gpus.*0 CUDA"):
        parallel.resolve_num_gpus(2)
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ConfigError, match="num_gpus"):
            parallel.resolve_num_gpus(bad)
    monkeypatch.setenv(parallel.CPU_ENV, "1")  # CPU processes, for tests and laptops
    assert parallel.resolve_num_gpus(2) == 2 and parallel.resolve_num_gpus("auto") == 1


def test_profile_asking_for_more_gpus_than_present_fails_naming_key_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv(parallel.CPU_ENV, raising=False)
    path = tmp_path / "two.yaml"
    path.write_text("num_gpus: 2\n")
    with pytest.raises(ConfigError) as err:
        profiles.load_profile(path)
    assert "num_gpus" in str(err.value) and str(path) in str(err.value)
    assert profiles.load_profile(path, check_device=False)["parameters"]["num_gpus"] == 2
    path.write_text("num_gpus: auto\n")
    assert profiles.chapter_parameters(profiles.load_profile(path), "03_sft")["num_gpus"] == "auto"
    path.write_text("num_gpus: 0\n")
    with pytest.raises(ConfigError, match="num_gpus"):
        profiles.load_profile(path, check_device=False)


def test_chapters_dispatch_on_num_gpus(monkeypatch, tiny_dir):
    from datasets import Dataset, DatasetDict
    from mtlib import generate, train
    calls = []
    monkeypatch.setattr(parallel, "evaluate_splits", lambda *a, **k: calls.append(("parallel", a, k)) or {})
    monkeypatch.setattr(generate, "evaluate", lambda *a, **k: calls.append(("here", a, k)))
    monkeypatch.setattr(parallel, "run_sft", lambda *a, **k: calls.append(("parallel sft", a, k)))
    monkeypatch.setattr(train, "run_sft", lambda *a, **k: calls.append(("here sft", a, k)))
    pairs_ = DatasetDict({"train": Dataset.from_dict({"en": ["a"], "de": ["b"]}),
                          "test": Dataset.from_dict({"en": ["a"], "de": ["b"]})})
    params = {"src_lang": "en", "tgt_lang": "de", "runs_root": "runs", "eval_batch_size": 4, "max_new_tokens": 8,
              "max_seq_length": 64, "load_in_4bit": False, "gradient_checkpointing": False, "num_gpus": 1}
    chapter.evaluate_splits(None, pairs_, params, "base")
    chapter.run_sft(None, None, pairs_["train"], None, params)
    assert [c[0] for c in calls] == ["here", "here sft"]
    assert calls[0][2]["config"]["num_processes"] == 1
    monkeypatch.setenv(parallel.CPU_ENV, "1")
    calls.clear()
    chapter.evaluate_splits(None, pairs_, {**params, "num_gpus": 2}, "base")
    chapter.run_sft(None, None, pairs_["train"], None, {**params, "num_gpus": 2})
    assert [c[0] for c in calls] == ["parallel", "parallel sft"]
    assert calls[0][2]["num_processes"] == 2 and list(calls[0][1][1]) == ["test"]
    assert calls[1][2]["num_processes"] == 2 and calls[1][2]["max_seq_length"] == 64


def test_launch_command_is_accelerate_launch_of_the_entry_point(tmp_path):
    cmd = parallel.launch_command("sft", tmp_path / "spec.json", 2, port=29555)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "29555"
    assert cmd[-5:] == ["-m", "mtlib.parallel", "sft", "--spec", str(tmp_path / "spec.json")]
    with pytest.raises(ConfigError):
        parallel.launch_command("dpo", tmp_path / "spec.json", 2)


def test_grpo_on_several_processes_uses_the_plain_backend():
    assert parallel.choose_backend("grpo", 2) == "hf"
    assert parallel.MULTI_PROCESS_BACKEND["grpo"] == "hf" and parallel.MULTI_PROCESS_BACKEND["sft"] == "auto"
    assert parallel.backend_note("grpo", "hf", 2).startswith("GRPO on several processes")
    assert parallel.backend_note("sft", "hf", 1) is None


def test_gpu_benchmark_runs_its_multi_process_configuration_on_cpu(tmp_path, raw_dir):
    """benchmarks/gpu_multi.py --tiny: the same program as on the GPUs, with gloo processes and the tiny model."""
    import subprocess
    import sys
    script = chapter.REPO_ROOT / "benchmarks" / "gpu_multi.py"
    proc = subprocess.run([sys.executable, str(script), "--data", str(raw_dir), "--out", str(tmp_path), "--tiny",
                           "--configs", "2gpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "multi_gpu.json").read_text())
    rows = {r["stage"]: r for r in result["rows"] if r.get("config") == "2gpu"}
    assert not [r for r in result["rows"] if "error" in r], result["rows"]
    assert rows["sft"]["throughput"] > 0 and rows["sft"]["processes"] == 2
    assert rows["translate"]["sentences"] == 4 * 24 and rows["translate"]["shards"][0] == [[0, 12], [12, 24]]
    assert "| stage | comparison |" in proc.stdout
    from mtlib import bench  # what the speed appendix shows from such a file
    summary, table, env = bench.multi_gpu(tmp_path / "multi_gpu.json")
    assert set(table.stage) == {"sft", "translate"} and env["card"] == "cpu"
    assert list(summary.stage) == ["sft", "translate"] and summary.speedup.isna().all()  # no 1-GPU run here
    assert bench.multi_gpu(tmp_path / "absent.json") is None


def test_two_gpu_profile_keeps_the_fast_recipe():
    """fast_2gpu: the fast profile's values, its per-step batches split over two GPUs."""
    fast = profiles.load_profile("fast", check_device=False)
    two = profiles.load_profile("fast_2gpu", check_device=False)
    assert two["parameters"].pop("num_gpus") == 2 and two["parameters"] == fast["parameters"]
    for ch in ("03_sft", "04_grpo"):
        f_, t_ = fast["chapters"][ch], two["chapters"][ch]
        assert {k: v for k, v in f_.items() if k not in ("batch_size", "grad_accum")} == \
            {k: v for k, v in t_.items() if k not in ("batch_size", "grad_accum")}
        assert f_["batch_size"] * f_["grad_accum"] == t_["batch_size"] * t_["grad_accum"] * 2
