"""SFT and GRPO on the tiny model: completion-only labels, loss goes down, rewards logged, NaN guard, resume."""
import json

import pytest
import torch

from mtlib.errors import ConfigError, TrainingError
from mtlib.modeling import TrainedModel, add_lora, load_model, load_trained
from mtlib.results import load_runs
from mtlib.train import (GRPOParams, SFTParams, StepClock, build_grpo_trainer, build_sft_trainer, params_from_dict,
                         run_grpo, run_sft)

FAST_SFT = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, warmup_steps=0, save_steps=100)


def _lora(tiny_dir):
    model, tok = load_model(tiny_dir, backend="hf")
    return add_lora(model, r=8, alpha=16, gradient_checkpointing=False), tok


def test_defaults_are_the_original_recipe():
    s, g = SFTParams(), GRPOParams()
    assert (s.lr, s.per_device_train_batch_size, s.gradient_accumulation_steps, s.max_steps, s.seed) == \
        (2e-4, 4, 4, 200, 3407)
    assert s.optim == "adamw_torch"  # no CUDA here; adamw_8bit on a GPU
    assert (g.loss_type, g.beta, g.epsilon, g.epsilon_high, g.num_generations, g.max_completion_length) == \
        ("bnpo", 0.0, 0.2, 0.28, 4, 76)
    assert (g.temperature, g.top_k, g.top_p, g.repetition_penalty, g.lr, g.max_steps) == (0.9, 50, 0.95, 1.2, 5e-6, 500)
    assert s.validate() is s and g.validate() is g


