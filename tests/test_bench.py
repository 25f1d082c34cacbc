"""The GPU benchmark table: ratios to the seed recipe, first successful measurement kept, errors skipped."""
import json

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
    for name in ("h100_run6.json", "h100_translate_paths.json", "h100_grpo_breakdown.json"):  # the appendix reads
        assert (bench.RESULTS_DIR / name).is_file() and load_rows(name)
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
    assert [p.stem for p in programs] == ["gpu_benchmark", "gpu_grpo_breakdown", "gpu_multi", "gpu_translate_paths"]
    for program in programs:
        tree = ast.parse(program.read_text())
        touched = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
                   and isinstance(n.value, ast.Name) and n.value.id == "sys"]
        assert not touched, f"{program.name} edits sys.path (lines {touched}); it imports the installed mtlib"
        assert f"python -m benchmarks.{program.stem}" in program.read_text()   # the documented command
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{program.stem}", "--help"],
                              cwd=chapter.REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--data" in proc.stdout, proc.stderr
