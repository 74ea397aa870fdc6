"""Self-describing safetensors checkpoints and atomic writes (imports: ``xvec.interop``).

A checkpoint is one ``.safetensors`` file: model weights under ``model.``, loss parameters under
``loss.``, and in the metadata (key ``xvec``) a JSON record of everything needed to rebuild the
model: its registered name and parameters, the package that provides it, the loss, the epoch,
training metrics and the resolved recipe. No pickle is involved anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from xvec import registry
from xvec.audio import SAMPLE_RATE
from xvec.compat import xvec_version
from xvec.errors import XvecError
from xvec.files import (
    atomic_write_bytes,
    metadata_record,
    require_checkpoint_file,
    safetensors_metadata,
)

FORMAT = "xvec-checkpoint"
FORMAT_VERSION = 1
MODEL_PREFIX = "model."
LOSS_PREFIX = "loss."


@dataclass
class Checkpoint:
    """What a checkpoint holds, decoded (tensors stay on CPU)."""

    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    loss_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def model_params(self) -> dict[str, Any]:
        return self.meta["model"]["params"]


def _component_record(kind: str, name: str, params: Any) -> dict[str, Any]:
    params_dict = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    record: dict[str, Any] = {"name": name, "params": params_dict or {}}
    try:
        entry = registry.get_entry(kind, name)
        record["package"] = entry.distribution
        record["package_version"] = entry.version
    except XvecError:
        record["package"] = None
    return record


def serialize(
    model: torch.nn.Module,
    model_name: str,
    *,
    loss: torch.nn.Module | None = None,
    loss_name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Encode a model (and optionally its loss) with its full description as safetensors bytes."""
    tensors = {
        MODEL_PREFIX + key: value.detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
    }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xvec_version": xvec_version(),
        "model": _component_record("model", model_name, getattr(model, "params", {})),
        "embedding_dim": int(getattr(model, "embedding_dim", 0) or 0),
        "sample_rate": int(getattr(model, "sample_rate", SAMPLE_RATE)),
        "loss": None,
    }
    if loss is not None and loss_name is not None:
        meta["loss"] = _component_record("loss", loss_name, getattr(loss, "params", {}))
        meta["loss"]["num_classes"] = getattr(loss, "num_classes", None)
        tensors.update(
            {
                LOSS_PREFIX + key: value.detach().cpu().contiguous().clone()
                for key, value in loss.state_dict().items()
            }
        )
    meta.update(extra or {})
    return st_save(tensors, metadata={"xvec": json.dumps(meta)})


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, model_name: str, **kwargs: Any
) -> Path:
    """Atomically write a self-describing checkpoint; see :func:`serialize` for arguments."""
    path = Path(path)
    atomic_write_bytes(path, serialize(model, model_name, **kwargs))
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint file; anything that is not one gives a one-line error."""
    path = Path(path)
    require_checkpoint_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise XvecError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from exc
    try:
        tensors = st_load(data)
        metadata = safetensors_metadata(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise XvecError(
            f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:120]}); "
            "is it truncated, or a voxceleb_trainer .model (use 'xvec import vt')?"
        ) from exc
    raw = metadata.get("xvec")
    if raw is None:
        raise XvecError(
            f"{path}: safetensors file without xvec metadata; it was not written by xvec "
            "(import voxceleb_trainer models with 'xvec import vt')"
        )
    meta = metadata_record(path, raw, "xvec", "checkpoint")
    if meta.get("format") != FORMAT:
        raise XvecError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    _check_component(path, meta, "model", required=True)
    _check_component(path, meta, "loss", required=False)
    _check_finite(path, tensors)
    model_state = {
        k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)
    }
    loss_state = {k[len(LOSS_PREFIX) :]: v for k, v in tensors.items() if k.startswith(LOSS_PREFIX)}
    return Checkpoint(meta=meta, model_state=model_state, loss_state=loss_state)


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """NaN or Inf weights are refused at load, naming the first such tensor.

    Loaded, they would only surface later as NaN embeddings, blamed on an audio file. One
    ``isfinite`` pass per floating tensor, no copy of the weights.
    """
    floating = [(key, value) for key, value in tensors.items() if value.is_floating_point()]
    if not floating:
        return
    finite = torch.stack([torch.isfinite(value).all() for _, value in floating])
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten().tolist()
    raise XvecError(
        f"{path}: tensor '{floating[bad[0]][0]}' holds NaN or Inf values ({len(bad)} of "
        f"{len(floating)} weight tensors do); the checkpoint is unusable (did training "
        "diverge?); use an earlier checkpoint"
    )


def _check_component(path: Path, meta: dict[str, Any], key: str, *, required: bool) -> None:
    """The ``model`` (or ``loss``) record must be an object with a string name and a dict."""
    record = meta.get(key)
    if record is None and not required:
        return
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("name"), str)
        or not isinstance(record.get("params", {}), dict)
    ):
        raise XvecError(
            f"{path}: checkpoint metadata field '{key}' is missing or malformed (expected an "
            "object with 'name' and 'params'); the file is damaged or not an xvec checkpoint"
        )
    record.setdefault("params", {})
    if key == "loss" and not isinstance(meta.get("embedding_dim"), int):
        raise XvecError(f"{path}: checkpoint metadata field 'embedding_dim' is missing or invalid")


# PEP 508 distribution names and PEP 440 versions: only such text goes into a pip command.
_PACKAGE_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_PACKAGE_VERSION = re.compile(
    r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
    r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$",
    re.IGNORECASE,
)


def _missing_component(path: Path, kind: str, record: dict[str, Any], exc: XvecError) -> XvecError:
    package = record.get("package")
    name = record.get("name")
    if package and package != "xvec":
        if not isinstance(package, str) or not _PACKAGE_NAME.fullmatch(package):
            return XvecError(
                f"{path}: this checkpoint needs {kind} '{name}' from a package that is not "
                "installed (its recorded package name is not a valid one; ask who made it)"
            )
        version = record.get("package_version")
        valid_version = isinstance(version, str) and _PACKAGE_VERSION.fullmatch(version)
        spec = f"{package}=={version}" if valid_version else package
        return XvecError(
            f"{path}: this checkpoint needs {kind} '{name}' from package '{package}', "
            f"which is not installed; install it (pip install '{spec}')"
        )
    return XvecError(f"{path}: {exc}")


def build_model(path: str | Path, ckpt: Checkpoint) -> torch.nn.Module:
    """Instantiate the checkpoint's model class from its recorded parameters and load weights."""
    path = Path(path)
    record = ckpt.meta["model"]
    try:
        model = registry.build("model", record["name"], record["params"])
    except XvecError as exc:
        raise _missing_component(path, "model", record, exc) from exc
    load_state_strict(model, ckpt.model_state, str(path))
    return model


def build_loss(path: str | Path, ckpt: Checkpoint) -> torch.nn.Module | None:
    """Instantiate the checkpoint's loss (if it has one) and load its parameters."""
    record = ckpt.meta.get("loss")
    if not record:
        return None
    try:
        loss = registry.build(
            "loss",
            record["name"],
            record["params"],
            embedding_dim=ckpt.meta["embedding_dim"],
            num_classes=record.get("num_classes"),
        )
    except XvecError as exc:
        raise _missing_component(Path(path), "loss", record, exc) from exc
    load_state_strict(loss, ckpt.loss_state, str(path))
    return loss


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model from a checkpoint's metadata alone, in eval mode, ready for inference."""
    ckpt = read_checkpoint(path)
    return build_model(path, ckpt).to(device).eval()


def load_state_strict(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    hint: str = "check the architecture options (model, encoder, n_mels, nOut, loss)",
) -> None:
    """Load a state dict, naming the first few missing, unexpected or mis-shaped keys."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs expected {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} of wrong shape (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise XvecError(
            f"{source}: weights do not fit {type(module).__name__}: {'; '.join(problems)}; {hint}"
        )
    module.load_state_dict(state, strict=True)
