"""GPU benchmark results (``benchmarks/gpu_benchmark.py``): the seed-vs-fast table the speed appendix shows.

The programs live in ``benchmarks/`` at the repository root and their raw results in ``benchmarks/results/``
(:data:`RESULTS_DIR`); a bare file name is looked up there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .chapter import REPO_ROOT
from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd

STAGES = ("sft", "translate", "grpo")
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"   # measured results, next to the programs that wrote them
COLUMNS = ["stage", "recipe", "batch", "throughput", "unit", "time_s", "time_for", "peak_gib", "vs_seed", "file"]


def result_path(path) -> Path:
    """``path`` itself when it exists, else that name in :data:`RESULTS_DIR`; ``DataError`` naming both if neither."""
    given = Path(path)
    if given.is_file():
        return given
    found = RESULTS_DIR / given
    if found.is_file():
        return found
    raise DataError(f"benchmark result {found} not found (nor {given} from {Path.cwd()}): pass the path of a "
                    f"results file, or the name of one in {RESULTS_DIR} (benchmarks/results/ of a clone of "
                    f"the repository; the results are not installed with mtlib)")


def load_rows(paths) -> list[dict]:
    """Measurement rows of one or more benchmark.json files, each tagged with its file name."""
    rows = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = result_path(path)
        for row in json.loads(path.read_text())["rows"]:
            rows.append({**row, "file": path.name})
    return rows


def environment(path) -> dict:
    """Card and library versions a benchmark file was measured with."""
    return json.loads(result_path(path).read_text()).get("env", {})


def speedup_table(rows):
    """One row per stage and recipe: throughput, time, peak GPU memory (GiB) and the ratio to the seed recipe.

    Where several files measured the same stage and recipe, the first file's successful row is kept.
    Time is per optimizer step for SFT and GRPO, and for all 1,000 test-2016 sentences for translation
    (scaled where the seed recipe timed fewer).
    """
    import pandas as pd
    picked = {}
    for r in rows:
        if r.get("stage") in STAGES and "error" not in r and isinstance(r.get("throughput"), (int, float)):
            picked.setdefault((r["stage"], r["recipe"]), r)
    out = []
    for (stage, recipe), r in picked.items():
        seed = picked.get((stage, "seed"))
        out.append({"stage": stage, "recipe": recipe, "batch": str(r.get("batch", "")),
                    "throughput": r["throughput"], "unit": r.get("unit", ""),
                    "time_s": r.get("seconds_1000") if stage == "translate" else r.get("seconds_per_step"),
                    "time_for": "1,000 sentences" if stage == "translate" else "one step",
                    "peak_gib": r.get("peak_gb"),  # torch.cuda.max_memory_allocated / 2**30
                    "vs_seed": round(r["throughput"] / seed["throughput"], 1) if seed and recipe != "seed" else None,
                    "file": r.get("file", "")})
    df = pd.DataFrame(out, columns=COLUMNS)
    df["stage"] = pd.Categorical(df["stage"], categories=list(STAGES), ordered=True)
    df["seed_first"] = df["recipe"] != "seed"
    return df.sort_values(["stage", "seed_first", "recipe"]).drop(columns="seed_first").reset_index(drop=True)


def markdown(table, env: dict | None = None) -> str:
    """The table as Markdown, headed by the card and library versions."""
    head = ""
    if env:
        head = (f"card: {env.get('card')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
                f"trl {env.get('trl')}, unsloth {env.get('unsloth', '-')}\n\n")
    cols = [c for c in table.columns if c != "file"]
    def fmt(v):
        if v is None or v != v:  # None or NaN
            return ""
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in table.iterrows()]
    return head + "\n".join(lines) + "\n"


GRPO_PHASES = {"generate_s": "sampling completions", "score_s": "rewards + advantages",
               "loss_forward_s": "loss forward", "backward_and_optimizer_s": "backward + optimizer"}


def grpo_phases(path) -> pd.DataFrame:
    """Seconds per GRPO step in each phase, one row per batch shape (benchmarks/gpu_grpo_breakdown.py).

    The phases add up to ``seconds_per_step``; ``completions_per_s`` is the step's throughput.
    """
    import pandas as pd
    rows = load_rows(path)
    missing = [k for k in ["shape", "seconds_per_step", *GRPO_PHASES] if rows and k not in rows[0]]
    if not rows or missing:
        raise DataError(f"{path}: not a GRPO breakdown (benchmarks/gpu_grpo_breakdown.py); missing {missing or 'rows'}")
    df = pd.DataFrame(rows).set_index("shape")
    return df[["seconds_per_step", "completions_per_s", *GRPO_PHASES]].rename(columns=GRPO_PHASES)


def multi_gpu(path):
    """One GPU against several (benchmarks/gpu_multi.py's ``multi_gpu.json``): ``(summary, rows, env)`` as two
    DataFrames and a dict, or None when the file does not exist (nothing measured yet).

    ``summary``: one line per stage and comparison, the speedup and the goal; ``rows``: each configuration's
    throughput, time and peak memory per card (GiB), or its error.
    """
    import pandas as pd
    path = Path(path) if Path(path).exists() else RESULTS_DIR / path
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    rows = [r for r in result.get("rows", []) if r.get("stage") in STAGES or "error" in r or "skipped" in r]
    cols = ["stage", "config", "processes", "backend", "batch", "throughput", "unit", "seconds",
            "peak_gib_per_card", "error", "skipped"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    table = table.dropna(axis=1, how="all")
    summary = pd.DataFrame(result.get("summary", []))
    return summary, table, result.get("env", {})
