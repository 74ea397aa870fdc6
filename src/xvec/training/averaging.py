"""Checkpoint averaging: the element-wise mean of several saved models of one architecture.

Averaging the last few epochs' weights (as WeSpeaker's ``average_model.py`` does) usually gives
a slightly better and steadier model than the last epoch alone. The result is an ordinary xvec
checkpoint: the last input's metadata plus an ``averaged_from`` record.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from xvec.checkpoint import LOSS_PREFIX, MODEL_PREFIX, Checkpoint, read_checkpoint
from xvec.errors import XvecError
from xvec.files import atomic_write_bytes

__all__ = [
    "AVERAGE_FILE",
    "EPOCH_MODELS_DIR",
    "average_checkpoints",
    "average_kept_models",
    "epoch_model_path",
    "epoch_models",
    "last_saved_models",
    "prune_epoch_models",
]

EPOCH_MODELS_DIR = "models"
"""Run-folder subfolder for per-epoch models, ``epoch_0007.safetensors`` (when they are kept)."""

AVERAGE_FILE = "avg.safetensors"
"""The averaged model in a run folder (``[train] average_last``, ``xvec average``'s default)."""

_EPOCH_MODEL = re.compile(r"epoch_(\d+)\.safetensors")
_LAST_MODEL = "last.safetensors"


def epoch_model_path(run_dir: Path, epoch: int) -> Path:
    """Where the model saved at the end of ``epoch`` goes in a run folder."""
    return Path(run_dir) / EPOCH_MODELS_DIR / f"epoch_{epoch:04d}.safetensors"


def epoch_models(run_dir: Path) -> list[Path]:
    """The run's per-epoch models, by epoch number (not name: epoch_10000 follows epoch_9999)."""
    folder = Path(run_dir) / EPOCH_MODELS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _EPOCH_MODEL.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def prune_epoch_models(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` per-epoch models of a run; returns those deleted."""
    if keep < 0:
        raise ValueError(f"keep must be at least 0, got {keep}")
    models = epoch_models(run_dir)
    doomed = models[: max(0, len(models) - keep)]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def last_saved_models(run_dir: Path, n: int) -> list[Path]:
    """The last ``n`` per-epoch models of a run folder, oldest first.

    A run that kept no per-epoch models (``models/epoch_NNNN.safetensors``) offers only its
    ``last.safetensors``. Fewer than ``n`` models is an XvecError saying how many there are.
    """
    run_dir = Path(run_dir)
    if n < 1:
        raise XvecError(f"the number of models to average must be at least 1, got {n}")
    if not run_dir.is_dir():
        raise XvecError(f"{run_dir}: run folder not found")
    folder = run_dir / EPOCH_MODELS_DIR
    models = epoch_models(run_dir)
    per_epoch = bool(models)
    if not per_epoch and (run_dir / _LAST_MODEL).is_file():
        models = [run_dir / _LAST_MODEL]
    if len(models) < n:
        if per_epoch:
            kept = f"{len(models)} per-epoch models (in {folder})"
        elif models:
            kept = f"only {_LAST_MODEL} (no per-epoch models in {folder})"
        else:
            kept = "no saved model"
        hint = f"; average at most {len(models)}" if models else ""
        raise XvecError(
            f"{run_dir}: cannot average the last {n} models: the run kept {kept}{hint}; a run "
            f"keeps its last {n} epochs' models with train.keep_epoch_models = {n} (or more)"
        )
    return models[-n:]


def average_checkpoints(paths: list[Path], output: Path) -> Path:
    """Write the element-wise mean of the checkpoints ``paths`` to ``output`` (atomically).

    Floating tensors (weights, BatchNorm running means and variances, loss weights) are
    averaged in float64 and cast back to their dtype; integer and boolean tensors (BatchNorm's
    ``num_batches_tracked``) are the last checkpoint's. The metadata is the last checkpoint's
    with ``averaged_from`` (each input's path, epoch and step) added and its ``metrics``
    dropped (they measured the last model, not the average). Checkpoints of different models,
    model parameters, losses or weight names and shapes are refused with an XvecError naming
    the file. Inputs are read one at a time, so memory holds one checkpoint plus the sums.
    """
    paths = [Path(path) for path in paths]
    if not paths:
        raise XvecError("no checkpoints to average")
    output = Path(output)
    first = read_checkpoint(paths[0])
    sums = _float64_copies(first)
    sources = [_source_record(paths[0], first)]
    last = first
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        _require_same_architecture(paths[0], first, path, ckpt)
        for prefix, state in _prefixed_states(ckpt):
            for key, value in state.items():
                if value.is_floating_point():
                    sums[prefix + key].add_(value.to(torch.float64))
        sources.append(_source_record(path, ckpt))
        last = ckpt
    count = len(paths)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, state in _prefixed_states(last):
        for key, value in state.items():
            name = prefix + key
            averaged = sums[name] / count if value.is_floating_point() else value
            tensors[name] = averaged.to(value.dtype).contiguous()
    meta = copy.deepcopy(last.meta)
    meta.pop("metrics", None)
    meta["averaged_from"] = sources
    atomic_write_bytes(output, st_save(tensors, metadata={"xvec": json.dumps(meta)}))
    return output


def _prefixed_states(ckpt: Checkpoint) -> list[tuple[str, dict[str, torch.Tensor]]]:
    return [(MODEL_PREFIX, ckpt.model_state), (LOSS_PREFIX, ckpt.loss_state)]


def _float64_copies(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """Float64 accumulators for every floating tensor of ``ckpt``, keyed with their prefix."""
    return {
        prefix + key: value.to(torch.float64, copy=True)
        for prefix, state in _prefixed_states(ckpt)
        for key, value in state.items()
        if value.is_floating_point()
    }


def _source_record(path: Path, ckpt: Checkpoint) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "epoch": ckpt.meta.get("epoch"),
        "step": ckpt.meta.get("step"),
    }


def _component(meta: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The architecture-defining part of a model or loss record (not its package version)."""
    record = meta.get(key)
    if not record:
        return None
    return {
        "name": record.get("name"),
        "params": record.get("params"),
        "num_classes": record.get("num_classes"),
    }


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "none"
    text = f"'{record['name']}' {json.dumps(record['params'], sort_keys=True)}"
    return text + (f" ({record['num_classes']} classes)" if record["num_classes"] else "")


def _require_same_architecture(
    ref_path: Path, ref: Checkpoint, path: Path, ckpt: Checkpoint
) -> None:
    """An XvecError naming ``path`` unless it has ``ref``'s model, loss and tensor layout."""
    for key in ("model", "loss"):
        mine, theirs = _component(ckpt.meta, key), _component(ref.meta, key)
        if mine != theirs:
            raise XvecError(
                f"{path}: {key} {_describe(mine)} differs from {ref_path}'s {_describe(theirs)}; "
                "only checkpoints of one architecture can be averaged"
            )
    for prefix, state in _prefixed_states(ckpt):
        ref_state = dict(_prefixed_states(ref))[prefix]
        missing = sorted(set(ref_state) - set(state))
        extra = sorted(set(state) - set(ref_state))
        if missing or extra:
            parts = [f"{len(missing)} missing (e.g. {prefix}{missing[0]})"] if missing else []
            parts += [f"{len(extra)} unexpected (e.g. {prefix}{extra[0]})"] if extra else []
            raise XvecError(
                f"{path}: its weights differ from {ref_path}'s: {', '.join(parts)}; "
                "only checkpoints of one architecture can be averaged"
            )
        for key, value in state.items():
            expected = ref_state[key]
            if value.shape != expected.shape or value.dtype != expected.dtype:
                raise XvecError(
                    f"{path}: weight {prefix}{key} is {tuple(value.shape)} {value.dtype}, "
                    f"{ref_path} has {tuple(expected.shape)} {expected.dtype}; only checkpoints "
                    "of one architecture can be averaged"
                )


def average_kept_models(run_dir: Path, n: int) -> tuple[Path, list[Path]]:
    """Average a run's last ``n`` per-epoch models into its ``avg.safetensors`` (``[train]
    average_last``); returns the output and its inputs, oldest first.

    A run cut short by ``max_steps`` has fewer: the models it has are averaged.
    """
    run_dir = Path(run_dir)
    sources = last_saved_models(run_dir, max(1, min(n, len(epoch_models(run_dir)))))
    return average_checkpoints(sources, run_dir / AVERAGE_FILE), sources
