"""What the chapters call: parameter checks and the header, data and model resolution, run lookups, score tables.

A chapter cell reads like prose: ``params = chapter.header("03_sft", globals())``, then a call or two into
``mtlib`` and a table or a plot. The runner that executes the chapters is :mod:`mtlib.book`.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from . import profiles
from .errors import ConfigError, MtlibError
from .project import REPO_ROOT, colab_link  # noqa: F401  (chapters and tests use them from here)

TINY_MODEL = "tiny"
TWIN_PREFIX = "twin:"  # model: twin:<hub id> builds that model's shape with random weights

# Without ipywidgets tqdm.auto falls back to text bars and says so on stderr in every chapter.
warnings.filterwarnings("ignore", message="IProgress not found")


MODEL_FREE_CHAPTERS = ("01_data", "02_metrics", "06_gpu_speed")  # their numbers are real even in a smoke build


def is_smoke(params: dict) -> bool:
    """Whether the chapter runs on the tiny random model (its numbers then mean nothing)."""
    return params.get("model") == TINY_MODEL


def is_twin(params: dict) -> bool:
    """Whether the chapter runs on a shape twin (``twin:<hub id>``: the real shape, random weights), as the
    gpu-check profile does: its timings are real, its scores and translations mean nothing."""
    return str(params.get("model") or "").startswith(TWIN_PREFIX)


def chapter_params(chapter: str, namespace: dict) -> dict:
    """Collect and check a chapter's parameters from its namespace (``globals()``) against the schema."""
    names = profiles.chapter_names(chapter)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise ConfigError(f"chapter {chapter}: parameters cell lacks {', '.join(missing)}")
    return profiles.check_parameters({n: namespace[n] for n in names}, chapter, f"chapter {chapter}")


_BOX = ('<div class="admonition {kind}" style="border-left:6px solid {color};background:{bg};'
        'padding:0.6em 1em;margin:0.5em 0"><p class="admonition-title" style="font-weight:bold;margin:0">'
        '{title}</p><p style="margin:0.3em 0 0">{text}</p></div>')


def box(title: str, text: str, kind: str = "note"):
    """A coloured admonition box (``kind`` "note" or "warning") for a notebook output."""
    from IPython.display import HTML
    color, bg = ("#e0a800", "#fff8e1") if kind == "warning" else ("#2f6fb0", "#eef4fb")
    return HTML(_BOX.format(kind=kind, color=color, bg=bg, title=title, text=text))


def notice(params: dict, chapter: str | None = None):
    """A warning box when the chapter runs on the tiny random model (smoke profile); None otherwise.

    A chapter without a model (data, metrics) built with the smoke profile gets a note that its numbers
    are real, so that the reader knows which pages to trust.
    """
    if is_smoke(params):
        return box("Smoke build: the numbers in this chapter mean nothing",
                   "This chapter ran with the <code>smoke</code> profile: a tiny, randomly initialised model, a few "
                   "hundred sentence pairs and a handful of training steps, so that the whole book builds on a CPU in "
                   "minutes. Every score, curve and translation below is noise. Run the <code>seed</code> or "
                   "<code>fast</code> profile on a GPU, or open the chapter in Colab, for real results.", kind="warning")
    if is_twin(params):
        return box("Shape twin: the scores in this chapter mean nothing",
                   "This chapter ran on a shape twin of the model (<code>twin:</code>): its exact architecture with "
                   "random weights, built on the spot so that the GPU path runs offline without a download. Its "
                   "times and memory are those of the real model; its scores, curves and translations are noise.",
                   kind="warning")
    if params.get("profile") == "smoke" and chapter in MODEL_FREE_CHAPTERS:
        return box("Smoke build", "The book was built with the <code>smoke</code> profile, whose models are tiny "
                   "and random. This chapter uses no model of this build: its numbers are real.", kind="note")
    return None


def _figure_png(fig, dpi: int = 110):
    """A Figure as the notebook's PNG, with its alt text and caption in the output's metadata (the book runner
    turns them into the page's ``<img alt>`` and figure caption)."""
    from IPython.core.pylabtools import print_figure
    from . import plots
    data = print_figure(fig, fmt="png", bbox_inches="tight", dpi=dpi, base64=True)
    if data is None:  # a figure with nothing drawn shows nothing
        return None
    return data, {"alt": plots.alt_text(fig), "caption": plots.caption_of(fig)}


def show_figures(dpi: int = 110) -> None:
    """Make a bare matplotlib ``Figure`` (as mtlib's plotting functions return) render as PNG in the notebook,
    its alt text and caption (:func:`mtlib.plots.alt_text`, :func:`mtlib.plots.caption_of`) in the output's
    metadata; pyplot figures get them too, written from their titles and axis labels."""
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        import functools
        set_matplotlib_formats("png", dpi=dpi, bbox_inches="tight")
        shell.display_formatter.formatters["image/png"].for_type(Figure, functools.partial(_figure_png, dpi=dpi))


# -- paths as a reader sees them ---------------------------------------------------------------------------

