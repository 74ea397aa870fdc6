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
    """One row per system: trial counts, EER, minDCF, threshold and speed; best EER in green.

    There is a minDCF column per p_target found in the results; the caption gives the costs.
    """
    p_targets = list(dict.fromkeys(key for r in results for key in r["min_dcf"]))
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
            *(f"{dcf[p]:.4f}" if p in dcf else "-" for p in p_targets),
            f"{r['eer_threshold']:.4f}",
            f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-",
            f"{r['files_per_second']:.1f}" if r.get("files_per_second") else "-",
        )
    return table


def _dcf_caption(results: list[dict[str, Any]], p_targets: list[str]) -> str:
    """What the minDCF columns mean: normalised minDCF at p_target, with the costs used."""
    costs = sorted({(r.get("c_miss", 1.0), r.get("c_fa", 1.0)) for r in results})
    cost_text = "; ".join(
        f"C_miss = C_fa = {c_miss:g}" if c_miss == c_fa else f"C_miss = {c_miss:g}, C_fa = {c_fa:g}"
        for c_miss, c_fa in costs
    )
    priors = ", ".join(p_targets) or "-"
    return f"minDCF: normalised minimum detection cost at p_target = {priors}; {cost_text}"
