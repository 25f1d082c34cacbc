"""The GPU benchmark table: ratios to the seed recipe, first successful measurement kept, errors skipped."""
import json

import pytest

from mtlib.bench import load_rows, markdown, speedup_table


def _write(path, rows):
    path.write_text(json.dumps({"rows": rows, "env": {}}))
    return path


def test_speedup_table_ratios_and_selection(tmp_path):
    a = _write(tmp_path / "a.json", [
        {"stage": "setup", "recipe": "-", "seconds": 9},
        {"stage": "sft", "recipe": "seed", "batch": "4x4", "throughput": 800, "seconds_per_step": 2.0, "peak_gb": 3},
        {"stage": "sft", "recipe": "fast", "error": "OutOfMemoryError(...)"},
        {"stage": "translate", "recipe": "seed", "batch": "8", "throughput": 2.0, "seconds_1000": 500.0},
        {"stage": "translate", "recipe": "fast", "batch": "512", "throughput": 25.0, "seconds_1000": 40.0},
    ])
    b = _write(tmp_path / "b.json", [
        {"stage": "sft", "recipe": "fast", "batch": "128x1", "throughput": 24000, "seconds_per_step": 0.6},
        {"stage": "translate", "recipe": "fast", "batch": "512", "throughput": 99.0, "seconds_1000": 10.0},
        {"stage": "translate", "recipe": "fast vs seed", "throughput": "10/32"},
    ])
    table = speedup_table(load_rows([a, b]))
    assert list(zip(table.stage, table.recipe)) == [("sft", "seed"), ("sft", "fast"),
                                                    ("translate", "seed"), ("translate", "fast")]
    fast_sft = table[(table.stage == "sft") & (table.recipe == "fast")].iloc[0]
    assert fast_sft.vs_seed == 30.0 and fast_sft.file == "b.json"       # the OOM row of a.json is skipped
    fast_tr = table[(table.stage == "translate") & (table.recipe == "fast")].iloc[0]
    assert fast_tr.throughput == 25.0 and fast_tr.time_s == 40.0         # the first file's row wins
    text = markdown(table, {"card": "H100"})
    assert text.startswith("card: H100") and "| sft | fast | 128x1 | 24000 |" in text


def test_translation_paths_are_in_benchmarks_results_and_plot():
    import pandas as pd
    import pytest
    from mtlib.errors import DataError
    from mtlib.plots import path_times

    paths = pd.DataFrame(load_rows("h100_translate_paths.json"))
    assert set(paths.stage) == {"translate-path"} and paths.seconds_1000.gt(0).all()
    assert {"with Unsloth", "without Unsloth"} == set(paths.process)
    fig = path_times(paths, target=5)
    ax = fig.axes[0]
    assert len(ax.patches) == len(paths)                                   # one bar per path
    assert [line.get_xdata()[0] for line in ax.lines] == [5]               # the target line
    assert len({bar.get_facecolor() for bar in ax.patches}) == 2           # coloured by process
    with pytest.raises(DataError):
        path_times(paths.iloc[:0])


def test_grpo_breakdown_is_in_benchmarks_results_adds_up_and_plots(tmp_path):
    import pytest
    from mtlib.bench import grpo_phases
    from mtlib.errors import DataError
    from mtlib.plots import step_phases

    phases = grpo_phases("h100_grpo_breakdown.json")
    parts = phases.drop(columns=["seconds_per_step", "completions_per_s"])
    assert list(parts.columns) == ["sampling completions", "rewards + advantages", "loss forward",
                                   "backward + optimizer"]
    assert (parts.sum(axis=1) - phases.seconds_per_step).abs().max() < 0.05   # the phases add up to the step
    fig = step_phases(phases)
    assert len(fig.axes[0].patches) == parts.size                              # one segment per phase and shape
    bad = _write(tmp_path / "bad.json", [{"stage": "sft", "recipe": "fast", "throughput": 1}])
    with pytest.raises(DataError, match="not a GRPO breakdown"):
        grpo_phases(bad)
    with pytest.raises(DataError):
        step_phases(phases.iloc[:0])