BUILD_MARK = "<build>"  # how a path inside the book's build folder is shown


def build_folder(params: dict) -> Path | None:
    """The folder the book runner builds into, when the chapter runs in one: the runs folder's parent holds
    the ``build.json`` of the chapter's ``build_id``. None otherwise (Colab, Jupyter)."""
    import json
    runs_root, build_id = params.get("runs_root"), params.get("build_id")
    if not runs_root or not build_id:
        return None
    folder = Path(runs_root).expanduser().resolve().parent
    try:
        record = json.loads((folder / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if isinstance(record, dict) and record.get("build_id") == build_id else None


def shown_path(path, build: str | os.PathLike | None = None) -> str:
    """A path as a page shows it, never naming the machine it was built on: inside the build folder
    ``<build>/runs``; inside the working folder relative to it (``runs``); inside the home folder ``~/...``;
    else as it is. A relative path stays as it is."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(path)
    p = p.resolve()
    for base, prefix in ((build, BUILD_MARK + "/"), (Path.cwd(), ""), (Path.home(), "~/")):
        if base is None:
            continue
        try:
            rel = p.relative_to(Path(base).resolve())
        except ValueError:
            continue
        return (prefix + rel.as_posix()).rstrip("/") if rel.parts else (prefix.rstrip("/") or ".")
    return str(p)


def _shown_value(value, build) -> str:
    """A parameter's value as its cell would write it (``2e-4``, ``"tiny"``), paths as :func:`shown_path`."""
    from .parameters import literal
    if isinstance(value, str) and value and Path(value).expanduser().is_absolute():
        value = shown_path(value, build)
    return literal(value)


def show_params(params: dict):
    """The parameters a chapter ran with, as a small table (with the schema's explanation of each). Paths are
    shown relative to the build or working folder (:func:`shown_path`)."""
    import pandas as pd
    build = build_folder(params)
    rows = [{"parameter": k, "value": _shown_value(v, build), "meaning": profiles.SCHEMA[k].help}
            for k, v in params.items()]
    return pd.DataFrame(rows).set_index("parameter")


class Collapsed:
    """A block shown folded in the book and in Jupyter (an HTML ``<details>``): its summary line, then the
    content when opened. As text (a terminal), the summary and the content."""

    def __init__(self, summary: str, html: str, text: str = "", classes: str = ""):
        self.summary, self.html, self.text, self.classes = summary, html, text, classes

    def _repr_html_(self) -> str:
        from html import escape
        return (f'<details class="mtlib-collapsed {self.classes}"><summary>{escape(self.summary)}</summary>'
                f'{self.html}</details>')

    def __repr__(self) -> str:
        return f"{self.summary}\n{self.text}" if self.text else self.summary


def parameter_block(params: dict, chapter: str | None = None) -> Collapsed:
    """The chapter's parameters as one folded table: the summary line counts them and names the profile; each
    row gives the name, the value (and the default when the run changed it) and its meaning."""
    from html import escape
    from . import parameters
    build = build_folder(params)
    defaults = parameters.defaults(chapter) if chapter in parameters.CHAPTERS else {}
    rows, changed = [], 0
    for name, value in params.items():
        shown = escape(_shown_value(value, build))
        if name in defaults and value != defaults[name] and name not in ("profile", "runs_root", "build_id"):
            changed += 1
            shown = f"<strong>{shown}</strong> (default <code>{escape(_shown_value(defaults[name], build))}</code>)"
        else:
            shown = f"<code>{shown}</code>"
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td>{shown}</td>"
                    f"<td>{escape(profiles.SCHEMA[name].help)}</td></tr>")
    profile = params.get("profile")
    summary = (f"Parameters of this chapter: {len(params)}"
               + (f", {changed} set by the profile {profile}" if profile and changed else
                  f", profile {profile}" if profile else "") + " (click to show)")
    note = (f"<p><small>{escape(BUILD_MARK)} is the folder the book was built into "
            f"(<code>python -m mtlib.book --out</code>).</small></p>" if build is not None else "")
    html = ('<table class="dataframe mtlib-params"><thead><tr><th>parameter</th><th>value</th><th>meaning</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>{note}')
    return Collapsed(summary, html, show_params(params).to_string(), classes="mtlib-params")


def header(chapter: str, namespace: dict) -> dict:
    """Check the parameters, then display the smoke notice (if any) and the parameter table, folded; returns
    them.

    A ``runs_root`` of None becomes the folder :func:`runs_folder` picks, in ``namespace`` too."""
    import pandas as pd
    from IPython.display import display
    params = chapter_params(chapter, namespace)
    if "runs_root" in params:
        params["runs_root"] = namespace["runs_root"] = runs_folder(params["runs_root"])
    if "num_gpus" in params:  # more GPUs than the machine has: fail here, before any model loads
        num_gpus(params)
    show_figures()
    pd.set_option("display.max_colwidth", 200)  # translations and explanations in full, not cut at 50
    box = notice(params, chapter)
    if box is not None:
        display(box)
    display(parameter_block(params, chapter))
    return params


def chapter_pairs(params: dict):
    """The training split and every test set of the chapter's dataset, cut to ``train_size``/``test_size``.

    Returns ``(pairs, test_split_names)``; the sample is seeded with the chapter's ``seed``.
    """
    from . import data
    pairs = data.load_pairs(params["dataset"], src_lang=params["src_lang"], tgt_lang=params["tgt_lang"],
                            revision=params.get("dataset_revision"))
    data.require_splits(pairs, ("train", "test"))  # DataError naming the source, not KeyError: 'test' later
    splits = test_splits(pairs)
    sizes = {"train": params.get("train_size"), **{s: params.get("test_size") for s in splits}}
    sizes = {s: n for s, n in sizes.items() if n is not None}
    return data.subset(pairs, sizes or None, seed=params.get("seed")), splits


DRIVE_DIR = Path("/content/drive/MyDrive")  # where Colab mounts Google Drive


def runs_folder(runs_root: str | os.PathLike | None) -> str:
    """The folder for run records: ``runs_root`` when given; else a folder on Google Drive when Drive is mounted
    (Colab: runs then outlive the runtime, so chapter 4 finds chapter 3's adapter), else ``runs`` here."""
    if runs_root is not None:
        return str(Path(runs_root).expanduser().resolve())
    if DRIVE_DIR.is_dir():
        from .project import repository_name
        return str(DRIVE_DIR / repository_name() / "runs")
    return str(Path("runs").resolve())


def tiny_model_dir(runs_root: str | os.PathLike) -> Path:
    """Where the smoke build keeps its tiny model: next to the runs folder, shared by the chapters."""
    return Path(runs_root).resolve().parent / "tiny-model"


def resolve_model(model: str, runs_root: str | os.PathLike, texts=None) -> str:
    """The model to load: ``"tiny"`` builds (once) a tiny random model next to ``runs_root`` from ``texts``;
    ``"twin:<hub id>"`` builds (once) that model's shape twin there (no download); an existing relative path
    becomes absolute; a Hub id is kept.

    The tiny model is written aside and renamed into place when whole; a folder left half-written fails
    :func:`mtlib.tiny.is_complete` and is built again.
    """
    if model.startswith(TWIN_PREFIX):
        from . import tiny
        name = model[len(TWIN_PREFIX):]
        out = Path(runs_root).resolve().parent / ("twin-" + name.replace("/", "--"))
        if not tiny.is_current_twin(out, name):
            tiny.build_shape_twin(out, model=name, texts=texts)
        return str(out)
    if model != TINY_MODEL:
        return str(Path(model).resolve()) if Path(model).exists() else model
    from . import tiny
    out = tiny_model_dir(runs_root)
    if not tiny.is_complete(out):
        if out.exists():
            warnings.warn(f"the tiny model in {out} is incomplete (an interrupted save?): building it again",
                          stacklevel=2)
        tiny.build_tiny_model(out, texts=texts)
    return str(out)


def train_sft_first(params: dict, pairs, model_path: str):
    """Chapter 4 opened alone: train the SFT stage here (the seed recipe for ``sft_steps`` steps, with the
    chapter's LoRA settings) so GRPO starts from a policy that translates; returns the new run's row."""
    from . import modeling
    base, tokenizer = modeling.load_model(model_path, max_seq_length=params["max_seq_length"],
                                          load_in_4bit=params["load_in_4bit"], revision=params.get("model_revision"))
    lora = modeling.add_lora(base, r=params["lora_r"], alpha=params["lora_alpha"], dropout=params["lora_dropout"],
                             seed=params["seed"], gradient_checkpointing=params["gradient_checkpointing"])
    from . import parameters
    sft = sft_params({**parameters.defaults("03_sft"), "num_steps": params["sft_steps"], "seed": params["seed"],
                      "max_seq_length": params["max_seq_length"], "logging_steps": params["logging_steps"]})
    run_sft(lora, tokenizer, pairs["train"], sft, params, config=run_config(params, trained_by="04_grpo"))
    del base, lora
    return latest_run(params["runs_root"], "sft", params.get("build_id"))


def latest_run(runs_root: str | os.PathLike, stage: str, build_id: str | None = None):
    """The newest finished *training* run of ``stage`` (one that saved an adapter) under ``runs_root``, or None.

    ``build_id``: only a run of that build (the runner passes its own, so that a chapter never continues
    another build's adapter). Returns the run's row of :func:`mtlib.results.load_runs` (``path``, ``run_id``,
    ``started`` ...).
    """
    from . import results
    runs = results.load_runs(runs_root, include_unscored=True, build_id=build_id)
    runs = runs[(runs["stage"] == stage)
                & runs["path"].map(lambda p: (Path(p) / "adapter" / "adapter_config.json").exists())]
    if len(runs) == 0:
        return None
    return runs.sort_values(["started", "run_id"]).iloc[-1]


def sft_params(params: dict):
    """The chapter's parameters as :class:`mtlib.train.SFTParams` (short names mapped to the trainer's fields as
    :mod:`mtlib.parameters` declares them: ``num_steps`` -> ``max_steps`` ...)."""
    from . import parameters, train
    return train.params_from_dict(train.SFTParams, parameters.trainer_values(params, "sft"))


def grpo_params(params: dict):
    """The chapter's parameters as :class:`mtlib.train.GRPOParams`."""
    from . import parameters, train
    return train.params_from_dict(train.GRPOParams, parameters.trainer_values(params, "grpo"))


def params_table(dataclass_obj):
    """A training-parameter dataclass as a one-column table."""
    import dataclasses
    import pandas as pd
    return pd.DataFrame({"value": {k: repr(v) for k, v in dataclasses.asdict(dataclass_obj).items()}})


def log_history(trained) -> list:
    """The training log (list of dicts per logged step) of a TrainedModel returned by run_sft/run_grpo."""
    from .results import read_json
    history = read_json(Path(trained.run_dir) / "log_history.json") if trained.run_dir else None
    if not history and "trainer" in trained.extra:
        history = trained.extra["trainer"].state.log_history
    if not history:
        raise MtlibError(f"no training log for the {trained.stage} run {trained.run_dir}")
    return history


SCORE_COLUMNS = ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL"]


def test_splits(pairs) -> list[str]:
    """The test sets a DatasetDict holds: ``test`` first, then the later ones (``test_2017_flickr`` ...)."""
    return sorted((s for s in pairs if s.startswith("test")), key=lambda s: (s != "test", s))


RECORDED = ("profile", "build_id", "dataset", "dataset_revision", "model", "model_revision")


def run_config(params: dict, **extra) -> dict:
    """What a run record keeps of the chapter's parameters: the profile and build it came from, the data and model
    with their pinned revisions (the resolved local path of a built model is recorded by the run itself)."""
    return {**{f"chapter_{k}" if k == "model" else k: params.get(k) for k in RECORDED if k in params}, **extra}


def evaluate_splits(trained, pairs, params: dict, name: str) -> dict:
    """Translate and score every test set of ``pairs`` with ``trained`` (one run record each); {split: Evaluation}.

    With ``num_gpus`` > 1 each test set is split across that many processes (:func:`mtlib.parallel.evaluate_splits`).
    """
    from . import generate
    n = num_gpus(params)
    config = run_config(params, num_processes=n)
    if n > 1:
        from . import parallel
        return parallel.evaluate_splits(
            trained, {split: pairs[split] for split in test_splits(pairs)}, num_processes=n,
            runs_root=params["runs_root"], name=name, src_lang=params["src_lang"], tgt_lang=params["tgt_lang"],
            batch_size=params["eval_batch_size"], max_new_tokens=params["max_new_tokens"], config=config,
            max_seq_length=params["max_seq_length"], load_in_4bit=params["load_in_4bit"],
            fast_decode=params.get("fast_decode", False))
    out = {}
    fast = params.get("fast_decode", False)
    with generate.decoding_model(trained.model) if fast else contextlib.nullcontext() as runner:  # one copy, every test set
        for split in test_splits(pairs):
            out[split] = generate.evaluate(
                trained, pairs[split], src_lang=params["src_lang"], tgt_lang=params["tgt_lang"], name=name,
                runs_root=params["runs_root"], batch_size=params["eval_batch_size"],
                max_new_tokens=params["max_new_tokens"], split_name=split, config=config, fast_decode=fast,
                decoder=runner)
    return out


def no_runs_notice(runs_root, build_id=None):
    """What chapter 5 shows when ``runs_root`` holds no finished run: where it looked and what to run first."""
    where = f"{runs_root}" + (f" for build {build_id}" if build_id else "")
    return box("No runs to compare yet", f"No finished run was found in {where}. Run chapter 3 (SFT) and chapter 4 "
               f"(GRPO) first with the same runs_root; on Colab, mount Google Drive in each chapter so the runs "
               f"outlive the runtime (runs_root None then uses it). The tables below stay empty until then.",
               kind="warning")


def stale_grpo_notice(runs_root, build_id: str | None = None):
    """A warning box when the newest GRPO run continued an SFT adapter that is no longer the newest SFT run (chapter 3
    executed again after chapter 4, e.g. ``--only 03_sft``): chapter 5 would compare the new SFT run with GRPO
    trained from the superseded one. It names both runs and the fix; None when the runs agree (or GRPO started
    from the base model, or a stage has no training run)."""
    from .results import read_json
    grpo, sft = latest_run(runs_root, "grpo", build_id), latest_run(runs_root, "sft", build_id)
    if grpo is None or sft is None:
        return None
    try:
        started_from = (read_json(Path(grpo["path"]) / "config.json") or {}).get("from_sft_run")
    except MtlibError:  # a damaged record: load_runs has already warned about it
        return None
    if not started_from or started_from == sft["run_id"]:
        return None
    return box("GRPO was trained from an earlier SFT run",
               f"The newest GRPO run, <code>{grpo['run_id']}</code>, continued the adapter of SFT run "
               f"<code>{started_from}</code>, but the newest SFT run{' of this build' if build_id else ''} is "
               f"<code>{sft['run_id']}</code> (chapter 3 was executed again after chapter 4). The SFT and GRPO "
               f"rows below therefore come from two different SFT trainings, and GRPO's gain over SFT is not "
               f"measured. Execute chapter 4 again, then this chapter: "
               f"<code>python -m mtlib.book --only 04_grpo,05_results</code> with the same <code>--profile</code> "
               f"and <code>--out</code> (opened alone: run chapter 4, then chapter 5).", kind="warning")


# -- several GPUs -----------------------------------------------------------------------------------------

def num_gpus(params: dict) -> int:
    """The chapter's ``num_gpus`` as a number of processes (``"auto"``: every visible GPU); 1 when absent."""
    from . import parallel
    return parallel.resolve_num_gpus(params.get("num_gpus", 1))


def _train_launch_args(params: dict) -> dict:
    return dict(max_seq_length=params["max_seq_length"], load_in_4bit=params["load_in_4bit"],
                gradient_checkpointing=params.get("gradient_checkpointing"))


def _run_training(stage, model, tokenizer, train_split, train_params, params: dict, config: dict | None):
    from . import parallel, train
    n = num_gpus(params)
    common = dict(runs_root=params["runs_root"], src_lang=params["src_lang"], tgt_lang=params["tgt_lang"],
                  config={**(config or {}), "num_processes": n})
    if n == 1:
        return getattr(train, f"run_{stage}")(model, tokenizer, train_split, train_params, **common)
    return getattr(parallel, f"run_{stage}")(model, tokenizer, train_split, train_params, num_processes=n, **common,
                                             **_train_launch_args(params))


def run_sft(model, tokenizer, train_split, train_params, params: dict, config: dict | None = None):
    """:func:`mtlib.train.run_sft` in this process (``num_gpus`` 1), or on ``num_gpus`` data-parallel processes
    (:func:`mtlib.parallel.run_sft`); either way the same run record, adapter and returned TrainedModel."""
    return _run_training("sft", model, tokenizer, train_split, train_params, params, config)


def run_grpo(start, tokenizer, train_split, train_params, params: dict, config: dict | None = None):
    """:func:`mtlib.train.run_grpo` in this process (``num_gpus`` 1), or on ``num_gpus`` data-parallel processes
    (:func:`mtlib.parallel.run_grpo`, on the plain backend: see :data:`mtlib.parallel.MULTI_PROCESS_BACKEND`)."""
    return _run_training("grpo", start, tokenizer, train_split, train_params, params, config)


def batch_table(train_params, params: dict, stage: str):
    """How many GPUs train, the effective batch of one optimizer step and the learning rate, as a table."""
    import pandas as pd
    from . import parallel
    n = num_gpus(params)
    s = parallel.batch_summary(stage, train_params, n)
    unit = "completions" if stage == "grpo" else "examples"
    rows = {"GPUs (processes)": n,
            "per-GPU batch x accumulation": f"{s['per_device_batch_size']} x {s['grad_accum']}",
            f"effective batch ({unit} per optimizer step)": s["effective_batch_size"],
            "learning rate": s["lr"], "optimizer steps": s["num_steps"]}
    if stage == "grpo":
        rows["prompts per step"] = s["prompts_per_step"]
    else:
        rows["examples seen"] = s["examples_seen"]
    if n > 1:
        backend = parallel.choose_backend(stage, n)
        rows["backend of the training processes"] = backend
        rows["why"] = parallel.backend_note(stage, backend, n)
    return pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}})


