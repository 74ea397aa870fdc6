"""3D-Speaker checkpoints (CAM++, ERes2Net, ERes2Net-huge, ERes2NetV2): detect, infer, convert.

3D-Speaker's training (``speakerlab.utils.checkpoint.Checkpointer``) saves
``embedding_model.ckpt`` as ``torch.save(model.state_dict())``, and its published models
(``campplus_*.bin``, ``pretrained_eres2net*.ckpt`` ...) are the same bare state dicts; a dict
nesting one under ``state_dict``/``model``/``embedding_model``, and DataParallel's ``module.``,
are accepted too. Nothing in the pickle is executed.

The architecture comes from the key names (CAM++: ``head.*`` and ``xvector.*``; ERes2Net:
``layer1_downsample`` and ``fuse_mode12``; ERes2NetV2: ``layer3_ds`` and ``fuse34``) and the
sizes from the shapes. Two things no tensor decides:

- ERes2Net's pooling and mel bands are tied: ``seg_1``'s input width fits TSTP at f bands or
  TAP/TSDP at 2f. Every published configuration uses TSTP with 80 bands, so that reading is
  assumed when it fits; otherwise the pooling must come from ``--config`` (3D-Speaker's YAML:
  ``embedding_model.args.pooling_func``) or ``--param pooling=...``, and the import stops with
  the candidates.
- Mean normalisation of the fbank (``FBank(mean_nor=...)``): on in ``infer_sv.py`` and every
  published configuration, so assumed on unless the config says otherwise.

The front end is 3D-Speaker's: Kaldi fbank (povey window, dither 0) of the unscaled waveform.
The YAML, when given, is checked against the weights: a value that contradicts them is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xvec import registry
from xvec.checkpoint import load_state_strict
from xvec.errors import XvecError
from xvec.interop.base import Converted, read_torch_state, tensor_dict
from xvec.interop.wespeaker import read_yaml
from xvec.models.eres2net import pooled_width_options

__all__ = ["convert", "detect_model", "read_config", "threedspeaker_state"]

FORMAT = "3dspeaker"
FBANK_CLASS = "speakerlab.process.processor.FBank"
PUBLISHED_FEAT_DIM = 80
PUBLISHED_BASE_WIDTHS = (32, 26, 24)  # ERes2Net, ERes2NetV2, ERes2Net-huge / V2 w24s4ep4
# 3D-Speaker's embedding_model.obj -> (xvec model, its constructor defaults as xvec params).
ERES2NET_DEFAULTS = {
    "feat_dim": 80,
    "embed_dim": 192,
    "pooling": "TSTP",
    "two_emb_layer": False,
    "num_blocks": (3, 4, 6, 3),
}
MODEL_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "speakerlab.models.campplus.DTDNN.CAMPPlus": (
        "CAMPPlus",
        {"feat_dim": 80, "embed_dim": 512, "growth_rate": 32, "bn_size": 4, "init_channels": 128},
    ),
    "speakerlab.models.eres2net.ERes2Net.ERes2Net": (
        "ERes2Net",
        {**ERES2NET_DEFAULTS, "m_channels": 32, "base_width": 32, "scale": 2, "expansion": 2},
    ),
    "speakerlab.models.eres2net.ERes2Net_huge.ERes2Net": (
        "ERes2Net",
        {**ERES2NET_DEFAULTS, "m_channels": 64, "base_width": 24, "scale": 3, "expansion": 4},
    ),
    "speakerlab.models.eres2net.ERes2NetV2.ERes2NetV2": (
        "ERes2NetV2",
        {**ERES2NET_DEFAULTS, "m_channels": 64, "base_width": 26, "scale": 2, "expansion": 2},
    ),
}
# 3D-Speaker's argument names -> xvec's parameter names.
ARGUMENT_NAMES = {
    "feat_dim": "feat_dim",
    "embedding_size": "embed_dim",
    "m_channels": "m_channels",
    "baseWidth": "base_width",
    "scale": "scale",
    "expansion": "expansion",
    "pooling_func": "pooling",
    "two_emb_layer": "two_emb_layer",
    "num_blocks": "num_blocks",
    "growth_rate": "growth_rate",
    "bn_size": "bn_size",
    "init_channels": "init_channels",
}
IGNORED_ARGUMENTS = {"memory_efficient"}  # training-time only
FIXED_ARGUMENTS = {"config_str": "batchnorm-relu"}  # the only value xvec's CAM++ implements
CAMPPLUS_FRONT_END = {"window": "povey", "dither": 0.0, "toolkit": "3dspeaker"}
Origin = tuple[Any, str]  # a value and where it was stated


def threedspeaker_state(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a 3D-Speaker checkpoint file, read without running code."""
    obj = read_torch_state(path, "3D-Speaker checkpoint")
    for key in ("state_dict", "model", "embedding_model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    state = tensor_dict(obj, path, "3D-Speaker embedding_model.ckpt / pretrained_*.ckpt")
    return {key.removeprefix("module."): value for key, value in state.items()}


def detect_model(state: dict[str, torch.Tensor]) -> str | None:
    """The xvec model name for a 3D-Speaker embedding-model state dict, or None."""
    if any(k.startswith("head.") for k in state) and any(k.startswith("xvector.") for k in state):
        return "CAMPPlus"
    if "layer3_ds.weight" in state and "fuse34.local_att.0.weight" in state:
        return "ERes2NetV2"
    if "layer1_downsample.weight" in state and "fuse_mode12.local_att.0.weight" in state:
        return "ERes2Net"
    return None


def _not_supported(source: Path, state: dict[str, torch.Tensor]) -> XvecError:
    weight = state.get("weight")
    if (
        weight is not None
        and weight.dim() == 2
        and all(k == "weight" or k.startswith("blocks.") for k in state)
    ):
        return XvecError(
            f"{source}: this is 3D-Speaker's classifier ({weight.shape[0]} classes), the loss "
            "head; import the embedding_model.ckpt next to it"
        )
    sample = ", ".join(list(state)[:4]) or "none"
    return XvecError(
        f"{source}: not a 3D-Speaker CAM++, ERes2Net or ERes2NetV2 state dict (keys: {sample}, "
        "...); supported: CAM++, ERes2Net (and ERes2Net-huge), ERes2NetV2"
    )


# --------------------------------------------------------------------------- the YAML config


def _as_param(value: Any) -> Any:
    """A list as a tuple, the type xvec's parameters hold it in (``num_blocks``)."""
    return tuple(value) if isinstance(value, list) else value


def _resolve(value: Any, top: dict[str, Any]) -> Any:
    """3D-Speaker's ``<name>`` references to top-level values, resolved."""
    if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
        return top.get(value[1:-1], value)
    return value


def read_config(path: Path, model_name: str) -> dict[str, Origin]:
    """Model parameters a 3D-Speaker training YAML states (its model class's defaults
    included), each with where it says so; a front end or option xvec does not reproduce is an
    error."""
    config = read_yaml(path)
    section = config.get("embedding_model")
    if not isinstance(section, dict) or not isinstance(section.get("obj"), str):
        raise XvecError(f"{path}: no embedding_model.obj (is this a 3D-Speaker training YAML?)")
    obj = section["obj"]
    if obj not in MODEL_CLASSES:
        raise XvecError(f"{path}: embedding_model.obj {obj} is not supported by this importer")
    implied, defaults = MODEL_CLASSES[obj]
    if implied != model_name:
        raise XvecError(f"{path}: embedding_model.obj {obj} contradicts the weights ({model_name})")
    values: dict[str, Origin] = {
        key: (value, f"{path}: {obj} default") for key, value in defaults.items()
    }
    args = section.get("args") or {}
    if not isinstance(args, dict):
        raise XvecError(f"{path}: embedding_model.args is not a mapping")
    for name, raw in args.items():
        value = _resolve(raw, config)
        where = f"{path}: embedding_model.args.{name}"
        if name in IGNORED_ARGUMENTS:
            continue
        if name in FIXED_ARGUMENTS:
            if value != FIXED_ARGUMENTS[name]:
                raise XvecError(f"{where}: {value} is not supported ({FIXED_ARGUMENTS[name]} is)")
            continue
        if name not in ARGUMENT_NAMES or (
            model_name == "CAMPPlus" and ARGUMENT_NAMES[name] not in defaults
        ):
            raise XvecError(f"{where} is not an option xvec's {model_name} reproduces")
        values[ARGUMENT_NAMES[name]] = (_as_param(value), where)
    front_end = _front_end_values(path, config)
    model_bands, band_origin = values.get("feat_dim", (None, ""))
    fbank_bands = front_end.get("feat_dim", (model_bands, ""))[0]
    if model_bands is not None and fbank_bands != model_bands:
        raise XvecError(
            f"{path}: feature_extractor n_mels {fbank_bands} differs from {band_origin} "
            f"({model_bands})"
        )
    values.update(front_end)
    return values


def _front_end_values(path: Path, config: dict[str, Any]) -> dict[str, Origin]:
    section = config.get("feature_extractor")
    if not isinstance(section, dict):
        return {}
    if section.get("obj") != FBANK_CLASS:
        raise XvecError(
            f"{path}: feature_extractor {section.get('obj')} is not supported (only {FBANK_CLASS})"
        )
    args = {key: _resolve(value, config) for key, value in (section.get("args") or {}).items()}
    where = f"{path}: feature_extractor.args"
    if args.get("sample_rate", 16000) != 16000:
        raise XvecError(f"{where}.sample_rate: {args['sample_rate']} is not supported (16000 is)")
    values: dict[str, Origin] = {
        "mean_norm": (bool(args.get("mean_nor", False)), f"{where}.mean_nor")
    }
    if "n_mels" in args:
        values["feat_dim"] = (args["n_mels"], f"{where}.n_mels")
    return values


# --------------------------------------------------------------------------- conversion


def _check(source: Path, key: str, inferred: Any, given: dict[str, Origin]) -> None:
    """An error if a stated value of ``key`` contradicts what the weights mean."""
    if key in given and given[key][0] != inferred:
        value, origin = given[key]
        raise XvecError(
            f"{source}: {origin} = {value!r} contradicts the weights, which mean "
            f"{key} = {inferred!r}"
        )


def _campplus_params(
    source: Path, state: dict[str, torch.Tensor], given: dict[str, Origin], notes: list[str]
) -> tuple[dict[str, Any], list[str]]:
    cls = registry.get_class("model", "CAMPPlus")
    inferred = cls.params_from_state(state)
    for key, value in inferred.items():
        _check(source, key, value, given)
    mean_norm, origin = given.pop("mean_norm", (True, ""))
    if not mean_norm:
        raise XvecError(
            f"{source}: {origin} turns mean normalisation off; xvec's CAM++ front end always "
            "applies it"
        )
    if not origin:
        notes.append(
            "assumed fbank mean normalisation (mean_nor: True, as every 3D-Speaker config)"
        )
    params = {**inferred, **CAMPPLUS_FRONT_END}
    params.update({key: value for key, (value, _) in given.items()})
    return params, sorted(inferred)


def _pooling_and_bands(
    source: Path, options: dict[str, int], given: dict[str, Origin], notes: list[str]
) -> tuple[str, int]:
    """ERes2Net's pooling and mel bands: stated, or the published TSTP / 80 when it fits."""
    if "pooling" in given:
        pooling, origin = given["pooling"]
        if pooling not in options:
            fits = ", ".join(options) or "none"
            raise XvecError(
                f"{source}: {origin} = {pooling!r} contradicts the weights (seg_1 fits {fits})"
            )
        _check(source, "feat_dim", options[pooling], given)
        return pooling, options[pooling]
    if "feat_dim" in given:
        feat_dim, origin = given["feat_dim"]
        fitting = [pooling for pooling, bands in options.items() if bands == feat_dim]
        if not fitting:
            raise XvecError(
                f"{source}: {origin} = {feat_dim!r} contradicts the weights (seg_1 fits "
                f"{_describe(options)})"
            )
        if len(fitting) == 1:
            return fitting[0], feat_dim
        raise XvecError(
            f"{source}: the pooling is ambiguous: {' or '.join(fitting)} (no weights tell them "
            f"apart); give --config (3D-Speaker's YAML) or --param pooling={'|'.join(fitting)}"
        )
    if options.get("TSTP") == PUBLISHED_FEAT_DIM:
        notes.append(
            "assumed pooling TSTP with 80 mel bands (every 3D-Speaker config; seg_1 also fits "
            "TAP or TSDP with 160)"
        )
        return "TSTP", PUBLISHED_FEAT_DIM
    if not options:
        raise XvecError(f"{source}: seg_1's input width fits no pooling of this network")
    raise XvecError(
        f"{source}: the pooling is ambiguous: seg_1's input fits {_describe(options)} (no "
        "weights tell them apart); give --config (3D-Speaker's YAML) or "
        f"--param pooling={'|'.join(options)}"
    )


def _describe(options: dict[str, int]) -> str:
    by_bands: dict[int, list[str]] = {}
    for pooling, bands in options.items():
        by_bands.setdefault(bands, []).append(pooling)
    return ", ".join(
        f"{' or '.join(names)} with {bands} mel bands" for bands, names in by_bands.items()
    )


def _eres2net_params(
    source: Path,
    model_name: str,
    state: dict[str, torch.Tensor],
    given: dict[str, Origin],
    notes: list[str],
) -> tuple[dict[str, Any], list[str]]:
    cls = registry.get_class("model", model_name)
    try:
        inferred = cls.params_from_state(state)
    except XvecError as exc:
        raise XvecError(f"{source}: {exc}") from exc
    base_widths = inferred.pop("base_widths")
    for key, value in inferred.items():
        _check(source, key, value, given)
    if "base_width" in given:
        value, origin = given["base_width"]
        if value not in base_widths:
            raise XvecError(
                f"{source}: {origin} = {value!r} contradicts the weights' group widths "
                f"(base width {_span(base_widths)})"
            )
        base_width = value
    else:
        default = cls.Params.model_fields["base_width"].default
        preferred = [width for width in (default, *PUBLISHED_BASE_WIDTHS) if width in base_widths]
        base_width = preferred[0] if preferred else base_widths[0]
        if len(base_widths) > 1:
            notes.append(
                f"base_width {base_width} (any of {_span(base_widths)} gives the same network)"
            )
    pooling, feat_dim = _pooling_and_bands(
        source, pooled_width_options(state, inferred), given, notes
    )
    if "mean_norm" not in given:
        notes.append(
            "assumed fbank mean normalisation (mean_nor: True, as every 3D-Speaker config)"
        )
    params = {key: value for key, (value, _) in given.items()}
    params.update(inferred, base_width=base_width, pooling=pooling, feat_dim=feat_dim)
    return params, sorted([*inferred, "base_width"])


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


def convert(
    source: Path,
    config: Path | None,
    overrides: dict[str, Any],
    *,
    model: str | None = None,
) -> Converted:
    """Rebuild a 3D-Speaker CAM++, ERes2Net or ERes2NetV2 checkpoint as the xvec model."""
    source = Path(source)
    state = threedspeaker_state(source)
    detected = detect_model(state)
    if detected is None:
        raise _not_supported(source, state)
    if model is not None and registry.get_entry("model", model).name != detected:
        raise XvecError(
            f"{source}: --model {model} contradicts the weights, which are a {detected}"
        )
    given = read_config(config, detected) if config is not None else {}
    for key, value in overrides.items():
        given[ARGUMENT_NAMES.get(key, key)] = (_as_param(value), f"--param {key}")
    notes: list[str] = []
    if detected == "CAMPPlus":
        params, inferred = _campplus_params(source, state, given, notes)
    else:
        params, inferred = _eres2net_params(source, detected, state, given, notes)
    speaker_model = registry.build("model", detected, params)
    load_state_strict(speaker_model, state, str(source), hint="check --config / --param values")
    extra = {
        "imported_from": {
            "format": FORMAT,
            "file": source.name,
            "inferred": inferred,
            "notes": notes,
        }
    }
    return Converted(detected, speaker_model, None, None, extra)
