"""The ``xvec`` command: a thin Typer layer over the library.

Each command parses its arguments, calls library functions and renders the result with rich.
User errors (:class:`xvec.errors.XvecError`) become one line on stderr and a non-zero exit code;
heavy modules are imported inside the commands so ``xvec --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from xvec.compat import check_torch_version, prefer_sleeping_threads
from xvec.errors import XvecError
from xvec.report import make_console

app = typer.Typer(
    name="xvec",
    help="Speaker recognition with neural speaker embeddings: train, evaluate, embed, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
plot_app = typer.Typer(
    help="Plots: score histograms, DET curves, training curves.", no_args_is_help=True
)
prepare_app = typer.Typer(
    help="Write VoxCeleb-format lists for corpora on disk.", no_args_is_help=True
)
app.add_typer(plot_app, name="plot")
app.add_typer(prepare_app, name="prepare")

out = make_console()
err = make_console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn XvecError into one line on stderr (exit 1) and Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            check_torch_version()
            with warnings.catch_warnings():
                from xvec.registry import PluginWarning

                warnings.simplefilter("default", PluginWarning)
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except XvecError as exc:
            from rich.markup import escape

            err.print(
                f"[bold red]error:[/] {escape(str(exc))}",
                markup=True,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


LENGTH_TOLERANCE_OPTION = typer.Option(
    help="full: batch files whose lengths differ by up to this fraction, trimming each to the "
    "batch's shortest (faster); 0 embeds every file whole, as voxceleb_trainer's eval_frames 0."
)


class ProtocolName(str, Enum):
    full = "full"
    vt_crops = "vt-crops"


class NormName(str, Enum):
    none = "none"
    asnorm = "asnorm"
    mean = "mean"


def _progress_columns():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


class FileProgress:
    """A rich progress bar showing files/s, usable as an ``embed_files`` progress callback."""

    def __init__(self, description: str) -> None:
        import time

        from rich.progress import Progress

        self._time = time.perf_counter
        self.progress = Progress(*_progress_columns(), console=err, transient=True)
        self.description = description
        self.task = None
        self.count = 0
        self.start = 0.0

    def __enter__(self) -> FileProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, advance: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=total, rate="")
            self.start = self._time()
        self.count += advance
        rate = self.count / max(self._time() - self.start, 1e-9)
        self.progress.update(self.task, advance=advance, rate=f"{rate:.1f} files/s")


def _check_min(option: str, value: float | None, low: float) -> None:
    """One-line error for a numeric option below ``low`` (or not finite)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= low):
        raise XvecError(f"{option} {value}: must be a number >= {low}")


# --------------------------------------------------------------------------- registry listings


def _registry_table(kind: str) -> Table:
    from xvec import registry

    plural = {"model": "models", "loss": "losses"}[kind]
    table = Table(title=f"xvec {plural} (entry-point group {registry.GROUPS[kind]})")
    table.add_column("name", style="bold cyan")
    table.add_column("package")
    table.add_column("description")
    table.add_column("parameters (default)")
    if kind == "loss":
        table.add_column("nPerSpeaker", justify="right")
        table.caption = "nPerSpeaker: utterances per speaker a batch needs (train.nPerSpeaker)"
    for name, (entry, cls) in registry.loadable(kind).items():
        summary, params = registry.describe(cls)
        param_text = "\n".join(f"{p}: {t} = {d!r}" for p, t, d in params) or "-"
        row = [name, f"{entry.distribution} {entry.version}", summary, param_text]
        if kind == "loss":
            needed = int(getattr(cls, "min_per_speaker", 1))
            row.append(f"[bold yellow]>= {needed}[/]" if needed > 1 else "any")
        table.add_row(*row)
    return table


@app.command("models")
@friendly
def models_command() -> None:
    """List the installed model architectures and their parameters."""
    out.print(_registry_table("model"))


@app.command("losses")
@friendly
def losses_command() -> None:
    """List the installed training losses and their parameters."""
    out.print(_registry_table("loss"))


# --------------------------------------------------------------------------- lists


