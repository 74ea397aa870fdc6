"""The ``xvec`` command: a thin Typer layer over the library.

Each command parses its arguments, calls library functions and renders the result with rich.
User errors (:class:`xvec.errors.XvecError`) become one line on stderr and a non-zero exit code;
heavy modules are imported inside the commands so ``xvec --help`` stays fast.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from xvec.compat import check_torch_version, prefer_sleeping_threads
from xvec.errors import XvecError
from xvec.report import FileProgress, make_console

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


def one_line_errors(func: F) -> F:
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


from xvec.protocol import EVAL_FRAMES, LENGTH_TOLERANCE, NUM_EVAL  # noqa: E402

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


def _check_min(option: str, value: float | None, low: float) -> None:
    """One-line error for a numeric option below ``low`` (or not finite)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= low):
        raise XvecError(f"{option} {value}: must be a number >= {low}")


# --------------------------------------------------------------------------- registry listings


@app.command("models")
@one_line_errors
def models_command() -> None:
    """List the installed model architectures and their parameters."""
    from xvec.report import registry_table

    out.print(registry_table("model"))


@app.command("losses")
@one_line_errors
def losses_command() -> None:
    """List the installed training losses and their parameters."""
    from xvec.report import registry_table

    out.print(registry_table("loss"))


# --------------------------------------------------------------------------- lists


@app.command("count-classes")
@one_line_errors
def count_classes(
    train_list: Annotated[Path, typer.Argument(help="Train list: 'SPEAKER relative/path' lines.")],
    plain: Annotated[
        bool, typer.Option("--plain", help="Print only the number of speakers.")
    ] = False,
) -> None:
    """Count speakers (nClasses) and utterances of a train list."""
    from xvec.data import class_summary, read_train_list
    from xvec.report import class_table

    summary = class_summary(read_train_list(train_list))
    if plain:
        print(summary["speakers"])
        return
    out.print(class_table(summary, str(train_list)))


# --------------------------------------------------------------------------- evaluation

PROTOCOL_OPTION = typer.Option(
    help="full: whole files, cosine; vt-crops: voxceleb_trainer's evenly spaced crops."
)
MAX_SECONDS_OPTION = typer.Option(help="full: read at most this many seconds of each file.")
EVAL_FRAMES_OPTION = typer.Option(help="vt-crops: crop length in 10 ms frames (0 = whole file).")
NUM_EVAL_OPTION = typer.Option(help="vt-crops: crops per file.")
BATCH_OPTION = typer.Option(help="Files per batch.")
DEVICE_OPTION = typer.Option(help="auto, cpu, cuda, cuda:1 ...")


@app.command("eval")
@one_line_errors
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
    protocol: Annotated[ProtocolName, PROTOCOL_OPTION] = ProtocolName.full,
    max_seconds: Annotated[float | None, MAX_SECONDS_OPTION] = None,
    eval_frames: Annotated[int, EVAL_FRAMES_OPTION] = EVAL_FRAMES,
    num_eval: Annotated[int, NUM_EVAL_OPTION] = NUM_EVAL,
    length_tolerance: Annotated[float, LENGTH_TOLERANCE_OPTION] = LENGTH_TOLERANCE,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", "-o", help="Where scores and results go.")
    ] = None,
    batch_size: Annotated[int, BATCH_OPTION] = 32,
    device: Annotated[str, DEVICE_OPTION] = "auto",
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
    from xvec.evaluate import DcfSettings, run_eval
    from xvec.protocol import Protocol
    from xvec.report import metrics_table, write_table

    run = run_eval(
        trials,
        models=model or [],
        score_files=scores or [],
        audio_root=audio_root,
        protocol=Protocol(protocol.value, max_seconds, eval_frames, num_eval, length_tolerance),
        out_dir=out_dir,
        batch_size=batch_size,
        device=device,
        max_trials=max_trials,
        dcf=DcfSettings(tuple(p_target or ()), c_miss, c_fa),
        progress_for=lambda path: FileProgress(f"embedding ({path.name})", err),
    )
    for note in run.notes:
        err.print(f"note: {note}", highlight=False)
    for written in run.written:
        err.print("  ".join(f"{p.stem}: {p}" for p in written), highlight=False)
    counted = f"{len(run.trials)} trials"
    if run.subset:
        counted = f"{len(run.trials)} of {run.total_trials} trials, stratified"
    table = metrics_table(run.summaries, f"{trials} ({counted})")
    out.print(table)
    if out_dir is not None or model:
        write_table((out_dir or Path("eval_out")) / "table.txt", table)


