"""The ``xvec`` command: a thin Typer layer over the library.

Each command parses its arguments, calls library functions (which check the inputs and
return data) and renders the result with :mod:`xvec.report`. User errors
(:class:`xvec.errors.XvecError`) become one line on stderr and a non-zero exit code; heavy
modules (torch, matplotlib) are imported inside the commands so ``xvec --help`` stays fast.
"""

from __future__ import annotations

import functools
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from xvec import report
from xvec.compat import check_torch_version, prefer_sleeping_threads
from xvec.errors import XvecError, with_flags
from xvec.protocol import EVAL_FRAMES, LENGTH_TOLERANCE, NUM_EVAL


class XvecGroup(TyperGroup):
    """The ``xvec`` command group: readable metavars in help, parser errors in one line.

    Usage errors (unknown or missing options, extra arguments, bad values) print
    ``error: ...`` on stderr and exit with code 2, through the console script and
    ``typer.testing.CliRunner`` alike.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = sys.argv[1:] if args is None else list(args)
        _readable_metavars(self)
        try:
            code = super().main(argv, prog_name or "xvec", complete_var, False, **extra)
        except typer.Abort:
            if not standalone_mode:
                raise
            report.print_error(err, "aborted")
            code = 1
        except Exception as exc:
            if getattr(exc, "exit_code", None) != 2 or not hasattr(exc, "format_message"):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``xvec`` or ``xvec plot``
                if exc.format_message().strip():  # rich help is printed, not returned
                    err.print(exc.format_message(), highlight=False, markup=False)
            else:
                report.print_error(err, _usage_message(exc, argv))
            code = 2
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="xvec",
    help="Speaker recognition with neural speaker embeddings: train, evaluate, embed, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=XvecGroup,
)
plot_app = typer.Typer(
    help="Plots: score histograms, DET curves, training curves, calibration.",
    no_args_is_help=True,
)
prepare_app = typer.Typer(
    help="Write VoxCeleb-format lists for corpora on disk.", no_args_is_help=True
)
import_app = typer.Typer(
    help="Convert another toolkit's checkpoint to an xvec one, architecture read off the weights.",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")
app.add_typer(plot_app, name="plot")
app.add_typer(prepare_app, name="prepare")

out = report.make_console()
err = report.make_console(stderr=True)
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
            report.print_error(err, with_flags(exc, flag_name))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Library keyword -> flag, where the flag is not the keyword with dashes.
FLAG_NAMES = {
    "models": "--model",
    "score_files": "--scores",
    "p_targets": "--p-target",
    "fmt": "--format",
    "nOut": "--nout",
    "encoder_type": "--encoder",
}


def flag_name(option: str) -> str:
    """A library keyword as its flag: ``length_tolerance`` is ``--length-tolerance``."""
    return FLAG_NAMES.get(option, "--" + option.replace("_", "-"))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    report.print_warning(err, str(message))


FORCE_OPTION = typer.Option(
    "--force", help="Replace an existing output that xvec did not write (never an input)."
)
LENGTH_TOLERANCE_OPTION = typer.Option(
    help="full: 0 (default) embeds every file whole, as voxceleb_trainer's eval_frames 0. Above "
    "0 trades exactness for batching: files whose lengths differ by up to this fraction share "
    "a batch, each trimmed to the batch's shortest, which drops up to that fraction of a file "
    "and changes its embedding (typically by 1e-3 to 1e-2)."
)
PRECISION_OPTION = typer.Option(
    help="fp32 (default) computes the exact embeddings. bf16 trades exactness for speed: the "
    "model runs under bfloat16 autocast, faster on CPUs with bf16 units (AVX-512 BF16, AMX) and "
    "GPUs; embeddings move by about 1e-3 (see docs/benchmarks.md for the EER both ways)."
)


def _choices(name: str, *values: str) -> Any:
    """A ``str`` Enum Typer shows as a choice of ``values`` (member names: ``-`` as ``_``)."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