def test_results_live_next_to_the_programs_and_a_missing_one_is_named(tmp_path):
    import pytest
    from mtlib import bench, chapter
    from mtlib.errors import DataError

    assert bench.RESULTS_DIR == chapter.REPO_ROOT / "benchmarks" / "results"
    from mtlib.parameters import defaults
    appendix = defaults("06_gpu_speed")
    for name in [*appendix["benchmark_files"], appendix["paths_file"], appendix["grpo_file"],
                 "h100_grpo_breakdown.json"]:  # what the appendix reads, and the breakdown the tests use
        assert (bench.RESULTS_DIR / name).is_file() and load_rows(name)
    assert (bench.RESULTS_DIR / appendix["book_run"] / "build.json").is_file()
    assert bench.environment("h100_run6.json")["card"]
    assert not list((chapter.REPO_ROOT / "mtlib").rglob("*.json")), "results are not package data"
    explicit = _write(tmp_path / "elsewhere.json", [{"stage": "sft", "recipe": "seed", "throughput": 1}])
    assert load_rows(str(explicit))[0]["file"] == "elsewhere.json"                 # a path is taken as given
    with pytest.raises(DataError, match=r"benchmarks/results/h100_run0\.json"):
        load_rows(["h100_run6.json", "h100_run0.json"])
    with pytest.raises(DataError, match="h100_run0.json"):
        bench.environment("h100_run0.json")


def test_benchmark_programs_run_as_modules_without_editing_sys_path():
    import ast
    import subprocess
    import sys
    from mtlib import chapter

    programs = sorted((chapter.REPO_ROOT / "benchmarks").glob("gpu_*.py"))
    assert [p.stem for p in programs] == ["gpu_benchmark", "gpu_decode_graphs_check", "gpu_grpo_breakdown", "gpu_multi",
                                            "gpu_stage_probe", "gpu_translate_paths"]
    for program in programs:
        tree = ast.parse(program.read_text())
        touched = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
                   and isinstance(n.value, ast.Name) and n.value.id == "sys"]
        assert not touched, f"{program.name} edits sys.path (lines {touched}); it imports the installed mtlib"
        assert f"python -m benchmarks.{program.stem}" in program.read_text()   # the documented command
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{program.stem}", "--help"],
                              cwd=chapter.REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--data" in proc.stdout, proc.stderr


def _run(path, card, rows, **extra):
    path.write_text(json.dumps({"rows": rows, "env": {"card": card, "torch": "2.x"}, **extra}))
    return path


RUN_ROWS = [
    {"stage": "setup", "recipe": "-", "seconds": 9},
    {"stage": "sft", "recipe": "seed", "batch": "4x4", "throughput": 1000, "unit": "non-padding tokens/s",
     "seconds_per_step": 1.5, "peak_gb": 3.3},
    {"stage": "sft", "recipe": "fast", "batch": "128x1", "throughput": 20000, "unit": "non-padding tokens/s",
     "seconds_per_step": 0.6, "peak_gb": 57.2},
    {"stage": "translate", "recipe": "seed", "batch": "8", "throughput": 2.5, "unit": "sentences/s",
     "seconds_1000": 400.0, "sentences": 32},
    {"stage": "translate", "recipe": "fast", "batch": "1000", "throughput": 200.0, "unit": "sentences/s",
     "seconds_1000": 4.9},
    {"stage": "translate", "recipe": "fast-eager", "batch": "1000", "throughput": 120.0, "unit": "sentences/s",
     "seconds_1000": 8.2},
    {"stage": "translate", "recipe": "fast-unsloth-decode", "batch": "512", "throughput": 50.0,
     "unit": "sentences/s", "seconds_1000": 20.0},
    {"stage": "grpo", "recipe": "seed", "batch": "2x2", "throughput": 2.0, "unit": "completions/s",
     "seconds_per_step": 2.0},
    {"stage": "grpo", "recipe": "fast", "batch": "32x4", "throughput": 6.0, "unit": "completions/s",
     "seconds_per_step": 21.0},
]