@app.command("count-classes")
@friendly
def count_classes(
    train_list: Annotated[Path, typer.Argument(help="Train list: 'SPEAKER relative/path' lines.")],
    plain: Annotated[
        bool, typer.Option("--plain", help="Print only the number of speakers.")
    ] = False,
) -> None:
    """Count speakers (nClasses) and utterances of a train list."""
    from xvec.data import class_summary, read_train_list

    summary = class_summary(read_train_list(train_list))
    if plain:
        print(summary["speakers"])
        return
    table = Table(title=str(train_list))
    table.add_column("speakers (nClasses)", justify="right", style="bold")
    table.add_column("utterances", justify="right")
    table.add_column("min / median / max per speaker", justify="right")
    table.add_row(
        str(summary["speakers"]),
        str(summary["utterances"]),
        f"{summary['min_per_speaker']} / {summary['median_per_speaker']:g} / "
        f"{summary['max_per_speaker']}",
    )
    out.print(table)


# --------------------------------------------------------------------------- evaluation


def _write_json(path: Path, data: Any) -> None:
    from xvec.files import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


@app.command("eval")
@friendly
def eval_command(
    trials: Annotated[Path, typer.Option("--trials", "-t", help="Trial list 'LABEL enroll test'.")],
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", "-m", help="xvec checkpoint(s); repeat to compare."),
    ] = None,
    scores: Annotated[
        list[Path] | None,
        typer.Option("--scores", help="Existing score file(s) instead of a model."),
    ] = None,
    audio_root: Annotated[
        Path | None,
        typer.Option("--audio-root", "-r", help="Folder the trial paths are relative to."),
    ] = None,
    protocol: Annotated[
        ProtocolName, typer.Option(help="full: whole files; vt-crops: voxceleb_trainer's 10 crops.")
    ] = ProtocolName.full,
    max_seconds: Annotated[
        float | None, typer.Option(help="Cap each file at this many seconds (full).")
    ] = None,
    eval_frames: Annotated[int, typer.Option(help="Crop length in frames (vt-crops).")] = 400,
    num_eval: Annotated[int, typer.Option(help="Crops per file (vt-crops).")] = 10,
    length_tolerance: Annotated[float, LENGTH_TOLERANCE_OPTION] = 0.05,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", "-o", help="Where scores and results go.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Files per batch.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    max_trials: Annotated[
        int | None,
        typer.Option(help="Quick check: a stratified random subset of this many trials (seed 0)."),
    ] = None,
    p_target: Annotated[
        list[float] | None,
        typer.Option("--p-target", help="minDCF prior; repeat for several [default: 0.05, 0.01]."),
    ] = None,
    c_miss: Annotated[float, typer.Option(help="minDCF cost of a miss.")] = 1.0,
    c_fa: Annotated[float, typer.Option(help="minDCF cost of a false acceptance.")] = 1.0,
) -> None:
    """Evaluate model(s) or score file(s) on a trial list: EER and minDCF in a table."""
    prefer_sleeping_threads()
    from xvec.checkpoint import load_model
    from xvec.data import read_trials, require_both_labels
    from xvec.embed import Protocol
    from xvec.evaluate import evaluate_model
    from xvec.metrics import evaluate
    from xvec.report import metrics_table
    from xvec.scoring import read_scores, write_scores

    if not model and not scores:
        raise XvecError("give --model (one or more checkpoints) or --scores (score files)")
    _check_min("--batch-size", batch_size, 1)
    if model:
        from xvec.devices import parse_device
        from xvec.embed import model_fingerprint

        parse_device(device)
        for model_path in model:
            model_fingerprint(model_path)  # a missing or unreadable checkpoint fails up front
    dcf = _dcf_options(p_target, c_miss, c_fa)
    full_trials = read_trials(trials)
    require_both_labels(full_trials)
    trial_list, kept = full_trials, None
    if max_trials is not None:
        from xvec.evaluate import subsample_trials

        trial_list, kept = subsample_trials(full_trials, max_trials)
    subset = {"trials": len(trial_list), "of": len(full_trials), "seed": 0} if max_trials else None
    summaries = []
    # one result folder per system, score files first; unique even when both kinds are given
    all_folders = _result_folders([*(scores or []), *(model or [])])
    if scores:
        for score_file, folder in zip(scores, all_folders, strict=False):
            values = _scores_in_trial_order(score_file, full_trials, read_scores)
            values = values if kept is None else values[kept]
            metrics = evaluate(values, trial_list.labels, **dcf)
            summary = {"name": str(score_file), **metrics.to_dict(), "seconds": None}
            if subset:
                summary["subset"] = subset
            summaries.append(summary)
            if out_dir is not None:
                _write_json(out_dir / folder / "result.json", summary)
                err.print(f"result: {out_dir / folder / 'result.json'}", highlight=False)
    if model:
        if audio_root is None:
            raise XvecError(
                "--audio-root is required with --model (the folder trial paths are under)"
            )
        proto = Protocol(
            protocol.value,
            max_seconds=max_seconds,
            eval_frames=eval_frames,
            num_eval=num_eval,
            length_tolerance=length_tolerance,
        )
        out_dir = out_dir or Path("eval_out")
        folders = all_folders[len(scores or []) :]
        for model_path, folder in zip(model, folders, strict=True):
            net = load_model(model_path)
            with FileProgress(f"embedding ({model_path.name})") as bar:
                result = evaluate_model(
                    net,
                    trial_list,
                    audio_root,
                    proto,
                    name=str(model_path),
                    batch_size=batch_size,
                    device=device,
                    progress=bar,
                    **dcf,
                )
            target = out_dir / folder
            write_scores(
                target / "scores.txt",
                result.scores,
                trial_list.enroll_names(),
                trial_list.test_names(),
            )
            summary = result.summary()
            summary["protocol"] = proto.describe()
            if subset:
                summary["subset"] = subset
            _write_json(target / "result.json", summary)
            for note in result.stats.notes:
                err.print(f"note: {note}", highlight=False)
            summaries.append(summary)
            err.print(
                f"scores: {target / 'scores.txt'}  result: {target / 'result.json'}",
                highlight=False,
            )
    counted = f"{len(trial_list)} trials"
    if subset:
        counted = f"{len(trial_list)} of {len(full_trials)} trials, stratified"
    table = metrics_table(summaries, f"{trials} ({counted})")
    out.print(table)
    if out_dir is not None:
        _write_table(out_dir / "table.txt", table)


