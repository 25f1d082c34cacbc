"""Exploration run on a CUDA host: where does the time go for the 3B shape twin in 4-bit with Unsloth?

Plain Unsloth + TRL calls (no mtlib), used once to choose the fast profile's settings before the
benchmark proper (scripts/gpu_benchmark.py) measures them through mtlib. Kept for the record.

    python scripts/gpu_explore.py --data DIR --out DIR [--tiny]      (--tiny: a small model, CPU check)
"""
import argparse
import gzip
import json
import os
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--parts", default="translate,sft,grpo")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
cuda = not args.tiny
if cuda:
    import unsloth  # noqa: F401  (must come before trl/transformers)
    from unsloth import FastLanguageModel
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

RESULTS = []


def log(**row):
    row["t"] = round(time.time() - T0, 1)
    RESULTS.append(row)
    print(json.dumps(row), flush=True)
    (out / "explore.json").write_text(json.dumps(RESULTS, indent=1))


T0 = time.time()


def lines(stem, lang, n=None):
    with gzip.open(Path(args.data) / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
        rows = [l.rstrip("\n") for l in f]
    return rows[:n] if n else rows


train_en, train_de = lines("train", "en", 4000), lines("train", "de", 4000)
test_en = lines("test_2016_flickr", "en")

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>", "<|finetune_right_pad_id|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
tok_dir = out / "twin"
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(train_en + train_de + ["You are a helpful assistant that translates English text into "
                                               "German. Reply with the German translation only."] * 50,
                        trainers.BpeTrainer(vocab_size=8000, special_tokens=SPECIAL,
                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                              pad_token="<|finetune_right_pad_id|>", chat_template=TEMPLATE)
if args.tiny:
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True)
else:
    cfg = LlamaConfig(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
                      max_position_embeddings=131072, rms_norm_eps=1e-5, torch_dtype="bfloat16",
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                       "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192})
cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (tok.convert_tokens_to_ids(t) for t in
                                                         ("<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"))
dev = "cuda" if cuda else "cpu"
with torch.device(dev):
    m = LlamaForCausalLM(cfg).to(torch.bfloat16 if cuda else torch.float32)
m.save_pretrained(tok_dir)
tok.save_pretrained(tok_dir)
del m
torch.cuda.empty_cache() if cuda else None
log(step="built twin", params_b=sum(1 for _ in [0]))

SYS = "You are a helpful assistant that translates English text into German. Reply with the German translation only."


def load(gc):
    if cuda:
        model, tk = FastLanguageModel.from_pretrained(str(tok_dir), max_seq_length=512, load_in_4bit=True,
                                                      dtype=torch.bfloat16)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"],
                                                 use_gradient_checkpointing=gc, random_state=3407)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model, tk = AutoModelForCausalLM.from_pretrained(tok_dir), AutoTokenizer.from_pretrained(tok_dir)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))
    return model, tk


def mem():
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0


def translate(model, tk, sources, bs, graphs):
    os.environ["UNSLOTH_DECODE_CUDA_GRAPHS"] = "1" if graphs else "0"
    if cuda:
        FastLanguageModel.for_inference(model)
    tk.padding_side = "left"
    prompts = [tk.apply_chat_template([{"role": "system", "content": SYS}, {"role": "user", "content": s}],
                                      tokenize=False, add_generation_prompt=True) for s in sources]
    n_new = 64 if cuda else 8
    outs = []
    if cuda:
        torch.cuda.synchronize()
    t = time.time()
    for i in range(0, len(prompts), bs):
        enc = tk(prompts[i:i + bs], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        with torch.inference_mode():
            g = model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                               pad_token_id=tk.pad_token_id)
        outs += tk.batch_decode(g[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if cuda:
        torch.cuda.synchronize()
    return time.time() - t, outs


def add_clock(trainer):
    """A list that receives the time at the end of every optimizer step."""
    from transformers import TrainerCallback
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, s, c, **kw):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.time())
    trainer.add_callback(Clock())
    return stamps


