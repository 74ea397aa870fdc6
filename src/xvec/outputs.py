"""The one rule for every file a command writes: never one of its inputs, never a foreign file.

Each writing command names its outputs with the kind of artefact it writes there and its
inputs, and calls :func:`check_outputs` before any work. An output that is one of the inputs
is always refused (writing it would destroy the input). An existing output is replaced only
when it holds the same kind of artefact (what this command or an earlier run of it wrote);
anything else is refused in one line naming it and ``force``. Kinds are recognised from the
first bytes of the file, so the check costs one small read per output.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from xvec.errors import XvecError
from xvec.files import safetensors_header_metadata

__all__ = ["KINDS", "artefact_kind", "check_not_listed", "check_outputs", "same_file"]

# Kind -> how a message names it.
KINDS = {
    "checkpoint": "an xvec checkpoint",
    "imported-checkpoint": "an imported xvec checkpoint",
    "embeddings": "an xvec embeddings file",
    "training-state": "an xvec training state",
    "plda": "an xvec PLDA back end",
    "calibration": "an xvec calibration",
    "scores": "a score file",
    "trials": "a trial list",
    "train-list": "a train list",
    "result": "an xvec result record",
    "json": "a JSON record",
    "image": "an image",
    "onnx": "an ONNX model",
    "torch-zip": "a PyTorch file (TorchScript or torch.save)",
    "text-table": "a text table",
}
_SAFETENSORS_KINDS = {  # metadata key -> kind
    "xvec_embeddings": "embeddings",
    "xvec_state": "training-state",
}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"%PDF-", b"<?xml", b"<svg")
_PEEK = 4096


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths name one file (also through links, or before it exists: by path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _safetensors_kind(path: Path) -> str | None:
    metadata = safetensors_header_metadata(path)
    if metadata is None:
        return None
    for key, kind in _SAFETENSORS_KINDS.items():
        if key in metadata:
            return kind
    if "xvec" in metadata:
        try:
            record = json.loads(metadata["xvec"])
        except (TypeError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        if record.get("kind") == "xvec-plda":
            return "plda"
        return "imported-checkpoint" if "imported_from" in record else "checkpoint"
    return None


def _text_kind(text: str) -> str | None:
    lines = [line.split() for line in text.splitlines()[:20] if line.strip()]
    if not lines:
        return None
    if all(len(fields) in (1, 3) for fields in lines):
        try:
            for fields in lines:
                float(fields[0])
        except ValueError:
            pass
        else:
            if all(len(fields) == 3 for fields in lines) and all(
                fields[0] in ("0", "1") for fields in lines
            ):
                return "trials"
            return "scores"
    if all(len(fields) == 2 and "/" in fields[1] for fields in lines):  # SPEAKER dir/file
        return "train-list"
    return None


def artefact_kind(path: str | Path) -> str | None:
    """The kind of artefact in ``path`` (a key of :data:`KINDS`), None when unrecognised."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(_PEEK)
    except OSError:
        return None
    kind = _safetensors_kind(path)
    if kind is not None:
        return kind
    if head.startswith(_IMAGE_MAGIC):
        return "image"
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        return "torch-zip"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        if record.get("kind") == "xvec-calibration":
            return "calibration"
        return "result" if {"eer", "min_dcf"} <= record.keys() else "json"
    if head[:1] == b"\x08":  # ONNX ModelProto: field 1 (ir_version), a varint
        return "onnx"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(mark in text for mark in "┏┃┡│└"):
        return "text-table"
    return _text_kind(text)


def check_outputs(
    outputs: Mapping[str | Path, str], inputs: Iterable[str | Path], force: bool = False
) -> None:
    """Refuse, before any work, an output that is an input or holds something else.

    ``outputs`` maps each file a command writes to the kind it writes there (:data:`KINDS`);
    ``inputs`` are the files it reads. An existing output of the same kind may be replaced;
    with ``force`` any existing file may, but an input never.
    """
    inputs = [Path(p) for p in inputs]
    for output, kind in outputs.items():
        output = Path(output)
        for source in inputs:
            if same_file(output, source):
                raise XvecError(
                    f"{output}: is also an input of this command ({source}); write the output "
                    "elsewhere"
                )
        if not os.path.lexists(output) or force:
            continue
        if output.is_dir():
            raise XvecError(f"{output}: is a folder; give a file name for the output")
        found = artefact_kind(output)
        if found != kind:
            what = KINDS[found] if found else "a file xvec did not write"
            raise XvecError(
                f"{output}: exists and is {what}, not {KINDS[kind]}; give force to replace it, "
                "or write elsewhere",
                options=("force",),
            )


def check_not_listed(output: str | Path, root: str | Path, files: Iterable[str]) -> None:
    """Refuse an output that is one of the listed input files under ``root`` (a list's audio).

    Compares resolved paths as text, so a list of a million files costs no file-system call.
    """
    try:
        relative = Path(output).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return
    if relative in set(files):
        raise XvecError(
            f"{output}: is one of the listed input files ({relative} under {root}); write the "
            "output elsewhere"
        )