def _write_table(path: Path, table: Table) -> None:
    """A plain-text copy of a rich table (no colours), written atomically."""
    import io

    from rich.console import Console

    from xvec.files import atomic_write_bytes
    from xvec.report import PIPE_WIDTH

    buffer = io.StringIO()
    Console(file=buffer, width=PIPE_WIDTH, color_system=None).print(table)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _dcf_options(p_target: list[float] | None, c_miss: float, c_fa: float) -> dict[str, Any]:
    """Check --p-target/--c-miss/--c-fa up front; the keyword arguments of the metrics."""
    from xvec.metrics import DEFAULT_P_TARGETS

    priors = tuple(dict.fromkeys(p_target)) if p_target else DEFAULT_P_TARGETS
    for prior in priors:
        if not 0.0 < prior < 1.0:
            raise XvecError(f"--p-target must lie strictly between 0 and 1, got {prior:g}")
    for name, cost in (("--c-miss", c_miss), ("--c-fa", c_fa)):
        if not cost > 0:
            raise XvecError(f"{name} must be positive, got {cost:g}")
    return {"p_targets": priors, "c_miss": c_miss, "c_fa": c_fa}


def _result_folders(models: list[Path]) -> list[str]:
    """Sub-folder per model for several models ("" for one): file stems, made unique."""
    if len(models) == 1:
        return [""]
    stems = [path.stem for path in models]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{index}_{path.parent.name}_{path.stem}" for index, path in enumerate(models, 1)]


def _scores_in_trial_order(score_file: Path, trials: Any, read_scores: Callable) -> Any:
    """Scores of a score file aligned with the trial list (by order, checked by names)."""
    import numpy as np

    values, enroll, test = read_scores(score_file)
    if len(values) != len(trials):
        raise XvecError(
            f"{score_file}: {len(values)} scores for {len(trials)} trials in {trials.path}; "
            "they must be in the same order"
        )
    files = np.asarray(trials.files, dtype=object)
    if enroll is not None and not (
        (np.asarray(enroll, dtype=object) == files[trials.enroll]).all()
        and (np.asarray(test, dtype=object) == files[trials.test]).all()
    ):
        raise XvecError(
            f"{score_file}: trial names differ from {trials.path}; use the same trial list"
        )
    return values


