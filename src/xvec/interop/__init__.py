"""Import other toolkits' checkpoints as self-describing xvec checkpoints (``xvec import``).

One module per foreign toolkit, each with ``convert(source, config, overrides, **options) ->
Converted`` that reads the file without running pickled code and infers the architecture from
the weights; :data:`FORMATS` names each format's module and the options its ``convert`` takes,
and :func:`import_checkpoint` dispatches to it and writes the xvec checkpoint. Format modules
are imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvec.config import _parse_value
from xvec.errors import XvecError
from xvec.outputs import check_outputs

__all__ = ["FORMATS", "ImportSummary", "import_checkpoint", "model_overrides", "parse_params"]


@dataclass(frozen=True)
class Format:
    """An import format: its module under ``xvec.interop``, what it reads, and the keyword
    options of its ``convert`` beyond ``config`` and ``overrides``."""

    module: str
    reads: str
    options: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {
    "vt": Format(
        "voxceleb_trainer",
        "voxceleb_trainer .model files",
        ("model", "trainfunc", "margin", "scale", "loss_params", "num_classes"),
    ),
    "wespeaker": Format("wespeaker", "WeSpeaker avg_model.pt / model.pt state dicts", ("model",)),
    "speechbrain": Format("speechbrain", "SpeechBrain embedding_model.ckpt files"),
    "3dspeaker": Format(
        "threedspeaker", "3D-Speaker CAM++ / ERes2Net(V2) embedding-model state dicts", ("model",)
    ),
}


@dataclass
class ImportSummary:
    """What :func:`import_checkpoint` wrote."""

    output: Path
    model_name: str
    params: dict[str, Any]
    loss_name: str | None
    num_classes: int | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self, source: str | Path, fmt: str) -> str:
        """One line: what was imported as what, with its parameters, and any notes."""
        params = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        loss = "no loss head"
        if self.loss_name:
            classes = f", {self.num_classes} classes" if self.num_classes else ""
            loss = f"loss {self.loss_name}{classes}"
        notes = "".join(f"; {note}" for note in self.notes)
        model = f"{self.model_name}({params})"
        return f"imported {fmt} {source} as {model}, {loss} -> {self.output}{notes}"


def parse_params(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings as model parameters; values are read as TOML (``[8, 16]``, 1.5)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise XvecError(f"--param '{item}': expected NAME=VALUE, e.g. --param C=512")
        params[key.strip()] = _parse_value(value.strip())
    return params


def model_overrides(items: list[str], **named: Any) -> dict[str, Any]:
    """The model parameters a user gave: ``named`` ones that are not None, then ``NAME=VALUE``."""
    given = {key: value for key, value in named.items() if value is not None}
    return {**given, **parse_params(items)}


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise XvecError(f"unknown import format '{fmt}'; formats: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def import_checkpoint(
    fmt: str,
    source: str | Path,
    output: str | Path,
    *,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    **format_options: Any,
) -> ImportSummary:
    """Convert ``source`` (a checkpoint of format ``fmt``) and save it as ``output``.

    ``overrides`` are model parameters that win over what the weights imply (an override that
    contradicts the weights is an error); ``format_options`` (e.g. ``model``, ``trainfunc``)
    are passed to the format's ``convert``; options left at None are not passed, and one the
    format does not take is an error naming it. Nothing is written unless everything checks.
    """
    spec = _format(fmt)
    check_outputs({output: "imported-checkpoint"}, [source, *([config] if config else [])], force)
    options = {key: value for key, value in format_options.items() if value is not None}
    unknown = [key for key in options if key not in spec.options]
    if unknown:
        raise XvecError(
            f"{source}: {', '.join(unknown)} is not an option of the '{fmt}' import format",
            options=tuple(unknown),
        )
    module = importlib.import_module(f"xvec.interop.{spec.module}")
    converted = module.convert(
        Path(source), Path(config) if config is not None else None, dict(overrides or {}), **options
    )
    path = converted.save(output)
    params = getattr(converted.model, "params", {})
    params = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
    record = converted.extra.get("imported_from", {})
    notes = list(record.get("notes", [])) if isinstance(record, dict) else []
    return ImportSummary(
        output=path,
        model_name=converted.model_name,
        params=params,
        loss_name=converted.loss_name if converted.loss is not None else None,
        num_classes=getattr(converted.loss, "num_classes", None),
        notes=notes,
    )
