"""Tokens per SFT example, GRPO prompt and sentence of test 2016: the shape twin's tokenizer beside Llama 3's.

The twin's timings are the real model's only if it reads as many tokens: this renders the chapters' SFT
examples and GRPO prompts with the twin's chat template (Llama 3.2's, the book's fixed date), counts the
twin's tokens (and the tiny model's, with its short template: the twin's tokenizer until 2026-12-02), and,
with ``--llama3`` (Node.js and ``npm install llama3-tokenizer-js`` in that folder), Llama 3's own
tokenizer's for the same texts. CPU only, about ten seconds.

    python -m benchmarks.twin_token_counts [--llama3 NODE_FOLDER] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

PROGRAM = Path(__file__).with_name("llama3_token_counts.mjs")


def rendered_texts(pairs, tokenizer, split: str = "test", src: str = "en", tgt: str = "de") -> dict[str, list[str]]:
    """The texts the chapters tokenize, by name: SFT examples, GRPO prompts, sources, references."""
    from mtlib import data, prompts
    sources, refs = data.pair_columns(pairs[split], src, tgt)
    sft = [tokenizer.apply_chat_template(prompts.sft_messages(s, r, tgt, src), tokenize=False)
           for s, r in zip(sources, refs)]
    prompt = [tokenizer.apply_chat_template(prompts.inference_messages(s, tgt, src), tokenize=False,
                                            add_generation_prompt=True) for s in sources]
    return {"sft_example": sft, "grpo_prompt": prompt, "source": sources, "reference": refs,
            "system_prompt": [prompts.system_prompt(tgt, src)]}


def twin_counts(tokenizer, texts: dict[str, list[str]]) -> dict[str, float]:
    from mtlib.prompts import token_counts
    return {name: statistics.mean(token_counts(tokenizer, xs)) for name, xs in texts.items()}


def llama3_counts(texts: dict[str, list[str]], node_folder) -> dict[str, float]:
    """Llama 3's counts from :data:`PROGRAM`, run by Node.js in ``node_folder`` (where llama3-tokenizer-js is)."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("--llama3 needs Node.js (node) on PATH")
    folder = Path(node_folder).resolve()
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=folder, delete=False) as fh:
        json.dump(texts, fh)
    try:
        shutil.copy(PROGRAM, folder / PROGRAM.name)
        done = subprocess.run([node, PROGRAM.name, fh.name], cwd=folder, capture_output=True, text=True)
    finally:
        Path(fh.name).unlink()
    if done.returncode:
        raise SystemExit(f"{PROGRAM.name} failed in {folder} (npm install llama3-tokenizer-js there):\n{done.stderr}")
    return json.loads(done.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships)")
    ap.add_argument("--llama3", metavar="NODE_FOLDER", help="count Llama 3's tokens too, with Node.js here")
    ap.add_argument("--out", help="write the counts to this JSON file")
    args = ap.parse_args()
    from mtlib import data, prompts, tiny

    pairs = data.load_pairs(args.data)
    train = data.sentences(pairs["train"], ["en", "de"])
    tokenizer = prompts.fix_template_date(tiny.twin_tokenizer(train))
    texts = rendered_texts(pairs, tokenizer)
    small = prompts.fix_template_date(tiny.build_tokenizer(train))  # the smoke model's (the twin's until 2026-12-02)
    result = {"texts": f"{args.data} test (n={len(texts['source'])}), en-de, prompt date {prompts.PROMPT_DATE}",
              "twin_tokenizer": {k: v for k, v in tiny.TWIN_TOKENIZER.items() if k != "chat_template"},
              "twin": twin_counts(tokenizer, texts),
              "tiny": twin_counts(small, rendered_texts(pairs, small))}
    if args.llama3:
        result["llama3"] = llama3_counts(texts, args.llama3)
        result["llama3_tokenizer"] = "llama3-tokenizer-js (npm), Llama 3's tiktoken vocabulary"
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