def test_summary_leads_with_stage_recipe_time_goal_and_card_in_words(tmp_path):
    """One row per stage and recipe of each file, ratios within a file only, the goal judged, the card named."""
    from mtlib import bench

    h100 = _run(tmp_path / "h100.json", "NVIDIA H100 80GB HBM3", RUN_ROWS)
    other = [dict(r, throughput=r["throughput"] * 2) if r.get("recipe") == "seed" else r for r in RUN_ROWS]
    h200 = _run(tmp_path / "h200.json", "NVIDIA H200 (per the device reply)", other)
    table = bench.summary([h100, h200])
    assert list(table.index.names) == ["Stage", "Recipe"]
    assert list(table.columns) == ["Throughput", "Time", "Speed-up over seed", "Goal", "Goal met", "Card"]
    names = [*table.columns, *table.index.names]
    assert not [n for n in names if "_" in n or n != n.strip()], names          # words, not field names
    assert len(table) == 2 * 7                                # seed, fast, fast-eager of each stage, per file
    assert "fast, Unsloth's decoder" not in table.index.get_level_values("Recipe")   # detail, not summary
    assert set(table.Card) == {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}              # the provenance note is cut

    h100_rows, h200_rows = table[table.Card.str.contains("H100")], table[table.Card.str.contains("H200")]
    assert h100_rows.loc[("SFT", "fast"), "Speed-up over seed"] == "20×"             # its own seed row ...
    assert h200_rows.loc[("SFT", "fast"), "Speed-up over seed"] == "10×"             # ... not the other file's
    assert h100_rows.loc[("SFT", "fast"), "Throughput"] == "20,000 tokens/s"
    assert h100_rows.loc[("SFT", "seed"), "Speed-up over seed"] == "–"
    assert h100_rows.loc[("SFT", "fast"), "Goal"] == "≥ 15,000 tokens/s"
    assert list(h100_rows["Goal met"]) == ["no", "yes", "no", "yes", "no", "no", "no"]  # GRPO fast: 6 < 7
    assert h100_rows.loc[("Translation", "fast, compiled"), "Time"] == "4.9 s for 1,000 sentences"
    assert h100_rows.loc[("Translation", "fast, as in the chapters"), "Goal met"] == "no"
    assert h100_rows.loc[("GRPO", "fast"), "Time"] == "21 s per step"
    assert bench.card(h200) == "NVIDIA H200" and bench.card_note(h200) == "per the device reply"

    everything = bench.summary([h100], recipes=None)
    assert ("Translation", "fast, Unsloth's decoder") in everything.index
    raw = bench.measurements([h100, h200])
    fast = bench.pick(raw, "sft", "fast", "h200.json")
    assert fast.vs_seed == 10.0 and fast.met and fast.card == "NVIDIA H200"
    assert bench.pick(raw, "sft", "no such recipe") is None
    detail = bench.detail([h100])
    assert "Peak memory (GiB)" in detail.columns and detail.loc[("SFT", "fast"), "Batch"] == "128 × 1"
    assert detail.loc[("SFT", "fast"), "Peak memory (GiB)"] == "57.2"


def test_summary_of_the_kept_results_names_the_card_and_meets_the_goals_it_claims():
    from mtlib import bench
    from mtlib.chapter import REPO_ROOT

    table = bench.summary(["h100_run6.json"])
    assert set(table.Card) == {bench.environment("h100_run6.json")["card"]}
    met = table["Goal met"]
    assert met[("SFT", "fast")] == "yes" and met[("GRPO", "fast")] == "yes"
    assert met[("Translation", "fast, compiled")] == "yes"
    source = (REPO_ROOT / "notebooks" / "06_gpu_speed.py").read_text()
    assert "bench.summary(" in source and source.index("## Summary") < source.index("### Where translation time")


def test_goals_cards_and_the_model_facts():
    from mtlib import bench

    assert bench.GOALS["translate"].met(None, 4.9) and not bench.GOALS["translate"].met(None, 8.2)
    assert bench.GOALS["sft"].met(15_000, None) and bench.GOALS["grpo"].met(None, None) is None
    assert str(bench.GOALS["grpo"]) == "≥ 7 completions/s"
    assert bench.card_spec("NVIDIA H100 80GB HBM3")["bf16_tflops"] > 0 and bench.card_spec("a CPU") is None
    facts = bench.model_facts()
    assert (facts["hidden"], facts["layers"], facts["vocab"]) == (3072, 28, 128256)
    assert 3.2e9 < facts["parameters"] < 3.25e9                                   # Llama 3.2 3B, tied embeddings


