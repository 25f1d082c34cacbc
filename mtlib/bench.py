"""GPU benchmark results (``benchmarks/gpu_*.py``): the tables and numbers the speed appendix shows.

The programs live in ``benchmarks/`` at the repository root and their raw results in ``benchmarks/results/``
(:data:`RESULTS_DIR`); a bare file name is looked up there. Raw tables (:func:`speedup_table`,
:func:`measurements`, :func:`grpo_phases`, :func:`translation_paths`, :func:`agreement`, :func:`profile_top`,
:func:`multi_gpu`) keep the files' field names for code; their reading versions (:func:`summary`,
:func:`detail`, :func:`phase_table`, :func:`path_table`, :func:`agreement_table`, :func:`profile_table`,
:func:`multi_gpu_tables`) name the columns in words and the card each number was measured on. Ratios are only
taken between rows of one file: one run on one card.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .chapter import REPO_ROOT
from .errors import DataError
from .parameters import MODEL  # the model whose shape twin the benchmarks measure

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
    return _result(path).get("env", {})


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
    try:
        result = _result(path)
    except DataError:  # nothing measured yet
        return None
    rows = [r for r in result.get("rows", []) if r.get("stage") in STAGES or "error" in r or "skipped" in r]
    cols = ["stage", "config", "processes", "backend", "batch", "throughput", "unit", "seconds",
            "peak_gib_per_card", "error", "skipped"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    table = table.dropna(axis=1, how="all")
    summary = pd.DataFrame(result.get("summary", []))
    return summary, table, result.get("env", {})


# ------------------------------------------------------------------------------ what the reader sees

STAGE_NAMES = {"sft": "SFT", "translate": "Translation", "grpo": "GRPO"}
RECIPE_NAMES = {  # (stage or None, recipe) -> the recipe in words
    (None, "seed"): "seed", (None, "fast"): "fast", ("translate", "fast"): "fast, compiled",
    (None, "fast-eager"): "fast, as in the chapters", (None, "fast-unsloth-decode"): "fast, Unsloth's decoder",
}
UNIT_NAMES = {"non-padding tokens/s": "tokens/s"}
SUMMARY_RECIPES = ("seed", "fast", "fast-eager")   # what the appendix's summary shows; the rest is in the detail


@dataclass(frozen=True)
class Goal:
    """A stage's target: ``value`` in ``unit`` that the ``measure`` (``throughput`` or ``seconds``) must reach."""
    measure: str
    value: float
    unit: str

    def met(self, throughput, seconds) -> bool | None:
        got = throughput if self.measure == "throughput" else seconds
        if not isinstance(got, (int, float)) or got != got:
            return None
        return got >= self.value if self.measure == "throughput" else got <= self.value

    def __str__(self):
        sign = "≥" if self.measure == "throughput" else "≤"
        return f"{sign} {_num(self.value)} {self.unit}"


# Set before the work began, from a first look at the original recipe and what an 80 GB card can do in principle.
GOALS = {"sft": Goal("throughput", 15_000, "tokens/s"),
         "translate": Goal("seconds", 5, "s for 1,000 sentences"),
         "grpo": Goal("throughput", 7, "completions/s")}

# Vendor datasheet figures (NVIDIA H100 SXM5 and H200 SXM: dense bf16 tensor-core TFLOP/s without sparsity,
# memory bandwidth in TB/s): the ceilings the measured work is compared with. Matched by substring of the card.
CARD_SPECS = {"H100 80GB HBM3": {"bf16_tflops": 989, "memory_tb_s": 3.35},
              "H200": {"bf16_tflops": 989, "memory_tb_s": 4.8}}


def _num(v, digits: int = 3) -> str:
    """A number as a reader reads it: thousands separated from 100 up, else ``digits`` significant digits."""
    if v is None or v != v:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _result(path) -> dict:
    return json.loads(result_path(path).read_text())


def _card_field(path) -> str:
    result = _result(path)
    return (result.get("env") or {}).get("card") or result.get("card") or ""


def card(path) -> str:
    """The card a results file was measured on (``env.card``, else a top-level ``card``), without the
    provenance note some files add in parentheses; "unknown card" when the file does not say."""
    return _card_field(path).split(" (")[0].strip() or "unknown card"


def card_note(path) -> str | None:
    """The note in parentheses after a file's card name (how the card was recorded), or None."""
    name = _card_field(path)
    return name.split(" (", 1)[1].rstrip(")") if " (" in name else None