ProtocolName = _choices("ProtocolName", "full", "vt-crops")
PrecisionName = _choices("PrecisionName", "fp32", "bf16")
NormName = _choices("NormName", "none", "asnorm", "mean")
ExportFormat = _choices("ExportFormat", "onnx", "torchscript", "vt")


# --------------------------------------------------------------------------- registry listings


def _registry_command(kind: str, what: str) -> Callable[[], None]:
    """``xvec models`` / ``xvec losses``: the entry points of one kind in a table."""

    def command() -> None:
        out.print(report.registry_table(kind))

    command.__doc__ = f"List the installed {what} and their parameters."
    return one_line_errors(command)


app.command("models")(_registry_command("model", "model architectures"))
app.command("losses")(_registry_command("loss", "training losses"))


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

    summary = class_summary(read_train_list(train_list))
    if plain:
        print(summary["speakers"])
        return
    out.print(report.class_table(summary, str(train_list)))


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
    precision: Annotated[PrecisionName, PRECISION_OPTION] = PrecisionName.fp32,
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
        typer.Option(
            "--p-target", help="minDCF prior; repeat for several (default: 0.05 and 0.01)."
        ),
    ] = None,
    c_miss: Annotated[float, typer.Option(help="minDCF cost of a miss.")] = 1.0,
    c_fa: Annotated[float, typer.Option(help="minDCF cost of a false acceptance.")] = 1.0,
    calibration: Annotated[
        Path | None,
        typer.Option(help="Calibration JSON: adds Cllr, actDCF and thresholds per p_target."),
    ] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Evaluate model(s) or score file(s) on a trial list: EER and minDCF in a table."""
    prefer_sleeping_threads()
    from xvec.evaluate import DcfSettings
    from xvec.protocol import Protocol
    from xvec.workflows.eval import DEFAULT_EVAL_DIR, run_eval

    run = run_eval(
        trials,
        models=model or [],
        score_files=scores or [],
        audio_root=audio_root,
        protocol=Protocol(
            protocol.value, max_seconds, eval_frames, num_eval, length_tolerance, precision.value
        ),
        out_dir=out_dir,
        batch_size=batch_size,
        device=device,
        max_trials=max_trials,
        dcf=DcfSettings(tuple(p_target or ()), c_miss, c_fa),
        progress_for=lambda path: report.FileProgress(f"embedding ({path.name})", err),
        calibration=calibration,
        force=force,
    )
    keep_table = out_dir is not None or bool(model)
    table_file = (out_dir or DEFAULT_EVAL_DIR) / "table.txt" if keep_table else None
    report.print_eval(run, trials, out, err, table_file)


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
    precision: Annotated[PrecisionName, PRECISION_OPTION] = PrecisionName.fp32,
    batch_size: Annotated[int, BATCH_OPTION] = 32,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Embed audio files to vectors (resumable: a rerun reuses what was saved every 30 s)."""
    prefer_sleeping_threads()
    from xvec.protocol import Protocol
    from xvec.workflows.embed import run_embed

    run = run_embed(
        model,
        audio_root,
        output,
        force=force,
        file_list=file_list,
        trials=trials,
        protocol=Protocol(
            protocol.value, max_seconds, eval_frames, num_eval, length_tolerance, precision.value
        ),
        batch_size=batch_size,
        device=device,
        progress=report.FileProgress("embedding", err),
    )
    report.print_embed(run, out, err)


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
    backend: Annotated[
        Path | None, typer.Option(help="PLDA back end (xvec backend fit): PLDA LLRs, not cosine.")
    ] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Score trials from stored embeddings (cosine, voxceleb_trainer crops, or PLDA)."""
    from xvec.workflows.backend import score_with_backend
    from xvec.workflows.score import score_to_file

    if backend is not None:
        count = score_with_backend(
            backend, embeddings, trials, output, norm=norm.value, force=force
        )
    else:
        count = score_to_file(
            embeddings, trials, output, norm=norm.value, cohort=cohort, top_k=top_k, force=force
        )
    out.print(f"{count} scores -> {output}")


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
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Target and non-target score histograms with the EER threshold."""
    from xvec.workflows.plot import plot_score_histogram

    metrics = plot_score_histogram(scores, trials, output, title, force=force)
    out.print(
        f"histogram -> {output} (EER {metrics.eer:.2f} %, threshold {metrics.eer_threshold:.4f})"
    )