@app.command("embed")
@friendly
def embed_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="xvec checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Embeddings file (.safetensors).")],
    audio_root: Annotated[
        Path, typer.Option("--audio-root", "-r", help="Folder the paths are relative to.")
    ],
    file_list: Annotated[
        Path | None, typer.Option("--list", help="Plain list of audio paths.")
    ] = None,
    trials: Annotated[
        Path | None, typer.Option("--trials", help="Trial list: embed its files.")
    ] = None,
    protocol: Annotated[ProtocolName, typer.Option()] = ProtocolName.full,
    max_seconds: Annotated[float | None, typer.Option()] = None,
    eval_frames: Annotated[int, typer.Option()] = 400,
    num_eval: Annotated[int, typer.Option()] = 10,
    length_tolerance: Annotated[float, LENGTH_TOLERANCE_OPTION] = 0.05,
    batch_size: Annotated[int, typer.Option()] = 32,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Embed audio files to vectors (resumable: an interrupted run keeps what it computed)."""
    prefer_sleeping_threads()
    from xvec.checkpoint import load_model
    from xvec.data import check_files_exist, read_file_list, read_trials
    from xvec.embed import EmbeddingStore, EmbedStats, Protocol, embed_files, model_fingerprint

    if (file_list is None) == (trials is None):
        raise XvecError("give exactly one of --list or --trials")
    from xvec.devices import parse_device

    _check_min("--batch-size", batch_size, 1)
    parse_device(device)
    model_fingerprint(model)  # a missing checkpoint fails before the audio is checked
    source = file_list or trials
    files = read_file_list(file_list) if file_list else read_trials(trials).files  # type: ignore[arg-type]
    check_files_exist(audio_root, files, source)
    proto = Protocol(
        protocol.value,
        max_seconds=max_seconds,
        eval_frames=eval_frames,
        num_eval=num_eval,
        length_tolerance=length_tolerance,
    )
    meta = {"model": str(model), "model_sha256": model_fingerprint(model), **proto.describe()}
    partial = output.with_name(output.name + ".partial")
    done: dict = {}
    if partial.is_file():
        previous = EmbeddingStore.load(partial)
        if previous.meta == meta:
            done = previous.vectors
            err.print(f"resuming: {len(done)} embeddings already in {partial}", highlight=False)

    kept = {"count": len(done)}

    def save_partial(results: dict) -> None:
        store = EmbeddingStore(meta)
        store.vectors = results
        store.save(partial)
        kept["count"] = len(results)

    stats = EmbedStats()
    with FileProgress("embedding") as bar:
        try:
            vectors = embed_files(
                load_model(model),
                audio_root,
                files,
                proto,
                batch_size=batch_size,
                device=device,
                progress=bar,
                done=done,
                checkpoint_every=30.0,
                on_checkpoint=save_partial,
                stats=stats,
            )
        except XvecError as exc:
            if kept["count"]:
                raise XvecError(
                    f"{exc}; the {kept['count']} embeddings computed so far are kept in "
                    f"{partial}: fix the file and run the same command again to resume"
                ) from exc
            raise
    store = EmbeddingStore(meta)
    store.vectors = {f: vectors[f] for f in files}
    store.save(output)
    partial.unlink(missing_ok=True)
    for note in stats.notes:
        err.print(f"note: {note}", highlight=False)
    out.print(
        f"{len(files)} embeddings ({stats.computed} computed, "
        f"{stats.files_per_second:.1f} files/s) -> {output}"
    )


@app.command("score")
@friendly
def score_command(
    embeddings: Annotated[Path, typer.Option("--embeddings", "-e", help="From 'xvec embed'.")],
    trials: Annotated[Path, typer.Option("--trials", "-t")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Score file 'SCORE ENROLL TEST'.")],
    norm: Annotated[NormName, typer.Option(help="Score normalisation.")] = NormName.none,
    cohort: Annotated[
        Path | None, typer.Option(help="Embeddings file of the cohort (asnorm/mean).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Cohort size per side for AS-norm.")] = 300,
) -> None:
    """Score trials from stored embeddings (cosine, or voxceleb_trainer crops)."""
    from xvec.data import read_trials
    from xvec.embed import EmbeddingStore
    from xvec.scoring import as_norm, mean_norm, score_embeddings, write_scores

    _check_min("--top-k", top_k, 1)
    trial_list = read_trials(trials)
    store = EmbeddingStore.load(embeddings)
    matrix = store.matrix(trial_list.files, trials)
    protocol = store.meta.get("protocol", "full")
    if norm is NormName.none:
        values = score_embeddings(matrix, trial_list, protocol)
    else:
        if cohort is None:
            raise XvecError(
                f"--norm {norm.value} needs --cohort (an embeddings file of cohort speakers)"
            )
        cohort_store = EmbeddingStore.load(cohort)
        cohort_matrix = cohort_store.cohort_matrix()
        if cohort_matrix.shape[-1] != matrix.shape[-1]:
            raise XvecError(
                f"{cohort}: cohort embeddings have dimension {cohort_matrix.shape[-1]} but "
                f"{embeddings} has {matrix.shape[-1]}; embed the cohort with the same model"
            )
        if matrix.ndim == 3:  # crops: normalise on the mean crop embedding
            matrix, cohort_matrix = (
                matrix.mean(1),
                cohort_matrix.mean(1) if cohort_matrix.ndim == 3 else cohort_matrix,
            )
        if norm is NormName.asnorm:
            from xvec.scoring import cosine_scores

            raw = cosine_scores(matrix, trial_list.enroll, trial_list.test)
            values = as_norm(
                raw, trial_list.enroll, trial_list.test, matrix, cohort_matrix, top_k=top_k
            )
        else:
            values = mean_norm(matrix, trial_list.enroll, trial_list.test, cohort_matrix)
    write_scores(output, values, trial_list.enroll_names(), trial_list.test_names())
    out.print(f"{len(trial_list)} scores -> {output}")


# --------------------------------------------------------------------------- plots


@plot_app.command("hist")
@friendly
def plot_hist(
    scores: Annotated[Path, typer.Argument(help="Score file 'SCORE ENROLL TEST'.")],
    trials: Annotated[Path, typer.Option("--trials", "-t", help="Trial list with the labels.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG, PDF or SVG.")] = Path(
        "hist.png"
    ),
    title: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Target and non-target score histograms with the EER threshold."""
    from xvec.data import read_trials, require_both_labels
    from xvec.metrics import evaluate
    from xvec.plots import plot_histogram
    from xvec.scoring import read_scores

    trial_list = read_trials(trials)
    require_both_labels(trial_list)
    values = _scores_in_trial_order(scores, trial_list, read_scores)
    metrics = evaluate(values, trial_list.labels)
    plot_histogram(
        values,
        trial_list.labels,
        output,
        threshold=metrics.eer_threshold,
        title=title or scores.name,
    )
    out.print(
        f"histogram -> {output} (EER {metrics.eer:.2f} %, threshold {metrics.eer_threshold:.4f})"
    )