def random_model(runs) -> str | None:
    """The model with random weights behind ``load_runs``' table (the tiny model, or a shape twin), or None:
    its scores mean nothing. Its value suits :func:`notice` (``{"model": ...}``)."""
    models = runs["model"].astype(str)
    if (models.eq(TINY_MODEL) | models.str.contains("tiny-model", regex=False)).any():
        return TINY_MODEL
    twins = models[models.str.startswith(TWIN_PREFIX) | models.str.contains("/twin-", regex=False)]
    return None if twins.empty else (twins.iloc[0] if twins.iloc[0].startswith(TWIN_PREFIX) else TWIN_PREFIX)


def runs_are_smoke(runs) -> bool:
    """Whether any run in ``load_runs``' table used a model with random weights (tiny or a shape twin)."""
    return random_model(runs) is not None


def newest_evaluations(runs):
    """The newest finished evaluation run of each stage and test set (``load_runs``' table, indexed by both)."""
    return runs.sort_values(["started", "run_id"]).groupby(["stage", "split"]).tail(1).set_index(["stage", "split"])


def stored_side_by_side(runs, split: str = "test", n: int = 5, stages=("base", "sft", "grpo")):
    """Like :func:`side_by_side`, from the translations stored in the runs folder; None if none."""
    from . import results
    newest = newest_evaluations(runs)
    table = None
    for stage in stages:
        if (stage, split) in newest.index:
            t = results.read_translations(newest.loc[(stage, split), "path"]).head(n)
            if table is None:
                table = t[["source"]].copy()
                reference = t["reference"].values
            elif list(t["source"]) != list(table["source"]):
                raise MtlibError(f"stored_side_by_side: the {stage} run translated different {split} sentences")
            table[stage] = t["hypothesis"].values
    if table is not None:
        table["reference"] = reference
    return table