def sft(model, tk, bs, ga, steps, packing=False, padding_free=None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    n = bs * ga * steps
    rows = [{"messages": [{"role": "system", "content": SYS}, {"role": "user", "content": e},
                          {"role": "assistant", "content": d}]} for e, d in zip(train_en[:n], train_de[:n])]
    ds = Dataset.from_list(rows)
    lens = [len(tk(tk.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False).input_ids)
            for r in rows[:256]]
    mean_len = sum(lens) / len(lens)
    cfg = SFTConfig(output_dir=str(out / "sft"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                    max_steps=steps, learning_rate=2e-4, warmup_steps=5, weight_decay=0.01,
                    lr_scheduler_type="linear", optim="adamw_8bit" if cuda else "adamw_torch", logging_steps=1,
                    report_to="none", save_strategy="no", seed=3407, bf16=cuda, max_length=512,
                    packing=packing, padding_free=padding_free, dataset_num_proc=1)
    trainer = SFTTrainer(model=model, processing_class=tk, train_dataset=ds, args=cfg)
    if cuda:
        from unsloth.chat_templates import train_on_responses_only
        trainer = train_on_responses_only(trainer, instruction_part="<|start_header_id|>user<|end_header_id|>\n\n",
                                          response_part="<|start_header_id|>assistant<|end_header_id|>\n\n")
    stamps = add_clock(trainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    warm = stamps[2:] if len(stamps) > 3 else stamps
    per_step = (warm[-1] - warm[0]) / max(1, len(warm) - 1)
    return per_step, bs * ga * mean_len / per_step, mean_len


def grpo(model, tk, bs, ga, steps, gen_batch=None):
    from datasets import Dataset
    from sacrebleu.metrics import BLEU
    from trl import GRPOConfig, GRPOTrainer
    bleu = BLEU(effective_order=True)
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": SYS}, {"role": "user", "content": e}],
                             "reference": d} for e, d in zip(train_en[:2000], train_de[:2000])])

    def bleu_reward(prompts, completions, reference, **kw):
        return [bleu.sentence_score(c[0]["content"], [r]).score / 100 for c, r in zip(completions, reference)]
    cfg = GRPOConfig(output_dir=str(out / "grpo"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                     generation_batch_size=gen_batch, max_steps=steps, learning_rate=5e-6, loss_type="bnpo", beta=0.0,
                     epsilon_high=0.28, num_generations=4, max_completion_length=76 if cuda else 8, temperature=0.9,
                     top_k=50, top_p=0.95, repetition_penalty=1.2, logging_steps=1, report_to="none",
                     save_strategy="no", bf16=cuda, seed=3407, optim="adamw_8bit" if cuda else "adamw_torch")
    trainer = GRPOTrainer(model=model, processing_class=tk, reward_funcs=[bleu_reward], args=cfg, train_dataset=ds)
    stamps = add_clock(trainer)
    trainer.train()
    k = cfg.steps_per_generation - 1  # time whole generation cycles, after the first
    per_step = (stamps[-1] - stamps[k]) / max(1, len(stamps) - 1 - k)
    return per_step, cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps / per_step


parts = args.parts.split(",")
model, tk = load("unsloth")
log(step="loaded 4bit + lora", mem_gb=mem())
if "translate" in parts:
    srcs = test_en if cuda else test_en[:16]
    for bs, graphs, n in ([(8, False, 32), (256, False, 1000), (1000, False, 1000), (1000, True, 1000)]
                          if cuda else [(4, False, 16), (16, False, 16)]):
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sec, outs = translate(model, tk, srcs[:n], bs, graphs)
            log(step="translate", bs=bs, graphs=graphs, n=n, seconds=round(sec, 2),
                sent_per_s=round(n / sec, 1), mem_gb=mem(), sample=outs[0][:40])
        except Exception as e:  # noqa: BLE001
            log(step="translate", bs=bs, graphs=graphs, error=repr(e)[:300])
            torch.cuda.empty_cache() if cuda else None
if cuda:
    FastLanguageModel.for_training(model)
if "sft" in parts:
    for bs, ga, steps in ([(4, 4, 8), (64, 1, 8), (256, 1, 6)] if cuda else [(4, 1, 4)]):
        try:
            per_step, tps, mean_len = sft(model, tk, bs, ga, steps)
            log(step="sft", gc="unsloth", bs=bs, ga=ga, s_per_step=round(per_step, 3), tok_per_s=round(tps),
                mean_len=round(mean_len, 1), mem_gb=mem())
        except Exception as e:  # noqa: BLE001
            log(step="sft", bs=bs, error=repr(e)[:300])
if "grpo" in parts:
    for bs, ga, steps, gb in ([(4, 1, 4, None), (64, 1, 8, 256)] if cuda else [(4, 1, 3, None), (8, 1, 4, 16)]):
        try:
            per_step, cps = grpo(model, tk, bs, ga, steps, gb)
            log(step="grpo", bs=bs, ga=ga, gen_batch=gb, s_per_step=round(per_step, 2), completions_per_s=round(cps, 2),
                mem_gb=mem())
        except Exception as e:  # noqa: BLE001
            log(step="grpo", bs=bs, error=repr(e)[:300])
if cuda and "sft_nogc" in parts:
    del model
    torch.cuda.empty_cache()
    model, tk = load(False)
    for bs, ga, steps in [(64, 1, 8), (256, 1, 6)]:
        try:
            per_step, tps, mean_len = sft(model, tk, bs, ga, steps)
            log(step="sft", gc=False, bs=bs, ga=ga, s_per_step=round(per_step, 3), tok_per_s=round(tps), mem_gb=mem())
        except Exception as e:  # noqa: BLE001
            log(step="sft", gc=False, bs=bs, error=repr(e)[:300])
log(step="done")