@plot_app.command("det")
@friendly
def plot_det_command(
    scores: Annotated[list[Path], typer.Argument(help="One or more score files to compare.")],
    trials: Annotated[Path, typer.Option("--trials", "-t")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("det.png"),
) -> None:
    """DET curves (normal-deviate axes) of one or more score files."""
    from xvec.data import read_trials
    from xvec.plots import plot_det
    from xvec.scoring import read_scores

    trial_list = read_trials(trials)
    curves = {
        path.stem if path.stem != "scores" else str(path.parent): (
            _scores_in_trial_order(path, trial_list, read_scores),
            trial_list.labels,
        )
        for path in scores
    }
    plot_det(curves, output)
    out.print(f"DET curves -> {output}")


@plot_app.command("training")
@friendly
def plot_training_command(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (holds log.jsonl).")],
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Loss, accuracy and EER curves from a run's JSON-lines log."""
    from xvec.plots import plot_training
    from xvec.train import read_log

    records = read_log(run_dir)
    target = output or run_dir / "curves.png"
    plot_training(records, target)
    out.print(f"training curves -> {target}")


# --------------------------------------------------------------------------- training


@app.command("train")
@friendly
def train_command(
    recipe: Annotated[
        Path, typer.Argument(help="TOML recipe, or a run folder (its recipe.json) to --resume.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a recipe field, e.g. --set train.max_epoch=5 (repeatable)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run folder's last state.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Processes for DistributedDataParallel (uses torchrun).")
    ] = 1,
) -> None:
    """Train an embedding extractor from a recipe; evaluates every test_interval epochs."""
    from xvec.config import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if nproc > 1:
        from xvec.train import launch_distributed

        raise typer.Exit(launch_distributed(recipe, set_ or [], resume, nproc))
    from xvec.train import train

    summary = train(loaded, recipe_path=recipe, resume=resume, console=err, overrides=set_ or [])
    if summary is not None:
        out.print(summary)


# --------------------------------------------------------------------------- import, data


@app.command("import-vt")
@friendly
def import_vt(
    source: Annotated[Path, typer.Argument(help="voxceleb_trainer .model file.")],
    model: Annotated[
        str,
        typer.Option("--model", help="Architecture, as in voxceleb_trainer (e.g. ResNetSE34L)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="xvec checkpoint to write.")],
    encoder: Annotated[
        str | None, typer.Option("--encoder", "--encoder-type", help="SAP, ASP, TAP, MAX ...")
    ] = None,
    n_mels: Annotated[int | None, typer.Option("--n-mels")] = None,
    log_input: Annotated[bool | None, typer.Option("--log-input/--no-log-input")] = None,
    nout: Annotated[int | None, typer.Option("--nout")] = None,
    trainfunc: Annotated[
        str | None, typer.Option("--trainfunc", help="Loss, to import its head too.")
    ] = None,
    margin: Annotated[float | None, typer.Option()] = None,
    scale: Annotated[float | None, typer.Option()] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--param", help="Other model parameter NAME=VALUE.")
    ] = None,
) -> None:
    """Convert a voxceleb_trainer checkpoint to a self-describing xvec checkpoint."""
    from xvec.checkpoint import import_voxceleb_trainer
    from xvec.config import _parse_value

    if model == "VGGVox":
        model = "VGGVox40"
    params: dict[str, Any] = {}
    for key, value in [
        ("encoder_type", encoder),
        ("n_mels", n_mels),
        ("log_input", log_input),
        ("nOut", nout),
    ]:
        if value is not None:
            params[key] = value
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise XvecError(f"--param '{item}': expected NAME=VALUE")
        params[key.strip()] = _parse_value(value.strip())
    loss_params = {k: v for k, v in [("margin", margin), ("scale", scale)] if v is not None}
    path = import_voxceleb_trainer(source, output, model, params, trainfunc, loss_params)
    out.print(f"imported {source} as {model} {params} -> {path}")


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command("export")
@friendly
def export_command(
    model: Annotated[Path, typer.Argument(help="xvec checkpoint (.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.onnx,
    tolerance: Annotated[
        float, typer.Option(help="Largest allowed difference from the PyTorch model.")
    ] = 1e-4,
) -> None:
    """Export a model (front end included: input is the 16 kHz waveform) and verify it."""
    from xvec.export import export_checkpoint

    _check_min("--tolerance", tolerance, 0)
    out.print(str(export_checkpoint(model, output, fmt.value, tolerance)))


@app.command("synth")
@friendly
def synth_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the synthetic corpus.")],
    speakers: Annotated[int, typer.Option(help="Number of synthetic speakers.")] = 60,
    utterances: Annotated[int, typer.Option(help="Utterances per speaker.")] = 20,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Make the synthetic multi-speaker demo corpus (audio, train list, trial list)."""
    from xvec.synth import make_corpus

    info = make_corpus(out_dir, speakers=speakers, utterances=utterances, seed=seed)
    out.print(f"synthetic corpus -> {out_dir}: {info}")


FORCE_OPTION = typer.Option("--force", help="Overwrite lists that already exist.")


@prepare_app.command("voxceleb")
@friendly
def prepare_voxceleb_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the lists.")] = Path("lists"),
    vox1: Annotated[Path | None, typer.Option("--vox1")] = None,
    vox2: Annotated[Path | None, typer.Option("--vox2")] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """VoxCeleb1/2 on disk: voxceleb2_train_list.txt (or voxceleb1_), trial lists checked."""
    from xvec.prepare import prepare_voxceleb

    out.print(prepare_voxceleb(vox1, vox2, out_dir, force=force))


@prepare_app.command("speechocean762")
@friendly
def prepare_speechocean_command(
    root: Annotated[
        Path, typer.Option("--root", help="speechocean762 corpus folder (OpenSLR 101).")
    ],
    out_dir: Annotated[Path, typer.Option("--out")] = Path("lists"),
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """speechocean762: train list from its train part, trials from its test part."""
    from xvec.prepare import prepare_speechocean762

    out.print(prepare_speechocean762(root, out_dir, force=force))


@prepare_app.command("folder")
@friendly
def prepare_folder_command(
    root: Annotated[Path, typer.Argument(help="SPEAKER/.../*.wav tree.")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lists/train_list.txt"),
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Any SPEAKER/.../*.wav tree: a train list."""
    from xvec.prepare import prepare_folder

    out.print(prepare_folder(root, output, force=force))


def main() -> None:
    """Console-script entry point."""
    app()