SIGNIFICANCE_COLUMNS = ["comparison", "test set", "metric", "score before", "score after", "delta", "95% CI", "p",
                        "Holm-adjusted p", "verdict"]


def significance(runs, n_bootstrap: int = 1000, pairs=(("base", "sft"), ("base", "grpo"), ("sft", "grpo")),
                 metrics_=("bleu", "chrf", "ter"), seed: int | None = 12345, alpha: float = 0.05):
    """Paired bootstrap tests between the newest evaluations of two stages on each test set (same sentences
    only), as ``sacrebleu --paired-bs`` computes them (:func:`mtlib.metrics.paired_bootstrap`, two-sided).

    ``runs`` is :func:`mtlib.results.load_runs`'s table. One row per comparison ("sft vs base": ``sft`` is
    the system, ``base`` the baseline), test set and metric, with the columns of ``SIGNIFICANCE_COLUMNS``:
    both scores, ``delta`` = after - before, its 95% bootstrap interval, the p-value, the p-value after
    Holm's correction over *every* row of the table (the whole family of comparisons), and the verdict at
    level ``alpha`` from the Holm-adjusted p: ``better``, ``worse`` (TER: lower is better) or ``no
    significant difference``. ``table.attrs["signatures"]`` holds the SacreBLEU signatures (with ``bs`` and
    ``seed``); :func:`show_scores` shows them under the table.
    """
    import pandas as pd
    from . import metrics, results
    newest = newest_evaluations(runs)
    rows = []
    for a, b in pairs:
        for split in sorted({s for (_, s) in newest.index}, key=lambda s: (s != "test", s)):
            if (a, split) not in newest.index or (b, split) not in newest.index:
                continue
            ta = results.read_translations(newest.loc[(a, split), "path"])
            tb = results.read_translations(newest.loc[(b, split), "path"])
            if list(ta["source"]) != list(tb["source"]):
                continue  # different sentences: not a paired comparison
            for metric in metrics_:
                test = metrics.paired_bootstrap(list(ta["reference"]), list(ta["hypothesis"]),
                                                list(tb["hypothesis"]), metric=metric, n_samples=n_bootstrap,
                                                seed=seed, progress=False)
                rows.append({"comparison": f"{b} vs {a}", "test set": split, "metric": metrics.METRIC_NAMES[metric],
                             "score before": test["score_a"], "score after": test["score_b"], "delta": test["delta"],
                             "95% CI": f"[{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]", "p": test["p_value"],
                             "_metric": metric})
    table = pd.DataFrame(rows, columns=[*SIGNIFICANCE_COLUMNS[:8], "_metric"])
    table["Holm-adjusted p"] = metrics.holm(table["p"].to_numpy(dtype=float))
    table["verdict"] = [metrics.verdict(d, p, m, alpha) for d, p, m in
                        zip(table["delta"], table["Holm-adjusted p"], table["_metric"])]
    table = table[SIGNIFICANCE_COLUMNS]
    table.attrs["signatures"] = metrics.signatures(metrics_, n_bootstrap, seed)
    return table