@app.command("embed")
@one_line_errors
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
    protocol: Annotated[ProtocolName, PROTOCOL_OPTION] = ProtocolName.full,
    max_seconds: Annotated[float | None, MAX_SECONDS_OPTION] = None,
    eval_frames: Annotated[int, EVAL_FRAMES_OPTION] = EVAL_FRAMES,
    num_eval: Annotated[int, NUM_EVAL_OPTION] = NUM_EVAL,
    length_tolerance: Annotated[float, LENGTH_TOLERANCE_OPTION] = LENGTH_TOLERANCE,
    batch_size: Annotated[int, BATCH_OPTION] = 32,
    device: Annotated[str, DEVICE_OPTION] = "auto",
) -> None:
    """Embed audio files to vectors (resumable: an interrupted run keeps what it computed)."""
    prefer_sleeping_threads()
    from xvec.data import check_files_exist, read_file_list, read_trials
    from xvec.devices import parse_device
    from xvec.embed import embed_to_file, model_fingerprint
    from xvec.protocol import Protocol

    if (file_list is None) == (trials is None):
        raise XvecError("give exactly one of --list or --trials")
    _check_min("--batch-size", batch_size, 1)
    parse_device(device)
    model_fingerprint(model)  # a missing checkpoint fails before the audio is checked
    source = file_list or trials
    files = read_file_list(file_list) if file_list else read_trials(trials).files  # type: ignore[arg-type]
    check_files_exist(audio_root, files, source)
    with FileProgress("embedding", err) as bar:
        run = embed_to_file(
            model,
            audio_root,
            files,
            output,
            Protocol(protocol.value, max_seconds, eval_frames, num_eval, length_tolerance),
            batch_size=batch_size,
            device=device,
            progress=bar,
        )
    if run.resumed:
        err.print(f"resuming: {run.resumed} embeddings already computed were reused")
    for note in run.stats.notes:
        err.print(f"note: {note}", highlight=False)
    out.print(
        f"{run.count} embeddings ({run.stats.computed} computed, "
        f"{run.stats.files_per_second:.1f} files/s) -> {output}"
    )


@app.command("score")
@one_line_errors
def score_command(
    embeddings: Annotated[Path, typer.Option("--embeddings", "-e", help="From 'xvec embed'.")],
    trials: Annotated[Path, typer.Option("--trials", "-t", help="Trial list to score.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Score file 'SCORE ENROLL TEST'.")],
    norm: Annotated[NormName, typer.Option(help="Score normalisation.")] = NormName.none,
    cohort: Annotated[
        Path | None, typer.Option(help="Embeddings file of the cohort (asnorm/mean).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Cohort size per side for AS-norm.")] = 300,
) -> None:
    """Score trials from stored embeddings (cosine, or voxceleb_trainer crops)."""
    from xvec.data import read_trials
    from xvec.scoring import score_stored, write_scores

    trial_list = read_trials(trials)
    values = score_stored(embeddings, trial_list, norm=norm.value, cohort=cohort, top_k=top_k)
    write_scores(output, values, trial_list.enroll_names(), trial_list.test_names())
    out.print(f"{len(trial_list)} scores -> {output}")


# --------------------------------------------------------------------------- plots


@plot_app.command("hist")
@one_line_errors
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
    from xvec.metrics import compute_metrics
    from xvec.plots import plot_histogram
    from xvec.scoring import read_scores_in_trial_order

    trial_list = read_trials(trials)
    require_both_labels(trial_list)
    values = read_scores_in_trial_order(scores, trial_list)
    metrics = compute_metrics(values, trial_list.labels)
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
@one_line_errors
def plot_det_command(
    scores: Annotated[list[Path], typer.Argument(help="One or more score files to compare.")],
    trials: Annotated[Path, typer.Option("--trials", "-t")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("det.png"),
) -> None:
    """DET curves (normal-deviate axes) of one or more score files."""
    from xvec.data import read_trials
    from xvec.plots import plot_det
    from xvec.scoring import read_scores_in_trial_order

    trial_list = read_trials(trials)
    curves = {
        path.stem if path.stem != "scores" else str(path.parent): (
            read_scores_in_trial_order(path, trial_list),
            trial_list.labels,
        )
        for path in scores
    }
    plot_det(curves, output)
    out.print(f"DET curves -> {output}")


@plot_app.command("training")
@one_line_errors
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
@one_line_errors
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


ImportFormat = Enum(  # type: ignore[misc]
    "ImportFormat", {name: name for name in ("vt", "wespeaker", "speechbrain")}, type=str
)
ImportOutput = Annotated[Path, typer.Option("--output", "-o", help="xvec checkpoint to write.")]
ImportConfig = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Training config, checked against the weights (VT's YAML, WeSpeaker's config.yaml, "
        "SpeechBrain's hyperparams.yaml).",
    ),
]
ImportModel = Annotated[
    str | None,
    typer.Option("--model", help="Architecture (e.g. ResNetSE34L); default: read off the weights."),
]
ImportEncoder = Annotated[
    str | None,
    typer.Option("--encoder", "--encoder-type", help="VT pooling: SAP, ASP, TAP, MAX, ECA."),
]
ImportMels = Annotated[int | None, typer.Option("--n-mels", help="Mel bands (VT's --n_mels).")]
ImportLog = Annotated[
    bool | None,
    typer.Option("--log-input/--no-log-input", help="VT's --log_input (log of the mel input)."),
]
ImportNout = Annotated[int | None, typer.Option("--nout", help="Embedding size (VT's --nOut).")]
ImportLoss = Annotated[
    str | None, typer.Option("--trainfunc", help="VT loss, to import its head too.")
]
ImportMargin = Annotated[float | None, typer.Option(help="Loss margin (VT's --margin).")]
ImportScale = Annotated[float | None, typer.Option(help="Loss scale (VT's --scale).")]
ImportParams = Annotated[
    list[str] | None,
    typer.Option("--param", help="Other model parameter NAME=VALUE (repeatable), e.g. C=512."),
]


