"""What every checkpoint importer returns, and the pickle-safe reader they share.

An importer turns another toolkit's checkpoint into an xvec model: it reads tensors without
executing pickled code, infers the architecture from tensor names and shapes (an ambiguity is an
error naming the option that settles it), and loads the weights into a registered xvec model.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xvec.checkpoint import save_checkpoint
from xvec.errors import XvecError
from xvec.files import file_problem, safetensors_header_metadata


@dataclass
class Converted:
    """A model rebuilt from a foreign checkpoint, ready to be saved as an xvec checkpoint."""

    model_name: str
    model: torch.nn.Module
    loss_name: str | None = None
    loss: torch.nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, output: str | Path) -> Path:
        """Write it as a self-describing xvec checkpoint; returns the path."""
        return save_checkpoint(
            output,
            self.model,
            self.model_name,
            loss=self.loss,
            loss_name=self.loss_name,
            extra=self.extra,
        )


def read_torch_state(path: str | Path, what: str = "PyTorch checkpoint") -> Any:
    """Read a ``torch.save`` file with ``weights_only=True``: nothing in the pickle is executed.

    A file whose unpickling would need arbitrary code is refused with an error naming the
    callable it asks for. A safetensors file is read as one (no pickle either), except xvec's
    own files, which need no import and are named as what they are.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise XvecError(f"{path}: {problem}")
    metadata = safetensors_header_metadata(path)
    if metadata is not None:
        return _read_safetensors(path, metadata)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        text = str(exc)
        culprit = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
        if culprit or ("weights_only" in text and _pickle_imports_code(path)):
            called = f" (it calls {culprit.group(1)})" if culprit else ""
            raise XvecError(
                f"{path}: refused: loading it would run arbitrary code from the pickle{called}; "
                "only plain tensor state dicts are accepted"
            ) from exc
        if "weights_only" in text:  # torch's long advice, not the reason: say what the file is
            raise XvecError(
                f"{path}: not a readable {what} (neither a torch.save zip file nor a pickle of "
                "tensors)"
            ) from exc
        first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
        raise XvecError(f"{path}: not a readable {what} ({first})") from exc


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _pickle_imports_code(path: Path) -> bool:
    """Whether ``path`` is a pickle (or a torch.save zip of one) that imports or calls code.

    The opcodes are read, never executed. Asked only after torch's restricted unpickler
    refused the file, which it does for any opcode it does not know: only a pickle that names
    code is called dangerous.
    """
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                payload = archive.read(name)
        else:
            payload = path.read_bytes()
        return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(payload))
    except Exception:  # not a pickle at all: pickletools raises ValueError, EOFError, ...
        return False


_XVEC_SAFETENSORS = {  # metadata key -> what xvec wrote the file as
    "xvec": "an xvec checkpoint",
    "xvec_embeddings": "an xvec embeddings file",
    "xvec_state": "an xvec training state",
}


def _read_safetensors(path: Path, metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of a foreign safetensors file; xvec's own files are refused, saying what they are."""
    own = next((what for key, what in _XVEC_SAFETENSORS.items() if key in metadata), None)
    if own is not None:
        use = (
            "it needs no import: use it directly (e.g. xvec eval --model)"
            if "xvec" in metadata
            else "give the other toolkit's checkpoint"
        )
        raise XvecError(f"{path}: is {own} (safetensors), not a PyTorch pickle to import; {use}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise XvecError(f"{path}: not a readable safetensors file ({first})") from exc


def tensor_dict(obj: Any, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``obj`` as a ``{name: tensor}`` state dict, or an error saying what was expected."""
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise XvecError(f"{path}: expected a state dict of tensors ({what})")
    return obj


def yaml_scalar(text: str) -> Any:
    """A plain YAML scalar as Python (quoted string, null, boolean, ``{}``/``[]``, number, text).

    Enough for the flat configs the importers read; PyYAML is not a dependency of xvec.
    """
    text = text.strip()
    if text[:1] in "'\"" and text[-1:] == text[:1] and len(text) >= 2:
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("null", "~", ""):
        return None
    if lowered in ("true", "yes", "on", "false", "no", "off"):
        return lowered in ("true", "yes", "on")
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def strip_yaml_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for index, char in enumerate(line):
        if char in "'\"":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()