def card_spec(name: str) -> dict | None:
    """:data:`CARD_SPECS` of a card name (by substring), or None for a card without one."""
    return next((spec for key, spec in CARD_SPECS.items() if key in name), None)


def recipe_name(stage: str, recipe: str) -> str:
    return RECIPE_NAMES.get((stage, recipe), RECIPE_NAMES.get((None, recipe), recipe))


def measurements(paths) -> pd.DataFrame:
    """:func:`speedup_table` of each file on its own (ratios to the seed recipe of the same run, never across
    files), with the file's ``card`` and each stage's goal (``goal``, ``met``). One row per file, stage, recipe."""
    import pandas as pd
    tables = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        table = speedup_table(load_rows(path))
        table["card"] = card(path)
        goals = [GOALS.get(s) for s in table.stage]
        table["goal"] = [str(g) if g else "" for g in goals]
        table["met"] = [g.met(t, s) if g else None for g, t, s in zip(goals, table.throughput, table.time_s)]
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*COLUMNS, "card", "goal", "met"])


def pick(table, stage: str, recipe: str, file: str | None = None):
    """The row of :func:`measurements` (or :func:`speedup_table`) for ``stage`` and ``recipe`` (in ``file``), or
    None when that run did not measure it."""
    hit = table[(table.stage == stage) & (table.recipe == recipe)]
    if file is not None:
        hit = hit[hit.file == Path(file).name]  # measurements keep the file's name
    return hit.iloc[0] if len(hit) else None


def _yes(v) -> str:
    return "–" if v is None or v != v else ("yes" if v else "no")


def _time(seconds, time_for) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    return f"{_num(seconds)} s {'per step' if time_for == 'one step' else 'for ' + time_for}"


def _ratio(v) -> str:
    return "–" if v is None or v != v else f"{v:g}×"


def in_words(table) -> pd.DataFrame:
    """:func:`measurements` (or :func:`speedup_table`) with the stage and recipe in words, for labels."""
    return table.assign(stage=[STAGE_NAMES.get(s, s) for s in table.stage],
                        recipe=[recipe_name(s, r) for s, r in zip(table.stage, table.recipe)])


def summary(paths, recipes=SUMMARY_RECIPES) -> pd.DataFrame:
    """The appendix's summary for readers: one row per stage and recipe of each results file (``recipes``; None:
    all), indexed by stage and recipe in words, with the throughput, the time, the speed-up over the seed recipe
    measured in the same run, the goal, whether it is met and the card, each column named in words."""
    import pandas as pd
    table = measurements(paths)
    if recipes is not None:
        table = table[table.recipe.isin(list(recipes))]
    words = in_words(table)
    out = pd.DataFrame({
        "Stage": list(words.stage), "Recipe": list(words.recipe),
        "Throughput": [f"{_num(t)} {UNIT_NAMES.get(u, u)}" for t, u in zip(table.throughput, table.unit)],
        "Time": [_time(t, f) for t, f in zip(table.time_s, table.time_for)],
        "Speed-up over seed": [_ratio(v) for v in table.vs_seed],
        "Goal": list(table.goal),
        "Goal met": [_yes(m) for m in table.met],
        "Card": list(table.card),
    })
    return out.set_index(["Stage", "Recipe"])


def detail(paths) -> pd.DataFrame:
    """Every stage and recipe of each file (:func:`measurements`) with its batch (per-device batch x
    gradient-accumulation steps; for GRPO, completions) and peak GPU memory (GiB), columns in words."""
    import pandas as pd
    table = measurements(paths)
    words = in_words(table)
    out = pd.DataFrame({
        "Stage": list(words.stage), "Recipe": list(words.recipe),
        "Batch": [b.replace("x", " × ") for b in table.batch],
        "Throughput": [f"{_num(t)} {UNIT_NAMES.get(u, u)}" for t, u in zip(table.throughput, table.unit)],
        "Time": [_time(t, f) for t, f in zip(table.time_s, table.time_for)],
        "Peak memory (GiB)": ["–" if v is None or v != v else f"{v:.1f}" for v in table.peak_gib],
        "Speed-up over seed": [_ratio(v) for v in table.vs_seed],
        "Card": list(table.card),
    })
    return out.set_index(["Stage", "Recipe"])


