"""Rich renderings of what the CLI prints (the trainer's are in :mod:`xvec.report_training`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from xvec import registry
from xvec.files import atomic_write_bytes
from xvec.prepare import FolderLists, SpeechoceanLists, VoxcelebLists

if TYPE_CHECKING:
    from rich.console import Group

    from xvec.workflows.backend import BackendFit
    from xvec.workflows.calibrate import CalibrationApplied, CalibrationFit
    from xvec.workflows.embed import EmbedRun
    from xvec.workflows.eval import EvalRun

PIPE_WIDTH = 160  # tables stay readable in logs and pipes, where rich would assume 80 columns


def make_console(stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal and ``COLUMNS`` is not set, wide enough
    for the metrics table."""
    console = Console(stderr=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


def print_error(console: Console, message: str) -> None:
    """A user error as one line: ``error: message``."""
    from rich.markup import escape

    console.print(
        f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True
    )


def print_warning(console: Console, message: str) -> None:
    """A warning as one line: ``warning: message``."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def metrics_table(results: list[dict[str, Any]], title: str, width: int | None = None) -> Table:
    """One row per system: trial counts, EER, minDCF, threshold and speed; best EER in green.

    There is a minDCF column per p_target found in the results; the caption gives the costs.
    Given the terminal ``width``, a table that would not fit drops to :func:`_narrow_table`
    (system, EER, minDCF, threshold), then to one small table per system, so the numbers are
    never cut; system names are shortened from the left (``…/demo/best.safetensors``).
    """
    p_targets = list(dict.fromkeys(key for r in results for key in r["min_dcf"]))
    table = _wide_table(results, title, p_targets)
    if width is None or rendered_width(table) <= width:
        return table
    narrow = _narrow_table(results, title, p_targets, width)
    if narrow is not None:
        return narrow
    return _stacked_tables(results, title, p_targets, width)


def rendered_width(renderable: Any) -> int:
    """The widest line ``renderable`` prints when nothing limits its width."""
    import io

    buffer = io.StringIO()
    Console(file=buffer, width=10_000, color_system=None).print(renderable)
    return max((len(line) for line in buffer.getvalue().splitlines()), default=0)


def shorten_left(text: str, width: int) -> str:
    """``text`` cut from the left to ``width`` characters with a leading ``…``."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def _scores(r: dict[str, Any], p_targets: list[str], best: float | None) -> list[str]:
    """EER (green when best), one minDCF per p_target, the EER threshold."""
    eer = f"{r['eer']:.4f}"
    dcf = r["min_dcf"]
    return [
        f"[bold green]{eer}[/]" if best is not None and r["eer"] == best else eer,
        *(f"{dcf[p]:.4f}" if p in dcf else "-" for p in p_targets),
        f"{r['eer_threshold']:.4f}",
    ]


def _best_eer(results: list[dict[str, Any]]) -> float | None:
    return min(r["eer"] for r in results) if len(results) > 1 else None


def _wide_table(results: list[dict[str, Any]], title: str, p_targets: list[str]) -> Table:
    table = Table(title=title, caption=_dcf_caption(results, p_targets))
    for column, justify in [
        ("system", "left"),
        ("trials", "right"),
        ("targets", "right"),
        ("non-targets", "right"),
        ("EER %", "right"),
        *((f"minDCF {p}", "right") for p in p_targets),
        ("EER threshold", "right"),
        ("time s", "right"),
        ("files/s", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    best = _best_eer(results)
    for r in results:
        table.add_row(
            r["name"],
            str(r["n_trials"]),
            str(r["n_target"]),
            str(r["n_nontarget"]),
            *_scores(r, p_targets, best),
            f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-",
            f"{r['files_per_second']:.1f}" if r.get("files_per_second") else "-",
        )
    return table


def _counts_line(results: list[dict[str, Any]]) -> str:
    """The trial counts, once when every system scored the same trials."""
    counts = {(r["n_trials"], r["n_target"], r["n_nontarget"]) for r in results}
    if len(counts) != 1:
        return ""
    trials, target, nontarget = counts.pop()
    return f"{trials} trials: {target} target, {nontarget} non-target. "


def _narrow_table(
    results: list[dict[str, Any]], title: str, p_targets: list[str], width: int
) -> Table | None:
    """System, EER, minDCF and threshold only (counts in the caption); None if even that
    leaves the system column under 12 characters."""
    headers = ["EER %", *(f"minDCF {p}" for p in p_targets), "threshold"]
    rows = [_scores(r, p_targets, None) for r in results]
    columns = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    room = width - sum(columns) - 3 * len(headers) - 4  # borders and padding
    if room < 12:
        return None
    caption = _counts_line(results) + _dcf_caption(results, p_targets)
    table = Table(title=title, caption=caption, width=None)
    longest = max(len(r["name"]) for r in results)
    table.add_column("system", no_wrap=True, min_width=min(room, max(longest, 6)))
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    best = _best_eer(results)
    for r in results:
        table.add_row(shorten_left(r["name"], room), *_scores(r, p_targets, best))
    return table


def _stacked_tables(
    results: list[dict[str, Any]], title: str, p_targets: list[str], width: int
) -> Group:
    """One two-column table per system: each number on its own row."""
    from rich.console import Group

    tables = []
    best = _best_eer(results)
    for r in results:
        name = shorten_left(r["name"], max(min(width, 38) - 2, 8))  # the table's own width
        table = Table(title=name, show_header=False)
        table.add_column("metric", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        names = ["EER %", *(f"minDCF {p}" for p in p_targets), "EER threshold"]
        for name, value in zip(names, _scores(r, p_targets, best), strict=True):
            table.add_row(name, value)
        table.add_row("trials", f"{r['n_trials']} ({r['n_target']} target)")
        tables.append(table)
    return Group(title, *tables)


def print_eval(
    run: EvalRun, trials: Path, out: Console, err: Console, table_file: Path | None
) -> None:
    """``xvec eval``'s output: notes and files written on ``err``, the table on ``out`` (and in
    ``table_file``), titled with the trial list and how many of its trials were used."""
    for note in run.notes:
        err.print(f"note: {note}", highlight=False)
    for written in run.written:
        err.print("  ".join(f"{p.stem}: {p}" for p in written), highlight=False, soft_wrap=True)
    counted = f"{len(run.trials)} trials"
    if run.subset:
        counted = f"{len(run.trials)} of {run.total_trials} trials, stratified"
    title = f"{trials} ({counted})"
    out.print(*_eval_tables(run.summaries, title, out.width))
    if table_file is not None:
        from rich.console import Group

        write_table(table_file, Group(*_eval_tables(run.summaries, title, None)))


def _eval_tables(results: list[dict[str, Any]], title: str, width: int | None) -> list[Any]:
    """The metrics table, and the calibration table of the results that have one."""
    calibrated = [r for r in results if "calibration" in r]
    tables: list[Any] = [metrics_table(results, title, width=width)]
    return tables + [calibration_table(calibrated, width)] * bool(calibrated)


def print_embed(run: EmbedRun, out: Console, err: Console) -> None:
    """``xvec embed``'s output: reuse and notes on ``err``; count, speed and file on ``out``."""
    if run.resumed:
        err.print(f"resuming: {run.resumed} embeddings already computed were reused")
    for note in run.stats.notes:
        err.print(f"note: {note}", highlight=False)
    out.print(
        f"{run.count} embeddings ({run.stats.computed} computed, "
        f"{run.stats.files_per_second:.1f} files/s) -> {run.output}",
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- calibration, PLDA
#
# How to read the calibration numbers (xvec eval --calibration, xvec calibrate fit):
# - minCllr (bits) depends only on the order of the scores: the discrimination, like EER;
# - Cllr (bits) adds the cost of the scores' calibration: Cllr - minCllr is what a better
#   calibration could still gain (0 is perfect, 1 is a system that always says LLR 0);
# - actDCF is the cost of deciding at the Bayes threshold -logit(p_target) on the LLRs; it is
#   never below minDCF, and close to it when the LLRs are well calibrated at that prior;
# - threshold is that Bayes threshold mapped back to raw score units (for a one-score
#   calibration): the score from which a trial is accepted at that prior.
# The tables keep every number whole: too wide a table becomes one small table per row.


def _number_table(
    title: str, headers: list[str], rows: list[list[str]], caption: str, width: int | None
) -> Table | Group:
    """Named rows of numbers in one table, or, when that is wider than ``width``, one small
    two-column table per row, so that no number is ever cut. Headers may hold a line break."""
    table = Table(title=title, caption=caption)
    table.add_column(headers[0], no_wrap=True)
    for header in headers[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    if width is None or rendered_width(table) <= width:
        return table
    from rich.console import Group

    return Group(title, *(_row_table(headers, row, width) for row in rows), caption)


def _row_table(headers: list[str], row: list[str], width: int) -> Table:
    """One row of :func:`_number_table` as a two-column table titled with its name."""
    table = Table(title=shorten_left(row[0], max(min(width, 38) - 2, 8)), show_header=False)
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for header, cell in zip(headers[1:], row[1:], strict=True):
        table.add_row(header.replace("\n", " "), cell)
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def calibration_table(results: list[dict[str, Any]], width: int | None = None) -> Table | Group:
    """``xvec eval --calibration``: per system Cllr, minCllr, and per p_target the actDCF of
    the calibrated scores and the raw-score threshold (each result's ``calibration`` entry)."""
    p_targets = list(dict.fromkeys(p for r in results for p in r["calibration"]["act_dcf"]))
    headers = ["system", "Cllr", "minCllr"]
    headers += [f"actDCF\n{p}" for p in p_targets] + [f"threshold\n{p}" for p in p_targets]
    rows = []
    for r in results:
        entry = r["calibration"]
        values = [entry["cllr"], r.get("min_cllr")]
        values += [entry["act_dcf"].get(p) for p in p_targets]
        values += [entry["thresholds"].get(p) for p in p_targets]
        rows.append([r["name"], *map(_number, values)])
    files = ", ".join(sorted({r["calibration"]["file"] for r in results}))
    caption = (
        f"calibrated by {files}: Cllr and minCllr in bits; actDCF at the Bayes threshold of the "
        "LLRs; threshold: the raw score from which a trial is accepted"
    )
    return _number_table("calibration", headers, rows, caption, width)


def print_calibration_fit(fit: CalibrationFit, out: Console) -> None:
    """``xvec calibrate fit``'s output: the file, measures before and after on the fit trials,
    and for one score the raw-score thresholds."""
    calibration = fit.calibration
    inputs = ", ".join(calibration.inputs)
    out.print(
        f"calibration ({inputs}; p_target {calibration.p_target:g}) -> {fit.output}",
        highlight=False,
        soft_wrap=True,
    )
    headers = ["scores", "Cllr", "minCllr"]
    headers += [f"{kind}\n{p:g}" for p in fit.after.act_dcf for kind in ("actDCF", "minDCF")]
    names = [f"{path} (as LLRs)" for path in fit.score_files] + ["calibrated"]
    measures = [*fit.before, fit.after]
    rows = [[name, *map(_number, m.row())] for name, m in zip(names, measures, strict=True)]
    caption = (
        f"on the {fit.n_trials} fit trials ({fit.n_target} target, {fit.n_nontarget} "
        "non-target), so optimistic: evaluate on other trials"
    )
    out.print(_number_table("calibration fit", headers, rows, caption, out.width))
    if fit.thresholds:
        text = ", ".join(f"{t:.4f} at p_target {p:g}" for p, t in fit.thresholds.items())
        out.print(f"accept a trial from raw score {text}", highlight=False, soft_wrap=True)


def print_calibration_applied(applied: CalibrationApplied, out: Console) -> None:
    """``xvec calibrate apply``'s output: how many LLRs went where."""
    inputs = ", ".join(applied.calibration.inputs)
    out.print(f"{applied.count} LLRs ({inputs}) -> {applied.output}", highlight=False)


def print_backend_fit(fit: BackendFit, out: Console) -> None:
    """``xvec backend fit``'s output: sizes, training data, EM log-likelihood, the file."""
    backend = fit.backend
    lda = "" if backend.lda_dim is None else f"LDA to {backend.lda_dim}, "
    first, last = backend.log_likelihoods[0], backend.log_likelihoods[-1]
    iterations = len(backend.log_likelihoods) - 1
    out.print(
        f"PLDA back end: {backend.embedding_dim}-dim embeddings, {lda}PLDA in {backend.dim} "
        f"dims, from {fit.n_vectors} vectors of {fit.n_speakers} speakers "
        f"({fit.unused} other embeddings unused); log-likelihood per vector {first:.2f} -> "
        f"{last:.2f} in {iterations} EM iterations -> {fit.output}",
        highlight=False,
        soft_wrap=True,
    )


def _dcf_caption(results: list[dict[str, Any]], p_targets: list[str]) -> str:
    """What the minDCF columns mean: normalised minDCF at p_target, with the costs used."""
    costs = sorted({(r.get("c_miss", 1.0), r.get("c_fa", 1.0)) for r in results})
    cost_text = "; ".join(
        f"C_miss = C_fa = {c_miss:g}" if c_miss == c_fa else f"C_miss = {c_miss:g}, C_fa = {c_fa:g}"
        for c_miss, c_fa in costs
    )
    priors = ", ".join(p_targets) or "-"
    return f"minDCF: normalised minimum detection cost at p_target = {priors}; {cost_text}"


LOG_PROGRESS_SECONDS = 30.0  # in a log file (no terminal), one progress line this often


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
    """A rich progress bar showing files/s, usable as an ``embed_files`` progress callback.

    The rate counts from entering the bar, so the first batch's time is in it; in a log file
    (no terminal) one plain line every :data:`LOG_PROGRESS_SECONDS` instead of a bar.
    """

    def __init__(self, description: str, console: Console | None = None) -> None:
        from rich.progress import Progress

        console = console or make_console(stderr=True)
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            *_progress_columns(),
            console=console,
            transient=True,
            disable=not self.live,  # a log gets no bar (rich would add a blank line)
        )
        self.description = description
        self.task = None
        self.count = 0
        self.start = self._last_line = time.perf_counter()

    def __enter__(self) -> FileProgress:
        self.progress.__enter__()
        self.start = self._last_line = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, advance: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=total, rate="")
        self.count += advance
        now = time.perf_counter()
        rate = f"{self.count / max(now - self.start, 1e-9):.1f} files/s"
        self.progress.update(self.task, advance=advance, rate=rate)
        if not self.live and now - self._last_line >= LOG_PROGRESS_SECONDS and self.count < total:
            self._last_line = now
            self.console.print(
                f"{self.description} {self.count}/{total} files, {rate}", highlight=False
            )


def registry_table(kind: str) -> Table:
    """``xvec models``/``xvec losses``: each entry with its package, summary and parameters."""
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


def class_table(summary: dict[str, Any], title: str) -> Table:
    """``xvec count-classes``: speakers, utterances and utterances per speaker."""
    table = Table(title=title)
    table.add_column("speakers (nClasses)", justify="right", style="bold")
    table.add_column("utterances", justify="right")
    table.add_column("min / median / max per speaker", justify="right")
    table.add_row(
        str(summary["speakers"]),
        str(summary["utterances"]),
        f"{summary['min_per_speaker']} / {summary['median_per_speaker']:g} / "
        f"{summary['max_per_speaker']}",
    )
    return table


def write_table(path: Path, table: Table | Group) -> None:
    """A plain-text copy of a rich table (no colours), written atomically."""
    import io

    buffer = io.StringIO()
    Console(file=buffer, width=PIPE_WIDTH, color_system=None).print(table)
    atomic_write_bytes(path, buffer.getvalue().encode())


def prepared_text(lists: FolderLists | SpeechoceanLists | VoxcelebLists) -> str:
    """What ``xvec prepare`` prints for the lists a preparer wrote."""
    train = lists.train
    if isinstance(lists, FolderLists):
        text = f"{train.speakers} speakers, {train.files} files -> {train.path}"
        if lists.skipped:
            text += f" ({lists.skipped} file(s) directly in {lists.root} skipped: "
            text += "no speaker folder)"
        if lists.excluded_speakers:
            text += f"; {lists.excluded_speakers} speaker(s) of the trial list(s) left out"
        return text
    if isinstance(lists, SpeechoceanLists):
        trials = lists.trials
        text = (
            f"{train.path}: {train.speakers} speakers, {train.files} files; "
            f"{trials.path}: {trials.trials} trials ({trials.targets} target) "
            f"over {trials.speakers} speakers, {trials.files} files; "
            f"paths relative to {lists.audio}"
        )
        if lists.skipped:
            text += f" ({lists.skipped} files of speakers not in {lists.table.name} skipped)"
        return text
    head = (
        f"{train.path}: {train.speakers} speakers, {train.files} files from {lists.source} "
        f"(train_path {lists.train_path})"
    )
    return "\n".join([head, *lists.notes])