@plot_app.command("det")
@one_line_errors
def plot_det_command(
    scores: Annotated[list[Path], typer.Argument(help="One or more score files to compare.")],
    trials: Annotated[Path, typer.Option("--trials", "-t")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("det.png"),
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """DET curves (normal-deviate axes) of one or more score files."""
    from xvec.workflows.plot import plot_det_files

    plot_det_files(scores, trials, output, force=force)
    out.print(f"DET curves -> {output}")


@plot_app.command("training")
@one_line_errors
def plot_training_command(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (holds log.jsonl).")],
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Loss, accuracy and EER curves from a run's JSON-lines log."""
    from xvec.workflows.plot import plot_run

    out.print(f"training curves -> {plot_run(run_dir, output, force=force)}")


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
        from xvec.training import launch_distributed

        raise typer.Exit(launch_distributed(recipe, set_ or [], resume, nproc))
    from xvec.report_training import ConsoleTrainingObserver, training_outcome_text
    from xvec.training import Interrupted, train

    try:
        outcome = train(loaded, resume=resume, observer=ConsoleTrainingObserver(err))
    except Interrupted as exc:
        command = ["xvec", "train", str(recipe)]
        for item in set_ or []:
            command += ["--set", item]
        exc.args = (f"{exc}. Resume with: {shlex.join([*command, '--resume'])}",)
        raise
    if outcome is not None:  # paths whole, not folded
        out.print(training_outcome_text(outcome), markup=False, soft_wrap=True)


@app.command("average")
@one_line_errors
def average_command(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (its models/ folder).")],
    last: Annotated[int, typer.Option("--last", help="Average the newest N per-epoch models.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Checkpoint to write (default RUN_DIR/avg.safetensors)."
        ),
    ] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Average a run's last N per-epoch models (weights and BatchNorm statistics)."""
    from xvec.workflows.average import average_run

    averaged = average_run(run_dir, last, output, force=force)
    names = ", ".join(source.name for source in averaged.sources)
    out.print(
        f"averaged {len(averaged.sources)} models ({names}) -> {averaged.output}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- import, data


OutputOption = Annotated[Path, typer.Option("--output", "-o", help="xvec checkpoint to write.")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", help="Model parameter NAME=VALUE (repeatable), e.g. C=512."),
]


def _config_option(what: str) -> Any:
    return Annotated[
        Path | None, typer.Option("--config", help=f"{what}, checked against the weights.")
    ]


def _import(
    fmt: str, source: Path, output: Path, config: Path | None, force: bool, **options: Any
) -> None:
    """Run one format's importer and print what it wrote."""
    from xvec.interop import import_checkpoint

    summary = import_checkpoint(fmt, source, output, config=config, force=force, **options)
    out.print(summary.describe(source, fmt), markup=False, highlight=False, soft_wrap=True)


@one_line_errors
def import_vt_command(
    source: Annotated[Path, typer.Argument(help="voxceleb_trainer .model file.")],
    output: OutputOption,
    config: _config_option("VT's YAML config") = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Architecture (e.g. ResNetSE34L); default: read off the weights."
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", "--encoder-type", help="VT pooling: SAP, ASP, TAP, MAX, ECA."),
    ] = None,
    n_mels: Annotated[
        int | None, typer.Option("--n-mels", help="Mel bands (VT's --n_mels).")
    ] = None,
    log_input: Annotated[
        bool | None,
        typer.Option("--log-input/--no-log-input", help="VT's --log_input (log of the mel input)."),
    ] = None,
    nout: Annotated[
        int | None, typer.Option("--nout", help="Embedding size (VT's --nOut).")
    ] = None,
    trainfunc: Annotated[
        str | None, typer.Option("--trainfunc", help="VT loss, to import its head too.")
    ] = None,
    margin: Annotated[float | None, typer.Option(help="Loss margin (VT's --margin).")] = None,
    scale: Annotated[float | None, typer.Option(help="Loss scale (VT's --scale).")] = None,
    params: ParamOption = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Convert a voxceleb_trainer .model file, architecture read off the weights."""
    from xvec.interop import model_overrides

    overrides = model_overrides(
        params or [], encoder_type=encoder, n_mels=n_mels, log_input=log_input, nOut=nout
    )
    _import(
        "vt",
        source,
        output,
        config,
        force,
        overrides=overrides,
        model=model,
        trainfunc=trainfunc,
        margin=margin,
        scale=scale,
    )


@one_line_errors
def import_wespeaker_command(
    source: Annotated[Path, typer.Argument(help="WeSpeaker avg_model.pt / model.pt.")],
    output: OutputOption,
    config: _config_option("WeSpeaker's config.yaml") = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Architecture; default: read off the weights."),
    ] = None,
    params: ParamOption = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Convert a WeSpeaker checkpoint (ResNet, CAM++), architecture read off the weights."""
    from xvec.interop import parse_params

    overrides = parse_params(params or [])
    _import("wespeaker", source, output, config, force, overrides=overrides, model=model)


@one_line_errors
def import_speechbrain_command(
    source: Annotated[Path, typer.Argument(help="SpeechBrain embedding_model.ckpt.")],
    output: OutputOption,
    config: _config_option("SpeechBrain's hyperparams.yaml") = None,
    params: ParamOption = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Convert a SpeechBrain ECAPA-TDNN checkpoint, architecture read off the weights."""
    from xvec.interop import parse_params

    _import("speechbrain", source, output, config, force, overrides=parse_params(params or []))


@one_line_errors
def import_3dspeaker_command(
    source: Annotated[Path, typer.Argument(help="3D-Speaker embedding-model checkpoint.")],
    output: OutputOption,
    config: _config_option("3D-Speaker's training YAML") = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="CAMPPlus, ERes2Net or ERes2NetV2; default: read off the weights."
        ),
    ] = None,
    params: ParamOption = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Convert a 3D-Speaker checkpoint (CAM++, ERes2Net, ERes2NetV2) with its own front end."""
    from xvec.interop import parse_params

    overrides = parse_params(params or [])
    _import("3dspeaker", source, output, config, force, overrides=overrides, model=model)


import_app.command("vt")(import_vt_command)
import_app.command("wespeaker")(import_wespeaker_command)
import_app.command("speechbrain")(import_speechbrain_command)
import_app.command("3dspeaker")(import_3dspeaker_command)
app.command("import-vt", help="Alias of 'xvec import vt': convert a voxceleb_trainer .model file.")(
    import_vt_command
)


@app.command("export")
@one_line_errors
def export_command(
    model: Annotated[Path, typer.Argument(help="xvec checkpoint (.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.onnx,
    tolerance: Annotated[
        float, typer.Option(help="Largest allowed difference from the PyTorch model.")
    ] = 1e-4,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Export a model and verify it: ONNX/TorchScript take the 16 kHz waveform (front end
    included); vt writes voxceleb_trainer's .model file."""
    from xvec.export import export_checkpoint

    out.print(str(export_checkpoint(model, output, fmt.value, tolerance, force=force)))


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

    out.print(report.prepared_text(prepare_voxceleb(vox1, vox2, out_dir, force=force)))


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

    out.print(report.prepared_text(prepare_speechocean762(root, out_dir, force=force)))


@prepare_app.command("folder")
@one_line_errors
def prepare_folder_command(
    root: Annotated[Path, typer.Argument(help="SPEAKER/.../*.wav tree.")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lists/train_list.txt"),
    force: Annotated[bool, FORCE_OPTION] = False,
    exclude_trials: Annotated[
        list[Path] | None,
        typer.Option(
            "--exclude-trials",
            help="Trial list whose speakers are left out (paths relative to ROOT); repeatable.",
        ),
    ] = None,
) -> None:
    """Any SPEAKER/.../*.wav tree: a train list."""
    from xvec.prepare import prepare_folder

    lists = prepare_folder(root, output, force=force, exclude_trials=exclude_trials or [])
    for trials, shared in lists.overlaps:
        report.print_warning(
            err,
            f"{shared} speaker(s) of {trials} are in the training list {output}: a model "
            f"trained on it is tested on its own speakers; pass --exclude-trials {trials}",
        )
    out.print(report.prepared_text(lists))


# --------------------------------------------------------------------------- calibration, PLDA

calibrate_app = typer.Typer(
    help="Score calibration: fit a calibration (or fusion, or QMF) on labelled trials, apply it.",
    no_args_is_help=True,
)
backend_app = typer.Typer(
    help="A PLDA back end (centering, LDA, length norm, PLDA) on stored embeddings.",
    no_args_is_help=True,
)
app.add_typer(calibrate_app, name="calibrate")
app.add_typer(backend_app, name="backend")


@calibrate_app.command("fit")
@one_line_errors
def calibrate_fit_command(
    scores: Annotated[
        list[Path],
        typer.Option("--scores", help="Score file(s) of the trial list; several are fused."),
    ],
    trials: Annotated[Path, typer.Option("--trials", "-t", help="Labelled trial list.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration JSON to write.")],
    p_target: Annotated[
        float, typer.Option("--p-target", help="Prior the fit is weighted for.")
    ] = 0.05,
    quality: Annotated[
        bool,
        typer.Option("--quality", help="Add file durations as side information (QMF)."),
    ] = False,
    audio_root: Annotated[
        Path | None,
        typer.Option("--audio-root", "-r", help="Folder the trial paths are under (--quality)."),
    ] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Fit a linear calibration from scores to log-likelihood ratios on labelled trials."""
    from xvec.workflows.calibrate import fit_calibration_files

    fit = fit_calibration_files(
        scores,
        trials,
        output,
        p_target=p_target,
        quality=quality,
        audio_root=audio_root,
        force=force,
    )
    report.print_calibration_fit(fit, out)


@calibrate_app.command("apply")
@one_line_errors
def calibrate_apply_command(
    calibration: Annotated[Path, typer.Argument(help="Calibration JSON (xvec calibrate fit).")],
    scores: Annotated[
        list[Path], typer.Argument(help="Score file(s), in the order the fit was given them.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="LLR score file to write.")],
    audio_root: Annotated[
        Path | None,
        typer.Option("--audio-root", "-r", help="Folder the trial paths are under (QMF)."),
    ] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Turn score file(s) into calibrated log-likelihood ratios ('SCORE ENROLL TEST')."""
    from xvec.workflows.calibrate import apply_calibration_file

    applied = apply_calibration_file(
        calibration, scores, output, audio_root=audio_root, force=force
    )
    report.print_calibration_applied(applied, out)


@backend_app.command("fit")
@one_line_errors
def backend_fit_command(
    embeddings: Annotated[
        Path, typer.Option("--embeddings", "-e", help="Embeddings of the train list's files.")
    ],
    train_list: Annotated[
        Path, typer.Option("--list", help="Train list 'SPEAKER relative/path' (the labels).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Back end (.safetensors).")],
    lda_dim: Annotated[
        int | None, typer.Option("--lda-dim", help="Reduce to this many dimensions by LDA.")
    ] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Fit centering, optional LDA, length normalisation and a two-covariance PLDA."""
    from xvec.workflows.backend import fit_backend_files

    fit = fit_backend_files(embeddings, train_list, output, lda_dim, force=force)
    report.print_backend_fit(fit, out)


@plot_app.command("calibration")
@one_line_errors
def plot_calibration_command(
    scores: Annotated[Path, typer.Option("--scores", help="Score file 'SCORE ENROLL TEST'.")],
    trials: Annotated[Path, typer.Option("--trials", "-t", help="Trial list with the labels.")],
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="Calibration JSON; without it scores are LLRs."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG, PDF or SVG.")] = Path(
        "calibration.png"
    ),
    title: Annotated[str | None, typer.Option()] = None,
    force: Annotated[bool, FORCE_OPTION] = False,
) -> None:
    """Normalised Bayes error-rate plot (actual and minimum DCF) and reliability plot."""
    from xvec.workflows.plot import plot_calibration_files

    drawn = plot_calibration_files(scores, trials, output, calibration, title, force=force)
    which = "calibrated LLRs" if drawn.calibrated else "scores as LLRs"
    out.print(
        f"calibration plot -> {drawn.path} ({which}: Cllr {drawn.cllr:.4f}, "
        f"minCllr {drawn.min_cllr:.4f} bits)",
        highlight=False,
        soft_wrap=True,
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the ``xvec`` command line on ``argv`` (default: ``sys.argv[1:]``); the exit code.

    Usage errors of the parser (unknown or missing options, extra arguments, bad values) are
    one line, ``error: ...``, with exit code 2, like every other error of xvec's.
    """
    command = typer.main.get_command(app)
    return command.main(args=argv, prog_name="xvec", standalone_mode=False)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


def _usage_message(exc: Exception, args: list[str]) -> str:
    """A parser error as one line: the command, the problem, the fix where one is clear."""
    context = getattr(exc, "ctx", None)
    where = context.command_path if context is not None else "xvec"
    message = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
    for index, arg in enumerate(args[:-1]):
        if "extra argument" in message and arg == "--set" and "=" not in args[index + 1]:
            field = args[index + 1]
            value = args[index + 2] if index + 2 < len(args) else "VALUE"
            return (
                f"{where}: --set takes section.field=value in one argument, e.g. "
                f"--set {field}={value} (got '--set {field}')"
            )
    return f"{where}: {message}; see '{where} --help'"


_METAVARS = {
    "path": "PATH",
    "float": "FLOAT",
    "int": "INTEGER",
    "str": "TEXT",
    "bool": "[true|false]",
}


def _readable_type(shown: str | None) -> str:
    """``<path>`` -> PATH, ``<list[float]>`` -> FLOAT (repeatable: the help says so),
    ``<full|vt-crops>`` -> ``[full|vt-crops]``."""
    name = str(shown or "").strip("<>")
    name = name[5:-1] if name.startswith("list[") else name
    if "|" in name:
        return f"[{name}]"
    return _METAVARS.get(name.lower(), name.upper())


def _readable_metavars(command: Any) -> None:
    """Show PATH, FLOAT, INTEGER, TEXT or the choices ``[a|b]`` in help, not Python types;
    nothing after a flag (``--help`` included); arguments by their name (RECIPE)."""
    if getattr(command, "readable_metavars", False):
        return
    command.readable_metavars = True
    make_help_option = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for param in getattr(command, "params", []):
        if param.param_type_name == "argument":
            readable = _readable_type(param.display_type(ctx=None))
            param.metavar = (param.metavar or param.name).upper()
            param.display_type_rich = lambda ctx, shown=readable: shown
        elif param.param_type_name == "option":
            flag = getattr(param, "is_flag", False)
            param.metavar = "" if flag else _readable_type(param.display_type_rich(ctx=None))
    for sub in getattr(command, "commands", {}).values():
        _readable_metavars(sub)