def test_translation_paths_profiles_steps_and_agreement_read_as_words():
    import pytest
    from mtlib import bench
    from mtlib.errors import DataError

    rows, runs = bench.translation_paths("h100_translate_paths.json")
    assert set(rows.run) <= set(runs) and bench.path_seconds(rows, "B", "merged copy, sdpa") > 0
    with pytest.raises(DataError, match="no translation path"):
        bench.path_seconds(rows, "B", "a decoder never measured")
    shown = bench.path_table(rows[rows.run == "A"])
    assert shown.index.name == "Run" and "Seconds for 1,000 sentences" in shown.columns
    assert "Note" not in shown.columns                                   # run A's notes are all blank

    top = bench.profile_top("profile_translate_h100_shapes_unsloth-4bit.txt", n=3)
    assert list(top.name) == ["aten::bmm", "aten::bmm", "aten::mm"]        # operators only, kernels left out
    assert top.shapes[0] == "[[500, 1, 3072], [500, 3072, 128256]]" and top.calls[0] == 8
    assert 0.39 < top.self_cuda_share[0] < 0.41
    kernels = bench.profile_top("profile_translate_h100_eager.txt", n=2, operators=False)
    assert kernels.name[1].startswith("nvjet") and "shapes" not in kernels
    assert list(bench.profile_table(top).columns) == ["GPU time", "Share of GPU time", "Calls", "Per call",
                                                      "Input shapes"]

    steps = bench.grpo_steps("h100_grpo_breakdown.json")
    assert steps["first"] > steps["median"] and len(steps["timed"]) == 5 and steps["outliers"]
    assert len(steps["regular"]) + len(steps["outliers"]) == len(steps["timed"])
    phases = bench.phase_table("h100_grpo_breakdown.json")
    assert phases.index.name == "Batch × accumulation, or recipe" and "Seconds per step" in phases.columns
    both = bench.phase_table("gpu_check_h200_2026-12-01_run2/grpo_seed_vs_fast_h200.json")
    assert list(both.index) == ["32 × 4", "seed recipe"]
    from mtlib import plots
    labels = [t.get_text() for t in plots.step_phases(bench.grpo_phases(
        "gpu_check_h200_2026-12-01_run2/grpo_seed_vs_fast_h200.json")).axes[0].get_yticklabels()]
    assert labels == ["batch 32 × 4", "seed recipe"]

    agree = bench.agreement(["h100_run6.json"])
    assert (agree.same[0], agree.positions[0]) == (65, 98) and agree.card[0] == "NVIDIA H100 80GB HBM3"
    table = bench.agreement_table(agree)
    assert table.iloc[0]["Same next token (positions)"] == "65 of 98 (66%)"