def model_facts(model: str = MODEL) -> dict:
    """The shape of the model the twin copies (``mtlib.tiny.KNOWN_CONFIGS``) and its parameter count (tied
    embeddings counted once): ``hidden``, ``layers``, ``heads``, ``kv_heads``, ``vocab``, ``intermediate``,
    ``parameters``, ``bf16_gb`` (the weights in bf16, 10^9 bytes)."""
    from .tiny import KNOWN_CONFIGS
    c = KNOWN_CONFIGS[model]
    h, i, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    per_layer = 2 * h * c["num_attention_heads"] * c["head_dim"] + 2 * h * kv + 3 * h * i + 2 * h
    n = layers * per_layer + v * h * (1 if c.get("tie_word_embeddings", True) else 2) + h
    return {"hidden": h, "layers": layers, "heads": c["num_attention_heads"], "kv_heads": c["num_key_value_heads"],
            "vocab": v, "intermediate": i, "parameters": n, "bf16_gb": 2 * n / 1e9}


PATH_NAMES = {"run": "Run", "process": "Process", "decoder": "Decoder", "batch": "Batch",
              "seconds_1000": "Seconds for 1,000 sentences", "peak_gb": "Peak memory (GiB)", "note": "Note"}


def translation_paths(path) -> tuple[pd.DataFrame, dict]:
    """The measured translation paths (``benchmarks/gpu_translate_paths.py``) as ``(rows, runs)``: the raw rows
    (``run``, ``process``, ``decoder``, ``batch``, ``seconds_1000``, ``peak_gb``, ``note``) and what each run was."""
    import pandas as pd
    rows = pd.DataFrame(load_rows(path))
    missing = [c for c in ("run", "process", "decoder", "batch", "seconds_1000") if c not in rows]
    if rows.empty or missing:
        raise DataError(f"{path}: not a translation-paths result (benchmarks/gpu_translate_paths.py); "
                        f"missing {missing or 'rows'}")
    return rows, _result(path).get("runs", {})


def path_seconds(rows, run: str, decoder: str, process: str | None = None, batch: int | None = None) -> float:
    """Seconds for 1,000 sentences of one measured path (``DataError`` naming it when the file lacks it)."""
    hit = rows[(rows.run == run) & (rows.decoder == decoder)]
    if process is not None:
        hit = hit[hit.process == process]
    if batch is not None:
        hit = hit[hit.batch == batch]
    if hit.empty:
        raise DataError(f"no translation path {decoder!r} in run {run}" + (f" ({process})" if process else ""))
    return float(hit.iloc[0].seconds_1000)


def breakable(text: str, longer_than: int = 24) -> str:
    """``text`` with a zero-width space after ``=``, ``:``, ``_``, ``/`` and ``,`` inside words longer than
    ``longer_than`` characters, so that a table cell holding ``PYTORCH_CUDA_ALLOC_CONF=...`` can wrap."""
    return re.sub(r"\S{%d,}" % (longer_than + 1), lambda m: re.sub(r"([=:_/,])", "\\1\u200b", m.group(0)), text)


def path_table(rows) -> pd.DataFrame:
    """Translation-path rows for reading: columns in words, no blank notes column, indexed by run; long words
    in the text columns may wrap (:func:`breakable`)."""
    cols = [c for c in PATH_NAMES if c in rows and (c != "note" or rows[c].fillna("").astype(str).str.len().any())]
    shown = rows[cols].copy()
    for c in ("decoder", "note"):
        if c in shown:
            shown[c] = [breakable(v) if isinstance(v, str) else v for v in shown[c]]
    return shown.rename(columns=PATH_NAMES).set_index(PATH_NAMES["run"])


def grpo_steps(path) -> dict:
    """A GRPO breakdown's step times in words: ``first`` (the compiling step), ``warmup`` (the other untimed
    steps), ``timed`` (the steps averaged in ``seconds_per_step``), ``outliers`` (timed steps above 1.5 x
    their median: a new sequence length, compiled again); ``shape``, ``card``. From the first row."""
    import statistics
    row = load_rows(path)[0]
    steps = row.get("step_seconds") or []
    timed = steps[len(steps) - row.get("steps_timed", len(steps)):]
    median = statistics.median(timed) if timed else None
    return {"shape": row.get("shape"), "card": card(path), "first": steps[0] if steps else None,
            "warmup": steps[1:len(steps) - len(timed)], "timed": timed, "median": median,
            "outliers": [s for s in timed if median and s > 1.5 * median],
            "regular": [s for s in timed if not median or s <= 1.5 * median]}


