"""Rich renderings shared by the CLI and the training loop."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 160  # tables stay readable in logs and pipes, where rich would assume 80 columns


def make_console(stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal, wide enough for the metrics table."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


def metrics_table(results: list[dict[str, Any]], title: str) -> Table:
    """One row per system: trial counts, EER, minDCF, threshold and speed; best EER in green."""
    table = Table(title=title)
    for column, justify in [
        ("system", "left"),
        ("trials", "right"),
        ("targets", "right"),
        ("non-targets", "right"),
        ("EER %", "right"),
        ("minDCF 0.05", "right"),
        ("minDCF 0.01", "right"),
        ("EER threshold", "right"),
        ("time s", "right"),
        ("files/s", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    best = min(r["eer"] for r in results) if len(results) > 1 else None
    for r in results:
        dcf = r["min_dcf"]
        eer = f"{r['eer']:.4f}"
        table.add_row(
            r["name"],
            str(r["n_trials"]),
            str(r["n_target"]),
            str(r["n_nontarget"]),
            f"[bold green]{eer}[/]" if best is not None and r["eer"] == best else eer,
            f"{dcf.get('0.05', float('nan')):.4f}",
            f"{dcf.get('0.01', float('nan')):.4f}",
            f"{r['eer_threshold']:.4f}",
            f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-",
            f"{r['files_per_second']:.1f}" if r.get("files_per_second") else "-",
        )
    return table