def significance_display(table, digits: int = 2):
    """:func:`significance`'s table as a reader sees it: indexed by comparison, test set and metric, the two
    scores in one column ("7.58 -> 8.15"), the delta with its sign, the interval as "-0.25 to +1.57", p-values
    to four decimals (the smallest is 1 / (N + 1)), the verdict."""
    out = table.set_index(["comparison", "test set", "metric"])
    view = out[[]].copy()
    nb = "\u00a0"  # no-break spaces: the interval stays on one line; the scores may break after the arrow
    view["scores"] = [f"{a:.{digits}f}{nb}→ {b:.{digits}f}" for a, b in zip(out["score before"], out["score after"])]
    view["delta"] = [f"{d:+.{digits}f}" for d in out["delta"]]
    view["95% CI"] = [ci.strip("[]").replace(", ", f"{nb}to{nb}") for ci in out["95% CI"]]
    view["p"] = out["p"].round(4)
    view["Holm-adjusted p"] = out["Holm-adjusted p"].round(4)
    view["verdict"] = out["verdict"]
    view.attrs = dict(table.attrs)
    return _test_set_names(view, "test set")


def _test_set_names(table, level: str):
    """The test sets of an index level by their names in words (``test_2017_mscoco`` -> "2017 MSCOCO")."""
    from .plots import test_set_name
    if level not in (table.index.names or []):
        return table
    return table.rename(index=test_set_name, level=level)