PHASE_NAMES = {"seconds_per_step": "Seconds per step", "completions_per_s": "Completions per second",
               "shape": "Batch × accumulation, or recipe"}


def phase_table(path) -> pd.DataFrame:
    """:func:`grpo_phases` for reading: seconds per phase, columns and index in words."""
    phases = grpo_phases(path).rename(columns=PHASE_NAMES)
    phases.columns = [c[0].upper() + c[1:] for c in phases.columns]
    from .plots import shape_name
    phases.index = [shape_name(s).removeprefix("batch ") for s in phases.index]
    return phases.rename_axis(PHASE_NAMES["shape"])


AGREEMENT_NAMES = {"recipe": "Compared", "throughput": "Same next token (positions)",
                   "median_margin": "Median lead, all positions", "median_margin_where_different":
                   "Median lead where they differ", "max_margin_where_different": "Largest lead overturned"}


def agreement(paths) -> pd.DataFrame:
    """The merged copy's teacher-forced next-token agreement with the trained model it was built from (rows
    ``what == "teacher-forced argmax agreement"``), one row per file: positions with the same argmax ("65/98"),
    and the trained model's lead of top-1 over top-2 (logits) overall and where the two differ; ``card``."""
    import pandas as pd
    out = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for r in load_rows(path):
            if r.get("what") == "teacher-forced argmax agreement":
                same, total = (int(x) for x in str(r["throughput"]).split("/"))
                out.append({"recipe": r["recipe"], "same": same, "positions": total,
                            **{k: r.get(k) for k in list(AGREEMENT_NAMES)[2:]}, "card": card(path),
                            "file": r["file"]})
    return pd.DataFrame(out)


def agreement_table(table) -> pd.DataFrame:
    """:func:`agreement` for reading."""
    shown = table.assign(throughput=[f"{s:,} of {n:,} ({s / n:.0%})" for s, n in zip(table.same, table.positions)],
                         recipe=[r.replace("vs its own model", "copy vs the trained model") for r in table.recipe],
                         **{k: [_num(v, 2) for v in table[k]] for k in list(AGREEMENT_NAMES)[2:]})
    cols = ["recipe", "throughput", *list(AGREEMENT_NAMES)[2:], "card"]
    return shown[cols].rename(columns={**AGREEMENT_NAMES, "card": "Card"}).set_index(AGREEMENT_NAMES["recipe"])


PROFILE_NAMES = {"name": "Operator or kernel", "self_cuda": "GPU time", "self_cuda_share": "Share of GPU time",
                 "calls": "Calls", "cuda_avg": "Per call", "shapes": "Input shapes"}


def profile_top(path, n: int = 5, operators: bool = True) -> pd.DataFrame:
    """The first ``n`` rows of a ``torch.profiler`` table (``key_averages(...).table()``, sorted by GPU time) as a
    DataFrame: ``name``, ``self_cuda`` (as printed), ``self_cuda_share`` (0 to 1), ``calls``, ``cuda_avg``,
    ``shapes`` (when recorded); ``operators``: only ``aten::`` operators (the kernels they launch left out)."""
    import pandas as pd
    lines = result_path(path).read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("---")]
    if len(rules) < 3:
        raise DataError(f"{path}: not a torch.profiler table")
    split = re.compile(r"\s{2,}")   # columns are two or more spaces apart; names hold single spaces
    header = split.split(lines[rules[0] + 1].strip())
    rows = []
    for line in lines[rules[1] + 1:rules[2]]:
        cells = dict(zip(header, split.split(line.strip())))
        name = cells["Name"]
        if operators and not name.startswith("aten::"):
            continue
        rows.append({"name": name, "self_cuda": cells.get("Self CUDA"),
                     "self_cuda_share": float(cells.get("Self CUDA %", "0%").rstrip("%")) / 100,
                     "calls": int(cells.get("# of Calls", 0)), "cuda_avg": cells.get("CUDA time avg"),
                     **({"shapes": cells["Input Shapes"]} if "Input Shapes" in cells else {})})
    return pd.DataFrame(rows[:n])


def profile_table(top) -> pd.DataFrame:
    """:func:`profile_top` for reading: the share as a percentage, columns in words."""
    shown = top.assign(self_cuda_share=[f"{s:.0%}" for s in top.self_cuda_share])
    return shown.rename(columns=PROFILE_NAMES).set_index(PROFILE_NAMES["name"])


