"""A training run's resumable state (``state.safetensors``): where it stands, the network,
optimiser, schedule, loss scaler and random generators, as safetensors + JSON (no pickle)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xvec.checkpoint import load_state_strict
from xvec.errors import XvecError
from xvec.files import atomic_write_bytes, safetensors_metadata


@dataclass
class Position:
    """Where training stands: the next batch to run is ``batch`` of ``epoch``.

    ``pending_eval`` is the epoch whose closing evaluation was started but not finished (a stop
    or a kill during it); a resumed run does that evaluation first.
    """

    epoch: int = 1
    batch: int = 0
    step: int = 0
    best_eer: float | None = None
    pending_eval: int | None = None


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, values in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_state(
    path: Path,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    position: Position,
) -> None:
    """Atomically write everything needed to resume exactly (no pickle: safetensors + JSON)."""
    from safetensors.torch import save

    tensors = {
        f"net.{k}": v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()
    }
    optim_tensors, optim_plain = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    meta = {
        "position": position.__dict__,
        "optimizer": optim_plain,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    atomic_write_bytes(path, save(tensors, metadata={"xvec_state": json.dumps(meta)}))


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored per-parameter buffer (momentum, Adam moments) its parameter's memory
    layout: the state file holds them contiguous, a channels-last model's are channels-last;
    with the layouts mixed, a resumed channels-last run was not bit-identical to an
    uninterrupted one (tests/test_train.py)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_state(
    path: Path,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> Position:
    """Restore a state file written by :func:`save_state`; returns the position to continue at."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        tensors = load(data)
        meta = json.loads(safetensors_metadata(data)["xvec_state"])
    except (SafetensorError, ValueError, KeyError, OverflowError) as exc:
        raise XvecError(f"{path}: unreadable training state; remove it to start over") from exc
    net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    load_state_strict(net, net_state, str(path))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    _match_parameter_layout(optimizer)
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta["scaler"] is not None:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_keys = [k for k in tensors if k.startswith("rng.cuda.")]
        cuda_keys.sort(key=lambda k: int(k.rsplit(".", 1)[1]))  # rng.cuda.2 before rng.cuda.10
        cuda_states = [tensors[k] for k in cuda_keys]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return Position(**meta["position"])