def show_significance(table, digits: int = 2):
    """Display :func:`significance_display`'s view one comparison at a time (a table fits the page), then the
    SacreBLEU signatures of the tests (metric settings, ``bs`` and ``seed``)."""
    from IPython.display import Markdown, display
    view = significance_display(table, digits)
    for comparison in dict.fromkeys(view.index.get_level_values("comparison")):
        system, baseline = comparison.split(" vs ")
        display(Markdown(f"**{comparison}**: {system} against the baseline {baseline}"))
        display(view.xs(comparison, level="comparison"))
    sigs = table.attrs.get("signatures") or {}
    if sigs:
        display(Markdown("<small>SacreBLEU signatures: " + "; ".join(f"{k} `{v}`" for k, v in sigs.items())
                         + ".</small>"))


DISPLAY_NAMES = {
    # score tables
    "bleu": "BLEU", "chrf": "chrF", "ter": "TER", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum", "bp": "brevity penalty", "sys_len": "output length (tokens)",
    "ref_len": "reference length (tokens)",
    # data.corpus_stats
    "lang": "language", "tokens": "words (tokens)", "types": "distinct words (types)", "ttr": "type-token ratio",
    "hapax_share": "share seen once", "mean_word_len": "characters per word", "mean_words": "words per sentence",
    "max_words": "longest sentence (words)",
}
SCORE_NAMES = {"split": "test set"}  # in a score table a split is always a test set