MULTI_SUMMARY_NAMES = {"stage": "Stage", "comparison": "Comparison", "one_gpu_throughput": "1 GPU",
                       "several_throughput": "Several GPUs", "unit": "Unit", "speedup": "Speed-up",
                       "goal": "Goal (speed-up)", "met": "Goal met"}
MULTI_ROW_NAMES = {"stage": "Stage", "config": "Configuration", "processes": "Processes", "backend": "Backend",
                   "batch": "Batch", "throughput": "Throughput", "unit": "Unit", "seconds": "Seconds",
                   "peak_gib_per_card": "Peak memory per card (GiB)", "note": "Error or note"}


MULTI_GPU_GOALS = {"sft": 1.8, "grpo": 1.7, "translate": 1.8}  # issue 15: 2 GPUs' throughput over 1 GPU's


def multi_gpu_goals() -> dict:
    """The speed-up goals of ``benchmarks/gpu_multi.py``: several GPUs' throughput as a multiple of one GPU's."""
    return dict(MULTI_GPU_GOALS)


def multi_gpu_tables(path):
    """:func:`multi_gpu` for reading: ``(summary, rows, card)`` with columns in words (the stage in words, peak
    memory of each card joined, errors and skips in one column), or None when nothing was measured."""
    measured = multi_gpu(path)
    if measured is None:
        return None
    summary_, rows, _ = measured
    s = summary_.copy()
    if not s.empty:
        s["stage"] = [STAGE_NAMES.get(x, x) for x in s.stage]
        s["unit"] = [UNIT_NAMES.get(u, u) for u in s.unit]
        for col in ("one_gpu_throughput", "several_throughput"):
            s[col] = [_num(v) for v in s[col]]
        s["speedup"] = [_ratio(v) for v in s.speedup]
        s["goal"] = [f"≥ {v:g}×" if v == v and v is not None else "–" for v in s.goal]
        s["met"] = [_yes(m) for m in s.met]
        gpus = int(s.gpus.iloc[0]) if "gpus" in s and s.gpus.notna().any() else None
        names = {**MULTI_SUMMARY_NAMES, **({"several_throughput": f"{gpus} GPUs"} if gpus else {})}
        s = s[[c for c in MULTI_SUMMARY_NAMES if c in s]].rename(columns=names).set_index("Stage")
    r = rows.copy()
    if not r.empty:
        def text(v):
            if isinstance(v, list):
                return ", ".join(_num(x) for x in v)
            if isinstance(v, (int, float)):
                return _num(v)
            return "" if v is None or v != v else str(v)
        r["stage"] = [STAGE_NAMES.get(x, x) for x in r.stage]
        if "unit" in r:
            r["unit"] = [UNIT_NAMES.get(u, u) if isinstance(u, str) else "" for u in r.unit]
        notes = [list(r[c]) if c in r else [None] * len(r) for c in ("error", "skipped")]
        r["note"] = [breakable("; ".join(str(x) for x in vals if isinstance(x, str) and x)) for vals in zip(*notes)]
        r = r[[c for c in MULTI_ROW_NAMES if c in r]]
        r = r.astype(object).apply(lambda col: [text(v) for v in col])
        r = r.rename(columns=MULTI_ROW_NAMES).set_index("Stage")
    return s, r, card(path)


# -- the book command on a GPU (benchmarks/gpu_check.sh) -----------------------------------------------------

BOOK_GOAL_S = 360  # issue 14: every chapter of the fast book executed on one GPU, the HTML render apart
GRPO_GOAL_CPS = 50  # issue 14: GRPO completions/s at the fast shape, steady state
# Unsloth's GRPO loss settings side by side (benchmarks/gpu_grpo_settings.sh), one folder of results
GRPO_SETTINGS_RUN = "grpo_settings_h200_2026-12-01"
SETTING_NAMES = {"default": "packed row (Unsloth's default)", "packing": "packed row (Unsloth's default)",
                 "nogrouper": "packed row, no prefix grouper", "nopacking": "padded batch (mtlib's default)",
                 "nopacking-pad32": "padded batch, lengths padded to 32"}


def seed_and_fast(paths) -> dict:
    """The GRPO breakdown rows of ``paths`` (files of ``gpu_grpo_breakdown``) by recipe: ``{"seed": row, "fast": row}``,
    each row with the ``file`` it came from; a recipe missing there is missing here."""
    return {"seed" if row["shape"] == "seed" else "fast": row for row in load_rows(paths)}