@pytest.mark.parametrize("cls,values,field", [
    (SFTParams, {"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    (SFTParams, {"lr": -1e-4}, "lr"),
    (SFTParams, {"max_steps": 0}, "max_steps"),
    (SFTParams, {"optim": "adamw_8bit"}, "optim"),
    (GRPOParams, {"loss_type": "ppo"}, "loss_type"),
    (GRPOParams, {"num_generations": 3}, "num_generations"),
    (GRPOParams, {"reward_weights": [1.0]}, "reward_weights"),
    (GRPOParams, {"lerning_rate": 1e-5}, "lerning_rate"),
])
def test_bad_params_name_the_field(cls, values, field):
    with pytest.raises(ConfigError, match=field):
        params_from_dict(cls, values)


def test_step_clock_stamps_every_optimizer_step_after_syncing(tmp_path, tiny_dir, train_split):
    model, tok = _lora(tiny_dir)
    synced, seen = [], []
    clock = StepClock(sync=lambda: synced.append(1), on_step=lambda state: seen.append(state.global_step))
    params = SFTParams(**{**FAST_SFT, "gradient_accumulation_steps": 2}, max_steps=3)
    build_sft_trainer(model, tok, train_split.select(range(24)), params, output_dir=tmp_path, callbacks=[clock]).train()
    assert seen == [1, 2, 3] and len(synced) == 3          # once per optimizer step, not per micro-batch
    assert len(clock.stamps) == len(clock.step_seconds) == 3 and clock.stamps == sorted(clock.stamps)
    assert all(s >= 0 for s in clock.step_seconds) and len(clock.tokens) == 3


def test_sft_labels_only_the_translation(tmp_path, tiny_dir, train_split):
    model, tok = _lora(tiny_dir)
    trainer = build_sft_trainer(model, tok, train_split.select(range(4)), SFTParams(**FAST_SFT, max_steps=1),
                                output_dir=tmp_path)
    for i in range(4):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        labels = batch["labels"][0]
        assert tok.decode(labels[labels != -100]) == train_split[i]["de"] + "<|eot_id|>"
        full = tok.decode(batch["input_ids"][0])
        assert full.startswith("<|begin_of_text|><|start_header_id|>system") and train_split[i]["en"] in full


def test_run_sft_lowers_loss_and_records_the_run(tmp_path, tiny_dir, train_split, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "fake-secret")
    model, tok = _lora(tiny_dir)
    trained = run_sft(model, tok, train_split.select(range(16)), SFTParams(**FAST_SFT, lr=1e-2, max_steps=24),
                      runs_root=tmp_path, name="sft-test", config={"hf_token": "fake-secret"})
    assert isinstance(trained, TrainedModel) and trained.stage == "sft"
    history = json.loads((trained.run_dir / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert (trained.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((trained.run_dir / "status.json").read_text())["status"] == "finished"
    assert len(load_runs(tmp_path, include_unscored=True)) == 1
    record = json.loads((trained.run_dir / "trainer.json").read_text())  # what ran, with its effective arguments
    assert record["trainer_class"].startswith("trl.") and record["trainer_class"].endswith("SFTTrainer")
    assert record["args"]["learning_rate"] == 1e-2 and record["args"]["max_steps"] == 24
    config = json.loads((trained.run_dir / "config.json").read_text())
    assert config["prompt_date"] == "26 Jul 2024"  # the chat template's date, fixed and recorded
    env = json.loads((trained.run_dir / "env.json").read_text())
    assert env["packages"]["trl"] and env["packages"]["transformers"] and "gpus" in env
    for f in trained.run_dir.rglob("*"):
        if f.is_file():
            assert b"fake-secret" not in f.read_bytes(), f


def test_non_finite_loss_stops_and_marks_run_failed(tmp_path, tiny_dir, train_split):
    model, tok = _lora(tiny_dir)
    with torch.no_grad():
        model.base_model.model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss at step 1"):
        run_sft(model, tok, train_split.select(range(8)), SFTParams(**FAST_SFT, max_steps=3), runs_root=tmp_path)
    (run,) = list(tmp_path.iterdir())
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "non-finite loss" in status["error"]
    assert load_runs(tmp_path, include_unscored=True).empty


def test_resume_after_interruption_reaches_the_same_step(tmp_path, tiny_dir, train_split):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt

    params = SFTParams(**{**FAST_SFT, "save_steps": 2}, max_steps=6)
    data = train_split.select(range(32))
    model, tok = _lora(tiny_dir)
    with pytest.raises(KeyboardInterrupt):
        run_sft(model, tok, data, params, runs_root=tmp_path, callbacks=[Interrupt()])
    (run,) = list(tmp_path.iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert (run / "checkpoints" / "checkpoint-4").is_dir()

    model, tok = _lora(tiny_dir)
    trained = run_sft(model, tok, data, params, runs_root=tmp_path, resume=True)
    assert trained.run_dir == run
    assert trained.extra["trainer"].state.global_step == 6
    steps = [h["step"] for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    with pytest.raises(TrainingError, match="checkpoint"):
        run_sft(model, tok, data, params, runs_root=tmp_path / "empty", resume=True)
    no_checkpoints = tmp_path / "an-evaluation-run"
    no_checkpoints.mkdir()
    with pytest.raises(TrainingError, match="no checkpoint in"):  # an explicit folder without checkpoints
        run_sft(model, tok, data, params, runs_root=tmp_path, resume=no_checkpoints)


def test_grpo_logs_every_reward_and_continues_the_sft_adapter(tmp_path, tiny_dir, train_split):
    model, tok = _lora(tiny_dir)
    sft = run_sft(model, tok, train_split.select(range(8)), SFTParams(**FAST_SFT, max_steps=2), runs_root=tmp_path)
    start = load_trained(sft.run_dir, backend="hf", trainable=True)
    before = {n: p.detach().clone() for n, p in start.model.named_parameters() if "lora_" in n}

    def varied(completions, **kw):  # differs within a group, so the advantages are not all zero
        return [len(c[0]["content"]) / 10 for c in completions]

    params = GRPOParams(max_steps=2, max_completion_length=8, lr=1e-2, save_steps=100)
    grpo = run_grpo(start, start.tokenizer, train_split.select(range(8)), params, runs_root=tmp_path,
                    rewards=["bleu", "length", varied])
    history = json.loads((grpo.run_dir / "log_history.json").read_text())
    logged = [h for h in history if "loss" in h]
    assert len(logged) == 2
    for name in ("bleu", "length", "varied"):
        assert all(f"rewards/{name}/mean" in h for h in logged), name
    after = {n: p for n, p in grpo.model.named_parameters() if "lora_" in n}
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    assert grpo.stage == "grpo" and "-grpo-" in grpo.run_dir.name
    cfg = json.loads((grpo.run_dir / "config.json").read_text())
    assert cfg["from_stage"] == "sft" and cfg["params"]["loss_type"] == "bnpo"


def test_grpo_rejects_frozen_model_and_unknown_reward(tmp_path, tiny_dir, train_split):
    model, tok = _lora(tiny_dir)
    with pytest.raises(ConfigError, match="unknown reward"):
        build_grpo_trainer(model, tok, train_split, GRPOParams(max_steps=1), tmp_path, rewards=["meteor"])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable"):
        build_grpo_trainer(model, tok, train_split, GRPOParams(max_steps=1), tmp_path)


def test_max_seq_length_that_cuts_every_translation_names_it_and_the_minimum_works(tiny_dir, train_split, tmp_path):
    """16 tokens: TRL drops every example (each is cut inside its prompt) and torch later fails with
    "num_samples=0"; mtlib says which parameter to raise. The schema's minimum keeps every example."""
    from mtlib.profiles import MIN_SEQ_LENGTH
    model, tok = _lora(tiny_dir)
    with pytest.raises(ConfigError, match="max_seq_length=16 .* raise max_seq_length"):
        build_sft_trainer(model, tok, train_split, SFTParams(max_seq_length=16, **FAST_SFT), tmp_path / "a")
    trainer = build_sft_trainer(model, tok, train_split, SFTParams(max_seq_length=MIN_SEQ_LENGTH, **FAST_SFT),
                                tmp_path / "b")
    assert len(trainer.train_dataset) == len(train_split)


def test_grpo_pads_prompts_and_completions_to_the_multiple_asked(tmp_path, tiny_dir, train_split):
    """pad_to_multiple_of reaches TRL, whose padded batches then have lengths that are multiples of it."""
    model, tok = _lora(tiny_dir)
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        GRPOParams(pad_to_multiple_of=0).validate()
    params = GRPOParams(max_steps=1, max_completion_length=5, pad_to_multiple_of=8, save_steps=100)
    trainer = build_grpo_trainer(model, tok, train_split.select(range(8)), params, tmp_path)
    assert trainer.args.pad_to_multiple_of == 8
    batch = trainer._generate_and_score_completions(
        [{"prompt": r["prompt"], "reference": r["reference"]} for r in trainer.train_dataset.select(range(4))])
    assert batch["prompt_ids"].shape[1] % 8 == 0 and batch["completion_ids"].shape[1] % 8 == 0


def test_unsloth_sft_text_is_each_conversation_rendered_without_bos(tiny, train_split):
    """The Unsloth path's training text: every pair's whole conversation through the chat template, rendered in
    one call, the BOS left to the tokenizer; a split that already holds ``messages`` gives the same text."""
    from mtlib.prompts import sft_messages, to_sft_dataset
    from mtlib.train import _sft_text_dataset
    _, tok = tiny
    texts = _sft_text_dataset(train_split, tok, "en", "de")["text"]
    expected = [tok.apply_chat_template(sft_messages(r["en"], r["de"], "de", "en"), tokenize=False)
                for r in train_split]
    assert tok.bos_token and all(e.startswith(tok.bos_token) for e in expected)
    assert list(texts) == [e[len(tok.bos_token):] for e in expected]
    assert list(_sft_text_dataset(to_sft_dataset(train_split, "en", "de"), tok, "en", "de")["text"]) == list(texts)


def test_training_runs_in_a_training_session_with_torchs_attention(tmp_path, tiny_dir, train_split, monkeypatch):
    """Every training enters train.training_session (the CUDA cache emptied first) and keeps torch's choice of
    attention, cuDNN's included (faster in training on the H200, unlike decoding)."""
    import mtlib.train as train
    entered, seen = [], []
    real = train.training_session

    def spy(*args, **kwargs):
        entered.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "training_session", spy)
    model, tok = _lora(tiny_dir)
    model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    run_sft(model, tok, train_split.select(range(8)), SFTParams(**FAST_SFT, max_steps=2), runs_root=tmp_path)
    assert entered == [1] and len(seen) >= 2 and all(seen)


def test_training_session_empties_the_cuda_cache_first(monkeypatch):
    """What a translation left in CUDA's caching allocator is handed back before training (on a GPU)."""
    from mtlib.train import training_session
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    with training_session():
        assert emptied == [1]
    with training_session(empty_cache=False):
        pass
    assert emptied == [1]