def _readable_label(label, names: dict):
    from .plots import test_set_name
    if not isinstance(label, str):
        return label
    if label in names:
        return names[label]
    return test_set_name(label) if label.startswith("test_") else label


def readable(table, names: dict | None = None):
    """A copy of ``table`` for display, its column and index names in words (``DISPLAY_NAMES``, then
    ``names``): ``ttr`` -> "type-token ratio", ``bleu`` -> "BLEU"; test sets by their names ("2017 Flickr"),
    as columns and as the values of a ``split`` index level. The values and the table passed in are
    unchanged, so code keeps using the raw names; only what the reader sees changes."""
    names = {**DISPLAY_NAMES, **(names or {})}
    split_levels = [n for n in table.index.names if n in ("split", "test set")]
    out = table.rename(columns=lambda c: _readable_label(c, names))
    for level in split_levels:
        out = _test_set_names(out, level)
    out.columns = out.columns.set_names([names.get(n, n) for n in out.columns.names])
    out.index = out.index.set_names([names.get(n, n) for n in out.index.names])
    return out


def _readable_frame_class():
    """:class:`ReadableFrame`, made on first use (pandas is imported lazily)."""
    global ReadableFrame
    if isinstance(ReadableFrame, type):
        return ReadableFrame
    import pandas as pd

    class _ReadableFrame(pd.DataFrame):
        """A DataFrame that code reads by its raw column names (``run_id``, ``peak_mem_gb``) and a reader sees
        by readable ones (:func:`readable` with ``display_names``): in a notebook, in the book and as text.
        Operations such as ``.round(2)`` keep it readable."""
        _metadata = ["display_names"]

        @property
        def _constructor(self):
            return _ReadableFrame

        def _shown(self):
            return readable(pd.DataFrame(self), getattr(self, "display_names", None))

        def _repr_html_(self):
            return self._shown()._repr_html_()

        def __repr__(self):
            return repr(self._shown())

    _ReadableFrame.__name__ = _ReadableFrame.__qualname__ = "ReadableFrame"  # pickled as mtlib.chapter.ReadableFrame
    ReadableFrame = _ReadableFrame
    return ReadableFrame


ReadableFrame = None  # the class, once _readable_frame_class() made it


def shown_readably(table, names: dict | None = None):
    """``table`` as a :class:`ReadableFrame`: the same data and raw names for code, readable names on display."""
    out = _readable_frame_class()(table)
    out.display_names = dict(names or {})
    return out


ROUGE_NOTE = "ROUGE: mean per-sentence F1 x 100 of `rouge_score`, Unicode tokenizer, no stemming."


def signature_caption(n_bootstrap: int | None = None, seed: int | None = 12345, metrics_=("bleu", "chrf", "ter"),
                      rouge: bool = False):
    """The line shown under a score table: the SacreBLEU signature of each metric (with the paired bootstrap's
    ``bs`` and ``seed`` when ``n_bootstrap`` is given), and how ROUGE was computed when ``rouge``."""
    from IPython.display import Markdown
    from . import metrics
    sigs = metrics.signatures(metrics_, n_bootstrap, seed)
    text = "SacreBLEU signatures: " + "; ".join(f"{name} `{sig}`" for name, sig in sigs.items()) + "."
    return Markdown(f"<small>{text}{' ' + ROUGE_NOTE if rouge else ''}</small>")