BOOK_GRPO_WARMUP = 8  # the book's GRPO steps counted apart: their new batch shapes compile kernels and record graphs
RECORDS_FILE = "runs_records.tgz"  # a book run's records (no weights), as gpu_check.sh packs them


@functools.lru_cache(maxsize=8)
def _records(path: str, name: str = RECORDS_FILE) -> dict:
    """The JSON files of a book run's records (the archive ``name`` under ``path``), by name; {} without records."""
    import tarfile
    if not (Path(path) / name).is_file():
        return {}
    with tarfile.open(Path(path) / name) as tar:
        return {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers()
                if m.isfile() and m.name.endswith(".json")}


def book_grpo_steps(root: Path, build_id: str | None = None, records: str = RECORDS_FILE) -> dict | None:
    """The book's own GRPO training run (of ``build_id``, if given), from a book run's records (the archive
    ``records``): its ``steps``, the first BOOK_GRPO_WARMUP steps' ``warmup_s``, the later steps' ``seconds_per_step``
    and ``completions_per_s`` (completions per step: per-device batch x accumulation x processes); None when the
    folder has no records or they hold no such GRPO training."""
    files = _records(str(Path(root).resolve()), records)
    runs = sorted(name.rsplit("/", 1)[0] for name in files if name.endswith("/log_history.json") and "-grpo-" in name)
    runs = [run for run in runs if build_id is None or files[f"{run}/config.json"].get("build_id") == build_id]
    if not runs:
        return None
    history, config = files[f"{runs[-1]}/log_history.json"], files[f"{runs[-1]}/config.json"]
    steps = [e["step_time"] for e in history if "step_time" in e]
    if len(steps) <= BOOK_GRPO_WARMUP:
        return None
    p = config["params"]
    completions = p["per_device_train_batch_size"] * p["gradient_accumulation_steps"] * config.get("num_processes", 1)
    steady = steps[BOOK_GRPO_WARMUP:]
    seconds = sum(steady) / len(steady)
    return {"steps": len(steps), "warmup_steps": BOOK_GRPO_WARMUP, "warmup_s": sum(steps[:BOOK_GRPO_WARMUP]),
            "seconds_per_step": seconds, "completions_per_step": completions, "completions_per_s": completions / seconds}


def book_versions(root: Path) -> dict:
    """``{package: version}`` (Python's too) that a book run's chapters recorded (the env.json of its first run in
    the records); {} without records."""
    files = _records(str(Path(root).resolve()))
    envs = sorted(name for name in files if name.endswith("/env.json"))
    if not envs:
        return {}
    env = files[envs[0]]
    return {"python": env.get("python"), **env.get("packages", {})}


RENDER_FILE = "html_render.txt"  # the HTML render of a book run's chapters, timed apart (`/usr/bin/time -v`)


def book_render_seconds(root: Path) -> float | None:
    """The wall time of the HTML render timed apart for a book run (its RENDER_FILE), or None."""
    path = Path(root) / RENDER_FILE
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)",
                      path.read_text()) if path.is_file() else None
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def _results_folder(folder) -> Path:
    """``folder`` itself when it is one, else that name in :data:`RESULTS_DIR`."""
    return Path(folder) if Path(folder).is_dir() else RESULTS_DIR / folder


def _book_build(path: Path, writer: str) -> tuple[dict, dict]:
    """A book command's build.json at ``path`` and its executed chapters' states by name; ``DataError`` naming the
    script that writes such a folder (``writer``) when the file is missing."""
    if not path.is_file():
        raise DataError(f"{path} not found: name a folder of benchmarks/results/ written by benchmarks/{writer}")
    build = json.loads(path.read_text())
    return build, {name: c for name, c in build.get("chapters", {}).items() if c.get("status") == "executed"}


def _run_notes(root: Path) -> dict:
    """A results folder's run.json (card, code, commands), or {}; its ``card`` shortened to the card's name."""
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").is_file() else {}
    return {**run, "card": run.get("card", "unknown card").split(",")[0]}


