"""WeSpeaker checkpoints (``avg_model.pt``, ``model_N.pt``): detect the model, convert.

WeSpeaker saves a plain state dict (``torch.save(model.state_dict())``; training checkpoints
may nest it under ``state_dict`` or ``model``, and DataParallel adds ``module.``). Its loss
head, ``projection.*``, is dropped: xvec imports the embedding extractor. The architecture
comes from the key names (ResNet: ``layer1.0.conv1.weight`` and ``seg_1.*``; CAM++: ``head.*``
and ``xvector.*``) and the sizes from the shapes (the model class's ``params_from_state``).
The optional ``config.yaml`` WeSpeaker writes next to the model is checked against them: a
value that contradicts the weights is an error, and its fbank dither is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xvec import registry
from xvec.checkpoint import load_state_strict
from xvec.errors import XvecError
from xvec.interop.base import (
    Converted,
    read_torch_state,
    strip_yaml_comment,
    tensor_dict,
    yaml_scalar,
)

__all__ = ["convert", "detect_model", "read_yaml", "wespeaker_state"]

LOSS_PREFIX = "projection."
# WeSpeaker model names (config ``model:``) of each supported xvec model.
RESNET_DEPTHS = {f"ResNet{depth}": depth for depth in (18, 34, 50, 101, 152, 221, 293)}
CONFIG_MODELS = {**dict.fromkeys(RESNET_DEPTHS, "WeSpeakerResNet"), "CAMPPlus": "CAMPPlus"}


def wespeaker_state(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a WeSpeaker checkpoint file, read without running code."""
    obj = read_torch_state(path, "WeSpeaker checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    state = tensor_dict(obj, path, "WeSpeaker avg_model.pt / model.pt")
    return {key.removeprefix("module."): value for key, value in state.items()}


def detect_model(state: dict[str, torch.Tensor]) -> str | None:
    """The xvec model name for a WeSpeaker state dict (loss head removed), or None."""
    if all(key in state for key in ("conv1.weight", "layer1.0.conv1.weight", "seg_1.weight")):
        return "WeSpeakerResNet"
    if any(k.startswith("head.") for k in state) and any(k.startswith("xvector.") for k in state):
        return "CAMPPlus"
    return None


# --------------------------------------------------------------------------- config.yaml


def read_yaml(path: Path) -> dict[str, Any]:
    """A WeSpeaker ``config.yaml``: PyYAML when installed, else the block-style subset it uses.

    The subset is what ``yaml.dump`` writes for WeSpeaker configs: nested ``key: value``
    mappings by indentation, scalars, ``- item`` lists, ``{}``/``[]``, and comments.
    """
    if not path.is_file():
        raise XvecError(f"{path}: --config file not found")
    text = path.read_text(encoding="utf-8-sig")
    try:
        import yaml
    except ImportError:
        return _read_yaml_subset(path, text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise XvecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise XvecError(f"{path}: expected a mapping of options (a WeSpeaker config.yaml)")
    return data


def _read_yaml_subset(path: Path, text: str) -> dict[str, Any]:
    root: dict[str, Any] = {}
    stack: list[tuple[int, Any]] = [(-1, root)]  # (indent, container)
    pending: tuple[int, dict[str, Any], str] | None = None  # a "key:" awaiting its block
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_yaml_comment(raw)
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        item = body.startswith("- ") or body == "-"
        if pending is not None:
            parent_indent, parent, key = pending
            pending = None
            # yaml.dump writes a list's items at its key's own indentation
            if indent > parent_indent or (item and indent == parent_indent):
                parent[key] = [] if item else {}
                stack.append((indent, parent[key]))
        while len(stack) > 1 and (
            indent < stack[-1][0]
            or (indent == stack[-1][0] and isinstance(stack[-1][1], list) and not item)
        ):
            stack.pop()
        container = stack[-1][1]
        if item:
            if not isinstance(container, list):
                raise XvecError(f"{path}:{number}: unexpected list item")
            container.append(yaml_scalar(body[2:].strip()))
            continue
        key, sep, value = body.partition(":")
        if not sep or not isinstance(container, dict):
            raise XvecError(f"{path}:{number}: expected 'key: value'")
        key, value = key.strip().strip("'\""), value.strip()
        if value:
            container[key] = yaml_scalar(value)
        else:
            container[key] = None
            pending = (indent, container, key)
    return root


def _config_values(path: Path, model_name: str) -> dict[str, tuple[Any, str]]:
    """Model parameters a WeSpeaker config states, each with where it says so."""
    config = read_yaml(path)
    values: dict[str, tuple[Any, str]] = {}
    name = config.get("model")
    if isinstance(name, str):
        if CONFIG_MODELS.get(name) not in (None, model_name):
            raise XvecError(
                f"{path}: model: {name} contradicts the weights, which are a {model_name}"
            )
        if name in RESNET_DEPTHS:
            values["depth"] = (RESNET_DEPTHS[name], f"{path}: model: {name}")
    args = config.get("model_args") or {}
    if isinstance(args, dict):
        pooling = args.get("pooling_func", "TSTP")
        if pooling != "TSTP":
            raise XvecError(
                f"{path}: model_args.pooling_func: {pooling} is not supported (only TSTP)"
            )
        for key in ("feat_dim", "embed_dim", "two_emb_layer"):
            if key in args:
                values[key] = (args[key], f"{path}: model_args.{key}")
    fbank = (config.get("dataset_args") or {}).get("fbank_args") or {}
    if isinstance(fbank, dict):
        for key, expected in (("frame_shift", 10), ("frame_length", 25)):
            if fbank.get(key, expected) != expected:
                raise XvecError(
                    f"{path}: dataset_args.fbank_args.{key}: {fbank[key]} is not supported "
                    f"(xvec's WeSpeaker front end uses {expected} ms)"
                )
        if "num_mel_bins" in fbank:
            values.setdefault(
                "feat_dim", (fbank["num_mel_bins"], f"{path}: dataset_args.fbank_args")
            )
        if "dither" in fbank:
            values["dither"] = (fbank["dither"], f"{path}: dataset_args.fbank_args.dither")
    return values


# --------------------------------------------------------------------------- conversion


def convert(
    source: Path,
    config: Path | None,
    overrides: dict[str, Any],
    *,
    model: str | None = None,
) -> Converted:
    """Rebuild a WeSpeaker ResNet or CAM++ checkpoint as the matching xvec model."""
    source = Path(source)
    full = wespeaker_state(source)
    state = {k: v for k, v in full.items() if not k.startswith(LOSS_PREFIX)}
    detected = detect_model(state)
    if detected is None:
        sample = ", ".join(list(state)[:4]) or "none"
        raise XvecError(
            f"{source}: not a WeSpeaker ResNet or CAM++ state dict (keys: {sample}, ...); "
            "supported: ResNet18-293 (TSTP) and CAM++"
        )
    if model is not None and registry.get_entry("model", model).name != detected:
        raise XvecError(
            f"{source}: --model {model} contradicts the weights, which are a {detected}"
        )
    cls = registry.get_class("model", detected)
    try:
        inferred = cls.params_from_state(state)
    except XvecError as exc:
        raise XvecError(f"{source}: {exc}") from exc
    given = _config_values(config, detected) if config is not None else {}
    given.update({key: (value, "--param " + key) for key, value in overrides.items()})
    for key, (value, origin) in given.items():
        if key in inferred and inferred[key] != value:
            raise XvecError(
                f"{source}: {origin} = {value!r} contradicts the weights, which mean "
                f"{key} = {inferred[key]!r}"
            )
    params = {**inferred, **{key: value for key, (value, _) in given.items()}}
    speaker_model = registry.build("model", detected, params)
    load_state_strict(speaker_model, state, str(source))
    head = full.get(LOSS_PREFIX + "weight")
    notes = []
    if any(k.startswith(LOSS_PREFIX) for k in full):
        classes = f" ({head.shape[0]} classes)" if head is not None and head.dim() == 2 else ""
        notes.append(f"loss head projection.*{classes} left out")
    extra = {
        "imported_from": {
            "format": "wespeaker",
            "file": source.name,
            "inferred": sorted(inferred),
            "notes": notes,
        }
    }
    return Converted(detected, speaker_model, None, None, extra)