def test_several_gpus_absent_is_none_and_present_reads_as_words(tmp_path):
    import importlib.util
    from mtlib import bench
    from mtlib.chapter import REPO_ROOT

    assert bench.multi_gpu_tables(tmp_path / "multi_gpu.json") is None
    spec = importlib.util.spec_from_file_location("gpu_multi", REPO_ROOT / "benchmarks" / "gpu_multi.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    assert bench.multi_gpu_goals() == program.GOALS                 # read from the program that declares them

    rows = [{"stage": "sft", "config": "1gpu", "processes": 1, "backend": "unsloth", "batch": "128x1 per card",
             "throughput": 20000, "unit": "non-padding tokens/s", "seconds": 5.0, "peak_gib_per_card": [57.2]},
            {"stage": "sft", "config": "2gpu", "processes": 2, "backend": "unsloth", "batch": "64x1 per card",
             "throughput": 37000, "unit": "non-padding tokens/s", "seconds": 2.7, "peak_gib_per_card": [30.1, 30.4]},
            {"stage": "grpo", "config": "2gpu-hf", "processes": 2, "backend": "hf", "error": "OutOfMemoryError: x"}]
    summary = [{"stage": "sft", "comparison": "book path", "one_gpu": "1gpu", "several": "2gpu", "gpus": 2,
                "one_gpu_throughput": 20000, "several_throughput": 37000, "unit": "non-padding tokens/s",
                "speedup": 1.85, "goal": 1.8, "met": True}]
    path = tmp_path / "multi_gpu.json"
    path.write_text(json.dumps({"rows": rows, "summary": summary, "env": {"card": "NVIDIA H200"}}))
    s, r, card = bench.multi_gpu_tables(path)
    assert card == "NVIDIA H200"
    assert list(s.columns) == ["Comparison", "1 GPU", "2 GPUs", "Unit", "Speed-up", "Goal (speed-up)", "Goal met"]
    assert s.iloc[0]["Speed-up"] == "1.85×" and s.iloc[0]["Goal met"] == "yes" and s.index[0] == "SFT"
    assert not [c for c in [*s.columns, *r.columns, r.index.name] if "_" in c]
    assert r.iloc[1]["Peak memory per card (GiB)"] == "30.1, 30.4"
    assert r.iloc[2]["Error or note"].startswith("OutOfMemoryError")


def test_the_book_run_on_a_gpu_ships_with_its_chapters_card_and_grpo_rows(tmp_path):
    from mtlib import bench
    from mtlib.errors import DataError

    for folder in ("gpu_check_h200_2026-12-01_run2", "gpu_check_h200_2026-12-01_run3",
                   "gpu_check_h200_2026-12-02_run4",
                   "gpu_check_h200_2026-12-02_run5", "gpu_check_h200_2026-12-02_run6",
                   "gpu_check_h200_2026-12-02_run7", "gpu_check_h200_2026-12-02_run8",
                   "gpu_check_h200_2026-12-02_run9", "gpu_check_h200_2026-12-02_run10"):
        run = bench.book_run(folder)
        build = json.loads((bench.RESULTS_DIR / folder / "build.json").read_text())
        assert list(run["chapters"]["Chapter"]) == list(build["chapters"])
        assert run["total_s"] == pytest.approx(sum(c["seconds"] for c in build["chapters"].values()), abs=0.5)
        assert run["card"].startswith("NVIDIA H200") and not run["missing"]
    assert set(run["grpo"]) == set()  # run3 to run10 measured no GRPO rows beside them: the appendix takes grpo_file's
    steps = run["grpo_steps"]  # chapter 4's own GRPO run, from the records: 60 steps of 32 prompts x 4
    assert steps["steps"] == 60 and steps["completions_per_step"] == 128 and steps["warmup_steps"] == 8
    assert steps["completions_per_s"] == pytest.approx(128 / steps["seconds_per_step"])
    assert steps["seconds_per_step"] < steps["warmup_s"] / 8, "the first steps compile: slower than the later ones"
    assert bench.book_run("gpu_check_h200_2026-12-01_run2")["grpo_steps"]["completions_per_s"] < \
        steps["completions_per_s"], "run2 was before the decode graphs"
    assert bench.book_grpo_steps(tmp_path) is None
    assert run["versions"]["unsloth"] == "2026.10.9" and run["versions"]["trl"] == "1.14.2"  # from the records
    assert bench.book_versions(tmp_path) == {}
    assert run["early_kernels"] and not bench.book_run("gpu_check_h200_2026-12-02_run7")["early_kernels"]
    assert bench.book_grpo_steps(bench.RESULTS_DIR / "gpu_check_h200_2026-12-02_run10", build_id="another") is None
    assert run["render_s"] == pytest.approx(2.97)  # run10's html_render.txt: "0:02.97"
    (tmp_path / bench.RENDER_FILE).write_text("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n")
    assert bench.book_render_seconds(tmp_path) == pytest.approx(3723.5)
    assert bench.book_run("gpu_check_h200_2026-12-02_run7")["render_s"] is None
    pair = bench.book_run("gpu_check_h200_2026-12-01_run2")["grpo"]
    assert set(pair) == {"fast", "seed"} and pair["fast"]["completions_per_s"] > pair["seed"]["completions_per_s"]
    assert bench.seed_and_fast("gpu_check_h200_2026-12-01_run2/grpo_seed_vs_fast_h200.json") == pair
    from mtlib.parameters import SCHEMA
    today = bench.seed_and_fast(SCHEMA["grpo_file"].default_for("06_gpu_speed"))  # the appendix's: both recipes in one process
    assert today["fast"]["completions_per_s"] >= bench.GRPO_GOAL_CPS > today["seed"]["completions_per_s"]
    assert today["fast"]["steps_timed"] == today["seed"]["steps_timed"] == 12
    with pytest.raises(DataError, match="build.json"):
        bench.book_run(tmp_path)


def test_then_and_now_compares_the_chapters_both_builds_executed_on_one_machine(tmp_path):
    import shutil
    from mtlib import bench
    from mtlib.errors import DataError
    from mtlib.parameters import SCHEMA

    folder = SCHEMA["then_and_now_run"].default_for("06_gpu_speed")  # what the appendix reads
    pair = bench.then_and_now(folder)
    root = bench.RESULTS_DIR / folder
    then, now = ({n: c["seconds"] for n, c in json.loads((root / f"{w}_build.json").read_text())["chapters"].items()}
                 for w in ("then", "now"))
    assert set(then) == set(now) and not pair["missing"] and len(then) == 6
    table = pair["chapters"]
    assert list(table.index) == [*now, "All of them"] and pair["then_commit"] == "c4ac724"
    assert pair["then_s"] == pytest.approx(sum(then.values())) and pair["now_s"] == pytest.approx(sum(now.values()))
    assert table.iloc[-1]["Speed-up"] == f"{sum(then.values()) / sum(now.values()):.2f}×"
    assert table.loc["04_grpo", "Speed-up"] == f"{then['04_grpo'] / now['04_grpo']:.2f}×"
    assert pair["card"] == "NVIDIA H200 (143771 MiB)"
    grpo = pair["grpo"]  # from each build's own records archive, not the other's
    assert grpo["then"]["steps"] == grpo["now"]["steps"] == 60
    assert grpo["then"]["completions_per_s"] < grpo["now"]["completions_per_s"]
    # a folder with only chapters 1-3 of the earlier code: the sum covers those, the rest is named
    partial = bench.then_and_now("then_and_now_h200_2026-12-02/second_machine")
    assert partial["missing"] == ["04_grpo", "05_results", "06_gpu_speed"] and partial["grpo"]["then"] is None
    assert list(partial["chapters"].index) == ["01_data", "02_metrics", "03_sft", "All of them"]
    with pytest.raises(DataError, match="then_build.json not found.*gpu_then_and_now.sh"):
        bench.then_and_now(tmp_path)
    shutil.copy(root / "then_build.json", tmp_path)
    (tmp_path / "now_build.json").write_text(json.dumps({"chapters": {"07_other": {"status": "executed", "seconds": 1}}}))
    with pytest.raises(DataError, match="no chapter executed by both"):
        bench.then_and_now(tmp_path)


def test_the_readmes_per_chapter_tables_are_the_committed_builds_seconds():
    """Each row of the README's per-chapter tables (runN, then, now) reads the build.json it names."""
    import re
    from mtlib import bench, chapter
    from mtlib.parameters import SCHEMA

    readme = (chapter.REPO_ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (run\d+|then|now) \(([^)]*)\) \| (.*) \|$", readme, flags=re.M)
    assert {name for name, _, _ in rows} >= {"run10", "then", "now"}
    for name, _, cells in rows:
        if name in ("then", "now"):
            path = bench.RESULTS_DIR / SCHEMA["then_and_now_run"].default_for("06_gpu_speed") / f"{name}_build.json"
        else:
            path = next(bench.RESULTS_DIR.glob(f"gpu_check_h200_*_{name}")) / "build.json"
        seconds = [c["seconds"] for c in json.loads(path.read_text())["chapters"].values()]
        assert [float(c) for c in cells.split(" | ")] == pytest.approx([*seconds, sum(seconds)], abs=0.051), name


def test_the_grpo_settings_compared_are_read_from_their_files_slowest_first(tmp_path):
    from mtlib import bench
    from mtlib.errors import DataError

    table, card = bench.grpo_settings()
    rows = {}
    for path in (bench.RESULTS_DIR / bench.GRPO_SETTINGS_RUN).glob("grpo_breakdown_*.json"):
        row = json.loads(path.read_text())["rows"][0]
        rows[bench.SETTING_NAMES[row["label"]]] = row
    assert set(table.index) == set(rows) and len(rows) >= 2 and card == "NVIDIA H200"
    assert list(table["Seconds per step"]) == sorted((r["seconds_per_step"] for r in rows.values()), reverse=True)
    for name, row in rows.items():
        assert table.loc[name, "Completions per second"] == row["completions_per_s"]
    with pytest.raises(DataError, match="gpu_grpo_settings.sh"):
        bench.grpo_settings(tmp_path)


def test_the_stage_probe_times_each_test_set_and_sft_step_on_the_tiny_model(tmp_path):
    import subprocess
    import sys
    from mtlib import chapter

    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_stage_probe", "--out", str(tmp_path), "--label", "t",
                           "--tiny", "--train-size", "64", "--sft-steps", "2", "--passes", "2"],
                          cwd=chapter.REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "stage_probe_t.json").read_text())
    stages = result["stages"]
    passes = [name for name in stages if name.startswith("translate pass")]
    assert len(passes) == 8 and all(stages[name]["n"] == 8 for name in passes)  # 2 passes x 4 test sets
    assert stages["SFT train"]["steps"] == 2 and len(stages["SFT train"]["step_seconds"]) == 2
    assert result["card"] == "cpu" and result["total_seconds"] > 0