def book_run(folder) -> dict:
    """One run of the book command on a GPU (a folder in :data:`RESULTS_DIR` written by ``gpu_check.sh``):
    ``chapters`` (a DataFrame: seconds per chapter, in words), ``total_s``, ``card``, ``profile``, ``commands``,
    ``grpo`` (the steady-state fast and seed GRPO rows measured beside it, if the folder holds them) and
    ``grpo_steps`` (chapter 4's own GRPO steps, :func:`book_grpo_steps`), ``render_s`` (the HTML render timed apart,
    :func:`book_render_seconds`, or None), ``versions`` (:func:`book_versions`) and ``early_kernels`` (whether its
    kernels.log shows the runner's early kernels, mtlib.book.EarlyKernel)."""
    import pandas as pd
    root = _results_folder(folder)
    build, chapters = _book_build(root / "build.json", "gpu_check.sh")
    run = _run_notes(root)
    if not chapters:
        raise DataError(f"{root / 'build.json'}: no executed chapter")
    table = pd.DataFrame({"Chapter": list(chapters), "Seconds": [round(c["seconds"], 1) for c in chapters.values()]})
    total = float(table["Seconds"].sum())
    table["Share of the build"] = [f"{100 * s / total:.0f}%" for s in table["Seconds"]]
    grpo = seed_and_fast(sorted(root.glob("grpo_seed_vs_fast*.json")))
    return {"chapters": table, "total_s": total, "card": run["card"],
            "profile": build.get("profile"), "model": build.get("model"), "commands": run.get("book_commands", []),
            "grpo": grpo, "grpo_steps": book_grpo_steps(root, build.get("build_id")),
            "render_s": book_render_seconds(root), "versions": book_versions(root),
            "early_kernels": (root / "kernels.log").is_file() and "(started early)" in (root / "kernels.log").read_text(),
            "missing": [c for c in build.get("chapters", {}) if c not in chapters]}


def then_and_now(folder) -> dict:
    """Today's book command and an earlier commit's on one machine (a folder of ``gpu_then_and_now.sh``):
    ``chapters`` (a DataFrame, one row a chapter both builds executed and a last row of their sum: each build's
    seconds and the speed-up), ``then_s``, ``now_s``, ``speedup``, ``grpo`` (each build's :func:`book_grpo_steps`, by
    ``then`` and ``now``), ``missing`` (chapters only one build executed) and, from its run.json, ``card``,
    ``then_commit``, ``then_label`` and ``now_commit``."""
    import pandas as pd
    root = _results_folder(folder)
    builds, seconds = {}, {}
    for which in ("then", "now"):
        builds[which], executed = _book_build(root / f"{which}_build.json", "gpu_then_and_now.sh")
        seconds[which] = {name: c["seconds"] for name, c in executed.items()}
    both = [name for name in seconds["now"] if name in seconds["then"]]
    if not both:
        raise DataError(f"{root}: no chapter executed by both builds")
    run = _run_notes(root)
    then, now = run.get("then_commit", "earlier code"), run.get("now_commit", "today's code")
    then_s, now_s = (sum(seconds[which][name] for name in both) for which in ("then", "now"))
    rows = [(name, seconds["then"][name], seconds["now"][name]) for name in both] + [("All of them", then_s, now_s)]
    table = pd.DataFrame(rows, columns=["Chapter", f"Then: {then} (s)", f"Now: {now} (s)"])
    table["Speed-up"] = [f"{a / b:.2f}×" for _, a, b in rows]
    return {"chapters": table.round(1).set_index("Chapter"), "then_s": then_s, "now_s": now_s,
            "speedup": then_s / now_s,
            "grpo": {which: book_grpo_steps(root, builds[which].get("build_id"), f"{which}_{RECORDS_FILE}")
                     for which in ("then", "now")},
            "missing": sorted(set(seconds["then"]) ^ set(seconds["now"])),
            "card": run["card"], "then_commit": then,
            "then_label": run.get("then_label", ""), "now_commit": now}


def grpo_settings(folder=GRPO_SETTINGS_RUN) -> tuple:
    """Unsloth's GRPO loss settings compared (``grpo_breakdown_<setting>.json`` files of one folder): a
    DataFrame, one row a setting, of seconds per step, completions/s, warm-up seconds and the update's
    phases, in words; and the card."""
    import pandas as pd
    root = _results_folder(folder)
    files = sorted(root.glob("grpo_breakdown_*.json"))
    if not files:
        raise DataError(f"no grpo_breakdown_<setting>.json in {root} (benchmarks/gpu_grpo_settings.sh writes them)")
    rows = []
    for path in files:
        for r in json.loads(path.read_text()).get("rows", []):
            rows.append({"Loss computed on": SETTING_NAMES.get(r.get("label"), r.get("label")),
                         "Seconds per step": r["seconds_per_step"], "Completions per second": r["completions_per_s"],
                         "Warm-up (s)": r.get("warmup_seconds"), "Loss forward (s)": r["loss_forward_s"],
                         "Backward + optimizer (s)": r["backward_and_optimizer_s"]})
    table = pd.DataFrame(rows).set_index("Loss computed on").sort_values("Seconds per step", ascending=False)
    return table, card(files[0])


