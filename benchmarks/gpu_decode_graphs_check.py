"""mtlib.decode_graphs on a CUDA GPU, in seconds: a tiny random Llama decoded with and without CUDA graphs.

Checks what the CPU tests cannot (they record with a stand-in): that real CUDA graphs record and replay the
merged copy's decode steps, giving greedy translations equal to eager decoding's, and that a kept cache serves
shorter prompts with one recording and grows for a longer one. Prints one JSON line; exit 1 on a mismatch.

    python -m benchmarks.gpu_decode_graphs_check [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="multi30k", help="the dataset (default: the Multi30k release mtlib ships)")
    ap.add_argument("--out", default=None, help="folder for decode_graphs_check.json (default: print only)")
    args = ap.parse_args()
    import torch
    from mtlib import data, decode_graphs, generate, tiny
    from mtlib.fastgen import merged_copy
    from mtlib.modeling import load_model

    if not torch.cuda.is_available():
        sys.exit("gpu_decode_graphs_check needs a CUDA GPU (tests/test_decode_graphs.py covers the rest on CPU)")
    pairs = data.load_pairs(args.data)
    sources = list(pairs["test"]["en"][:300])
    folder = tiny.build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", texts=list(pairs["train"]["en"][:2000]))
    model, tok = load_model(str(folder), backend="hf", load_in_4bit=False)
    device = "cuda"
    model = model.to(device, torch.bfloat16)
    result = {"card": torch.cuda.get_device_name(), "checks": {}}
    eager = generate.translate(model, tok, sources, batch_size=128, max_new_tokens=24, progress=False,
                               fast_decode=True, graphs=False)
    graphed = generate.translate(model, tok, sources, batch_size=128, max_new_tokens=24, progress=False,
                                 fast_decode=True)
    result["checks"]["greedy translations equal"] = sum(a == b for a, b in zip(eager, graphed)) / len(eager)

    runner = merged_copy(model)
    config = generate._generation_config(model, tok, do_sample=True, max_new_tokens=16, temperature=0.9, top_k=50)
    tok.padding_side = "left"

    def encode(texts):
        prompts, _ = generate.build_prompts(tok, texts)
        return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad():
        long, short = encode(sources[:64]), encode([s[:15] for s in sources[64:128]])
        for enc in (long, short):
            torch.manual_seed(0)
            want = runner.generate(**enc, generation_config=config)
            torch.manual_seed(0)
            got = decode_graphs.generate(runner, **enc, generation_config=config, keep=True)
            result["checks"][f"sampled tokens equal, prompt {enc['input_ids'].shape[1]}"] = bool(torch.equal(got, want))
        graphs = decode_graphs.installed(runner)
        result["checks"]["one recording for both prompt lengths"] = graphs.stats["recorded"] == 1
        grow = encode([" ".join([s] * 4) for s in sources[:64]])
        decode_graphs.generate(runner, **grow, generation_config=config, keep=True)
        result["checks"]["a longer prompt grows the cache"] = graphs.stats["recorded"] == 2 and len(graphs.kept) == 1
    result["stats"] = dict(graphs.stats, record_seconds=round(graphs.stats["record_seconds"], 3))
    result["graphs_enabled"] = graphs.enabled
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "decode_graphs_check.json").write_text(line + "\n")
    ok = graphs.enabled and all(v is True or v == 1.0 for v in result["checks"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