def show_scores(table, digits: int = 2, n_bootstrap: int | None = None, seed: int | None = 12345):
    """Display a score table (or :func:`significance`'s) with readable column names, rounded, and the
    SacreBLEU signatures under it. The signatures are the table's own (``attrs["signatures"]``) if it has
    them. ``None`` (no scores yet) shows a line saying so."""
    from IPython.display import Markdown, display
    if table is None or len(table) == 0:
        display(Markdown("No scores yet."))
        return
    shown = readable(table, SCORE_NAMES)  # test sets in words too
    p_cols = [c for c in ("p", "Holm-adjusted p") if c in shown.columns]
    # p-values keep four decimals: the smallest, 1 / (N + 1), is about 0.001 for 1,000 resamples
    display(shown.round({**{c: digits for c in shown.columns}, **dict.fromkeys(p_cols, 4)}) if p_cols
            else shown.round(digits))
    names = {str(c) for c in table.columns.get_level_values(0)}
    sigs = table.attrs.get("signatures")
    if sigs:
        display(Markdown("<small>SacreBLEU signatures: " + "; ".join(f"{k} `{v}`" for k, v in sigs.items())
                         + ".</small>"))
    else:
        metrics_ = [m for m in ("bleu", "chrf", "ter") if m in names] or ["bleu", "chrf", "ter"]
        display(signature_caption(n_bootstrap, seed, metrics_, rouge=any(n.startswith("rouge") for n in names)))


def scores_frame(systems: dict, columns=SCORE_COLUMNS):
    """Scores as a table, one row per system and test set: ``systems`` is {system: {split: Evaluation}}."""
    import pandas as pd
    rows = [{"system": system, "split": split, **{c: ev.metrics.get(c) for c in columns}}
            for system, evals in systems.items() for split, ev in evals.items()]
    return pd.DataFrame(rows).set_index(["system", "split"])


def latest_scores(runs_root, stages=("base", "sft", "grpo"), columns=SCORE_COLUMNS, build_id: str | None = None):
    """The newest finished evaluation of each stage and test set under ``runs_root`` (of build ``build_id``
    when given), as a scores table."""
    from . import results
    runs = results.load_runs(runs_root, build_id=build_id)
    runs = runs[runs["stage"].isin(stages) & runs["split"].notna()]
    if len(runs) == 0:
        return None
    newest = runs.sort_values(["started", "run_id"]).groupby(["stage", "split"], sort=False).tail(1)
    newest = newest.assign(system=newest["stage"], order=newest["stage"].map({s: i for i, s in enumerate(stages)}))
    newest = newest.sort_values(["order", "split"]).set_index(["system", "split"])
    return newest[list(columns)]


COST_NAMES = {"run_id": "run", "kind": "what ran", "seconds": "seconds", "peak_mem_gb": "peak memory (GB)",
              "runs": "runs"}


def run_costs(runs_root, build_id: str | None = None):
    """Seconds and peak memory of the runs behind the book's tables: the newest training run of each stage and
    the newest evaluation of each stage and test set (a chapter executed again within a build replaces its
    earlier runs, which are not counted). Returns ``(per_run, per_stage, superseded)``: ``per_run`` indexed by
    stage and kind ("training", "evaluation: 2017 Flickr"), columns ``run_id``, ``seconds``, ``peak_mem_gb``;
    ``per_stage`` columns ``runs``, ``seconds``, ``peak_mem_gb``. Both show their columns in words ("run",
    "peak memory (GB)"; :func:`shown_readably`)."""
    import pandas as pd
    from . import results
    from .plots import test_set_name
    runs = results.load_runs(runs_root, include_unscored=True, build_id=build_id)
    scored = runs["split"].map(lambda s: not (s is None or pd.isna(s)))
    runs = runs.assign(kind=[f"evaluation: {test_set_name(s)}" if ok else "training"
                             for s, ok in zip(runs["split"], scored)],
                       kind_order=[(1, s != "test", str(s)) if ok else (0, False, "") for s, ok in zip(runs["split"], scored)])
    newest = runs.sort_values(["started", "run_id"]).groupby(["stage", "kind"], sort=False).tail(1)
    superseded = runs["run_id"].nunique() - newest["run_id"].nunique()
    order = {stage: i for i, stage in enumerate(("base", "sft", "grpo"))}
    newest = newest.assign(order=[(order.get(s, len(order)), k) for s, k in zip(newest["stage"], newest["kind_order"])])
    per_run = newest.sort_values("order")[["stage", "kind", "run_id", "seconds", "peak_mem_gb"]]
    per_stage = per_run.groupby("stage", sort=False).agg(runs=("run_id", "size"), seconds=("seconds", "sum"),
                                                         peak_mem_gb=("peak_mem_gb", "max"))
    return (shown_readably(per_run.set_index(["stage", "kind"]), COST_NAMES), shown_readably(per_stage, COST_NAMES),
            superseded)


def side_by_side(evaluations: dict, n: int = 5):
    """The first ``n`` test sentences: source, each system's translation ({system: Evaluation}), reference."""
    import pandas as pd
    first = next(iter(evaluations.values())).translations
    table = pd.DataFrame({"source": first["source"].head(n)})
    for system, ev in evaluations.items():
        if list(ev.translations["source"].head(n)) != list(table["source"]):
            raise MtlibError(f"side_by_side: {system} translated different sentences")
        table[system] = ev.translations["hypothesis"].head(n).values
    table["reference"] = first["reference"].head(n).values
    return table