def test_first_pass_costs_are_read_from_the_stage_probe_files(tmp_path):
    from mtlib import bench
    from mtlib.errors import DataError

    table, card = bench.first_pass_costs()
    root = bench.RESULTS_DIR / bench.STAGE_PROBE_RUN
    cold = json.loads((root / "stage_probe_cold-shapes.json").read_text())["stages"]
    compiled = json.loads((root / "stage_probe_default.json").read_text())["stages"]["SFT train"]
    decode, first, typical = table.index
    assert table.loc[decode, "Library default (s)"] == cold["translate test_2018_flickr cudnn_sdp=True"]["seconds"]
    assert table.loc[decode, "mtlib (s)"] == cold["translate test_2018_flickr cudnn_sdp=False"]["seconds"]
    assert table.loc[first, "Library default (s)"] == compiled["step_seconds"][0]
    assert table.loc[typical, "Library default (s)"] == compiled["steady_step"]
    assert table.loc[decode, "mtlib (s)"] < table.loc[decode, "Library default (s)"] and card == "NVIDIA H200"
    (tmp_path / "stage_probe_default.json").write_text("{}")
    with pytest.raises(DataError, match="stage_probe_cold-shapes.json"):
        bench.first_pass_costs(tmp_path)


def _stage_probe(out, label, mode):
    """``benchmarks.gpu_stage_probe`` on the tiny model in ``mode`` (no SFT steps), as a subprocess."""
    import subprocess
    import sys
    from mtlib import chapter
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_stage_probe", "--out", str(out), "--label", label,
                           "--tiny", mode, "--sft-steps", "0"],
                          cwd=chapter.REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_the_stage_probe_cold_shapes_mode_writes_its_profile_and_both_decodings(tmp_path):
    proc = _stage_probe(tmp_path, "c", "--cold-shapes")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads((tmp_path / "stage_probe_c.json").read_text())["stages"]
    assert {"translate test_2018_flickr cudnn_sdp=False", "translate test_2018_flickr cudnn_sdp=True"} <= set(stages)
    assert "aten::" in (tmp_path / "cold_shape_profile_c.txt").read_text()