# -- chapter 3's stages one by one (benchmarks/gpu_stage_probe.sh) -------------------------------------------

STAGE_PROBE_RUN = "stage_probe_h200_2026-12-01"


def first_pass_costs(folder=STAGE_PROBE_RUN) -> tuple:
    """What mtlib's two process-wide choices change, from one folder of ``stage_probe_<setting>.json`` files: a
    DataFrame, one row a measurement, of the seconds with the libraries' default and with mtlib's choice:
    decoding test 2018 with and without cuDNN's attention in one process (``cold-shapes``), and SFT's first and
    typical step with and without Unsloth's per-layer compilation (``default``, ``noblock``); and the card."""
    import pandas as pd
    root = _results_folder(folder)
    probes = {p.stem[len("stage_probe_"):]: json.loads(p.read_text()) for p in sorted(root.glob("stage_probe_*.json"))}
    missing = [label for label in ("cold-shapes", "default", "noblock") if label not in probes]
    if missing:
        raise DataError(f"{root} lacks stage_probe_{missing[0]}.json (benchmarks/gpu_stage_probe.sh {missing[0]})")
    decode = {name.endswith("True"): stage for name, stage in probes["cold-shapes"]["stages"].items()
              if "cudnn_sdp=" in name}
    compiled, plain = probes["default"]["stages"]["SFT train"], probes["noblock"]["stages"]["SFT train"]
    change = "Unsloth's per-layer compilation off"
    rows = [(f"Translating test 2018 ({decode[True]['n']:,} sentences), first pass", "cuDNN attention off while decoding",
             decode[True]["seconds"], decode[False]["seconds"]),
            ("SFT, first step", change, compiled["step_seconds"][0], plain["step_seconds"][0]),
            ("SFT, median step of the second half", change, compiled["steady_step"], plain["steady_step"])]
    table = pd.DataFrame(rows, columns=["Measurement", "What mtlib changes", "Library default (s)", "mtlib (s)"])
    cards = {p.get("card") for p in probes.values()}
    return table.set_index("Measurement"), ", ".join(sorted(c for c in cards if c))


# -- decode steps replayed from CUDA graphs (mtlib.decode_graphs) --------------------------------------------

DECODE_GRAPHS_RUN = "decode_graphs_h200_2026-12-02"


def decode_graph_gains(folder=DECODE_GRAPHS_RUN) -> tuple:
    """Eager against graphed decoding, from one folder of ``gpu_stage_probe.sh graphs grpo-graphs grpo-eager``: a
    DataFrame, one row a measurement, of the seconds without and with the graphs (each test set translated by one
    merged copy, eagerly first; a GRPO step of the fast shape and its sampling, one process each) and the share of
    sentences translated alike; and the card."""
    import pandas as pd
    from .plots import shape_name, test_set_name
    root = _results_folder(folder)
    need = ("stage_probe_graphs.json", "grpo_breakdown_grpo-eager.json", "grpo_breakdown_grpo-graphs.json")
    missing = [n for n in need if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root} lacks {missing[0]} (benchmarks/gpu_stage_probe.sh graphs grpo-graphs grpo-eager)")
    probe = json.loads((root / need[0]).read_text())
    stages = probe["stages"]
    rows = []
    for name, stage in stages.items():
        if name.startswith("translate ") and name.endswith(" graphs"):
            split = name[len("translate "):-len(" graphs")]
            eager = stages[f"translate {split} eager"]
            rows.append((f"Translating {test_set_name(split)}, {stage['n']:,} sentences", eager["seconds"],
                         stage["seconds"], f"{100 * stage['same_as_eager']:.1f}%"))
    eager, graphed = (json.loads((root / n).read_text())["rows"][0] for n in need[1:])
    shape = shape_name(graphed["shape"]).removeprefix("batch ")
    for key, what in (("seconds_per_step", "GRPO step"), ("generate_s", "GRPO sampling, per step")):
        rows.append((f"{what}, {shape}", eager[key], graphed[key], "(sampled)"))
    table = pd.DataFrame(rows, columns=["Measurement", "Eager (s)", "CUDA graphs (s)", "Same translations"])
    return table.set_index("Measurement"), probe.get("card", "unknown card")
