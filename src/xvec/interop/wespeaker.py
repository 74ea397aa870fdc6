"""WeSpeaker checkpoints (``avg_model.pt``, ``model_N.pt``): detect the model, convert.

WeSpeaker saves a plain state dict (``torch.save(model.state_dict())``; training checkpoints
may nest it under ``state_dict`` or ``model``, and DataParallel adds ``module.``). Its loss
head, ``projection.*``, is dropped: xvec imports the embedding extractor. The architecture
comes from the key names (ResNet: ``layer1.0.conv1.weight`` and ``seg_1.*``; CAM++: ``head.*``
and ``xvector.*``) and the sizes from the shapes (the model class's ``params_from_state``).
The optional ``config.yaml`` WeSpeaker writes next to the model is checked against them: a
value that contradicts the weights is an error, and its fbank dither is kept.

One choice no tensor settles: a ResNet's parameter-free pooling and its mel bands are tied, as
``seg_1``'s input width fits TSTP over f bands or TAP / TSDP over 2f. It comes from the config
(``model_args.pooling_func``, ``feat_dim``) or ``--param``; without them, the reading of every
published 16 kHz WeSpeaker ResNet (TSTP over 80 bands) is assumed when it fits, with a note,
and any other width is refused with the candidates.
"""

from __future__ import annotations

from collections.abc import Callable
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
# The poolings each model computes (WeSpeaker's learnt ones, ASTP and others, are refused).
MODEL_POOLINGS = {"WeSpeakerResNet": ("TSTP", "TAP", "TSDP"), "CAMPPlus": ("TSTP",)}
# Every published 16 kHz WeSpeaker ResNet config (VoxCeleb, CN-Celeb) pools TSTP over 80 bands.
PUBLISHED_RESNET_READING = ("TSTP", 80)
SAMPLE_RATE = 16000


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
        pooling = args.get("pooling_func", "TSTP")  # WeSpeaker's models default to TSTP
        if pooling not in MODEL_POOLINGS[model_name]:
            supported = ", ".join(MODEL_POOLINGS[model_name])
            raise XvecError(
                f"{path}: model_args.pooling_func: {pooling} is not supported by {model_name} "
                f"(it computes {supported})"
            )
        values["pooling_func"] = (pooling, f"{path}: model_args.pooling_func")
        for key in ("feat_dim", "embed_dim", "two_emb_layer"):
            if key in args:
                values[key] = (args[key], f"{path}: model_args.{key}")
    dataset = config.get("dataset_args") or {}
    rate = dataset.get("resample_rate", SAMPLE_RATE) if isinstance(dataset, dict) else SAMPLE_RATE
    if rate != SAMPLE_RATE:
        raise XvecError(
            f"{path}: dataset_args.resample_rate: {rate} is not supported (xvec's WeSpeaker "
            f"front end reads {SAMPLE_RATE} Hz audio)"
        )
    fbank = (dataset.get("fbank_args") if isinstance(dataset, dict) else None) or {}
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


def _describe_readings(readings: dict[str, int]) -> str:
    """``TSTP with 40 mel bands, TAP or TSDP with 80``: poolings grouped by their bands."""
    by_bands: dict[int, list[str]] = {}
    for pooling, bands in readings.items():
        by_bands.setdefault(bands, []).append(pooling)
    parts = [f"{' or '.join(names)} with {bands}" for bands, names in by_bands.items()]
    return ", ".join(parts) + " mel bands"


def _resnet_pooling(
    source: Path,
    readings: dict[str, int],
    given: dict[str, tuple[Any, str]],
    notes: list[str],
) -> str:
    """The pooling of a WeSpeaker ResNet: stated, implied by stated mel bands, or assumed.

    ``readings`` is :meth:`WeSpeakerResNet.pooling_readings`. The published reading (TSTP, 80
    bands) is assumed, with a note, when it fits and nothing is stated; any other ambiguity is
    an error naming the candidates and how to choose.
    """
    choose = "give --config (WeSpeaker's config.yaml) or --param pooling_func="
    if not readings:
        raise XvecError(f"{source}: seg_1's input width fits none of TSTP, TAP and TSDP")
    if "pooling_func" in given:
        pooling, origin = given["pooling_func"]
        if pooling not in readings:
            raise XvecError(
                f"{source}: {origin} = {pooling!r} contradicts the weights: seg_1's input fits "
                f"{_describe_readings(readings)}"
            )
        return pooling
    if "feat_dim" in given:
        feat_dim, origin = given["feat_dim"]
        fitting = [pooling for pooling, bands in readings.items() if bands == feat_dim]
        if len(fitting) == 1:
            return fitting[0]
        if fitting:
            raise XvecError(
                f"{source}: the pooling is ambiguous: {' or '.join(fitting)} with {feat_dim} mel "
                f"bands (the weights cannot tell them apart); {choose}{'|'.join(fitting)}"
            )
        raise XvecError(
            f"{source}: {origin} = {feat_dim!r} contradicts the weights: seg_1's input fits "
            f"{_describe_readings(readings)}"
        )
    if len(readings) == 1:
        return next(iter(readings))
    published, bands = PUBLISHED_RESNET_READING
    if readings.get(published) == bands:
        others = {key: value for key, value in readings.items() if key != published}
        notes.append(
            f"assumed pooling_func={published!r} with {bands} mel bands (not stored; every "
            f"published 16 kHz WeSpeaker ResNet uses it; seg_1 also fits "
            f"{_describe_readings(others)}: give --param pooling_func or --config if so)"
        )
        return published
    raise XvecError(
        f"{source}: the pooling is ambiguous: seg_1's input fits {_describe_readings(readings)} "
        f"(the weights cannot tell them apart); {choose}{'|'.join(readings)}"
    )


def _from_weights(
    source: Path, read: Callable[..., Any], state: dict[str, torch.Tensor], **options: Any
) -> Any:
    """``read(state, **options)``, a model class's reading of the weights; its error names
    ``source``."""
    try:
        return read(state, **options)
    except XvecError as exc:
        raise XvecError(f"{source}: {exc}") from exc


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
            "supported: ResNet18-293 (TSTP, TAP or TSDP pooling) and CAM++"
        )
    if model is not None and registry.get_entry("model", model).name != detected:
        raise XvecError(
            f"{source}: --model {model} contradicts the weights, which are a {detected}"
        )
    cls = registry.get_class("model", detected)
    given = _config_values(config, detected) if config is not None else {}
    given.update({key: (value, "--param " + key) for key, value in overrides.items()})
    notes: list[str] = []
    chosen: dict[str, Any] = {}  # what the weights read under: the pooling (ResNet)
    if detected == "WeSpeakerResNet":
        readings = _from_weights(source, cls.pooling_readings, state)
        chosen["pooling_func"] = _resnet_pooling(source, readings, given, notes)
    elif "pooling_func" in given:
        value, origin = given.pop("pooling_func")
        if value != "TSTP":
            raise XvecError(f"{source}: {origin} = {value!r}: {detected} computes TSTP only")
    inferred = _from_weights(source, cls.params_from_state, state, **chosen)
    for key, (value, origin) in given.items():
        if key in inferred and inferred[key] != value:
            raise XvecError(
                f"{source}: {origin} = {value!r} contradicts the weights, which mean "
                f"{key} = {inferred[key]!r}"
            )
    params = {**inferred, **chosen, **{key: value for key, (value, _) in given.items()}}
    speaker_model = registry.build("model", detected, params)
    load_state_strict(speaker_model, state, str(source))
    head = full.get(LOSS_PREFIX + "weight")
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