def test_decode_graph_gains_are_read_from_the_probe_files(tmp_path):
    from mtlib import bench
    from mtlib.errors import DataError

    table, card = bench.decode_graph_gains()
    root = bench.RESULTS_DIR / bench.DECODE_GRAPHS_RUN
    stages = json.loads((root / "stage_probe_graphs.json").read_text())["stages"]
    eager = json.loads((root / "grpo_breakdown_grpo-eager.json").read_text())["rows"][0]
    graphed = json.loads((root / "grpo_breakdown_grpo-graphs.json").read_text())["rows"][0]
    first = table.iloc[0]
    assert (first["Eager (s)"], first["CUDA graphs (s)"]) == (stages["translate test eager"]["seconds"],
                                                               stages["translate test graphs"]["seconds"])
    assert first["Same translations"] == f"{100 * stages['translate test graphs']['same_as_eager']:.1f}%"
    step = table.loc[table.index.str.startswith("GRPO step")].iloc[0]
    assert (step["Eager (s)"], step["CUDA graphs (s)"]) == (eager["seconds_per_step"], graphed["seconds_per_step"])
    assert len(table) == 6 and card == "NVIDIA H200" and not eager["decode_graphs"] and graphed["decode_graphs"]
    (tmp_path / "stage_probe_graphs.json").write_text("{}")
    with pytest.raises(DataError, match="grpo_breakdown_grpo-eager.json"):
        bench.decode_graph_gains(tmp_path)


def test_the_stage_probe_graphs_mode_compares_eager_and_graphed_translations(tmp_path):
    proc = _stage_probe(tmp_path, "g", "--graphs")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads((tmp_path / "stage_probe_g.json").read_text())["stages"]
    for split in ("test", "test_2018_flickr"):
        assert stages[f"translate {split} graphs"]["same_as_eager"] == 1.0  # on CPU both decode eagerly
        assert f"translate {split} eager again" in stages