@app.command("import")
@one_line_errors
def import_command(
    fmt: Annotated[ImportFormat, typer.Argument(metavar="FORMAT", help="Checkpoint format.")],
    source: Annotated[Path, typer.Argument(help="Checkpoint file to convert.")],
    output: ImportOutput,
    config: ImportConfig = None,
    model: ImportModel = None,
    encoder: ImportEncoder = None,
    n_mels: ImportMels = None,
    log_input: ImportLog = None,
    nout: ImportNout = None,
    trainfunc: ImportLoss = None,
    margin: ImportMargin = None,
    scale: ImportScale = None,
    params: ImportParams = None,
) -> None:
    """Convert another toolkit's checkpoint to an xvec one, architecture read off the weights."""
    _run_import(
        fmt.value,
        source,
        output,
        config,
        params,
        model=model,
        trainfunc=trainfunc,
        margin=margin,
        scale=scale,
        encoder_type=encoder,
        n_mels=n_mels,
        log_input=log_input,
        nOut=nout,
    )


@app.command("import-vt")
@one_line_errors
def import_vt(
    source: Annotated[Path, typer.Argument(help="voxceleb_trainer .model file.")],
    output: ImportOutput,
    config: ImportConfig = None,
    model: ImportModel = None,
    encoder: ImportEncoder = None,
    n_mels: ImportMels = None,
    log_input: ImportLog = None,
    nout: ImportNout = None,
    trainfunc: ImportLoss = None,
    margin: ImportMargin = None,
    scale: ImportScale = None,
    params: ImportParams = None,
) -> None:
    """Alias of 'xvec import vt': convert a voxceleb_trainer checkpoint."""
    _run_import(
        "vt",
        source,
        output,
        config,
        params,
        model=model,
        trainfunc=trainfunc,
        margin=margin,
        scale=scale,
        encoder_type=encoder,
        n_mels=n_mels,
        log_input=log_input,
        nOut=nout,
    )


def _run_import(
    fmt: str,
    source: Path,
    output: Path,
    config: Path | None,
    params: list[str] | None,
    *,
    model: str | None,
    trainfunc: str | None,
    margin: float | None,
    scale: float | None,
    **named: object,
) -> None:
    """Both import commands: the named model options and --param become the overrides."""
    from xvec.importers import import_checkpoint, parse_params

    overrides = {key: value for key, value in named.items() if value is not None}
    summary = import_checkpoint(
        fmt,
        source,
        output,
        config=config,
        overrides={**overrides, **parse_params(params or [])},
        model=model,
        trainfunc=trainfunc,
        margin=margin,
        scale=scale,
    )
    out.print(summary.describe(source, fmt), markup=False, highlight=False, soft_wrap=True)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command("export")
@one_line_errors
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
@one_line_errors
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
@one_line_errors
def prepare_voxceleb_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the lists.")] = Path("lists"),
    vox1: Annotated[Path | None, typer.Option("--vox1")] = None,
    vox2: Annotated[Path | None, typer.Option("--vox2")] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """VoxCeleb1/2 on disk: voxceleb2_train_list.txt (or voxceleb1_), trial lists checked."""
    from xvec.prepare import prepare_voxceleb
    from xvec.report import prepared_text

    out.print(prepared_text(prepare_voxceleb(vox1, vox2, out_dir, force=force)))


@prepare_app.command("speechocean762")
@one_line_errors
def prepare_speechocean_command(
    root: Annotated[
        Path, typer.Option("--root", help="speechocean762 corpus folder (OpenSLR 101).")
    ],
    out_dir: Annotated[Path, typer.Option("--out")] = Path("lists"),
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """speechocean762: train list from its train part, trials from its test part."""
    from xvec.prepare import prepare_speechocean762
    from xvec.report import prepared_text

    out.print(prepared_text(prepare_speechocean762(root, out_dir, force=force)))


@prepare_app.command("folder")
@one_line_errors
def prepare_folder_command(
    root: Annotated[Path, typer.Argument(help="SPEAKER/.../*.wav tree.")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lists/train_list.txt"),
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Any SPEAKER/.../*.wav tree: a train list."""
    from xvec.prepare import prepare_folder
    from xvec.report import prepared_text

    out.print(prepared_text(prepare_folder(root, output, force=force)))


def main() -> None:
    """Console-script entry point."""
    app()
