"""voxceleb_trainer (VT) ``.model`` files: read safely, infer the architecture, convert.

A VT file stores only tensors, so the architecture is read off their names and shapes: which
model (``netcnn.*`` is VGGVox, ``conv1.filterbank.*`` RawNet3, a 7x7 stem with ``sap_linear``
ResNetSE34L, a biased 3x3 stem with convolutional ``attention`` ResNetSE34V2), the stage widths
and depths, the mel bands (``torchfb...mel_scale.fb`` is ``[n_freqs, n_mels]``), the embedding
size (``fc``), the pooling (SAP and ASP differ in ``fc``'s input width) and the loss head
(``__L__.*``). Explicit options always win, but an option that contradicts the weights is an
error naming it, and a parameter no tensor decides is never guessed: it must be given, unless
every published VT configuration uses xvec's default (then the summary says it was assumed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xvec import registry
from xvec.checkpoint import load_state_strict
from xvec.errors import XvecError
from xvec.files import atomic_write_bytes
from xvec.interop.base import Converted, read_torch_state, tensor_dict, yaml_scalar

__all__ = [
    "VT_MODELS",
    "convert",
    "detect_model",
    "import_voxceleb_trainer",
    "infer_loss",
    "infer_params",
    "read_voxceleb_trainer",
    "split_voxceleb_trainer",
    "write_voxceleb_trainer",
]

VT_MODELS = ("ResNetSE34L", "ResNetSE34V2", "VGGVox40", "RawNet3")
MODEL_ALIASES = {"VGGVox": "VGGVox40"}
# The command-line option that sets each model parameter, for error messages.
FLAGS = {
    "encoder_type": "--encoder",
    "n_mels": "--n-mels",
    "log_input": "--log-input/--no-log-input",
    "nOut": "--nout",
}
# Parameters no tensor decides, with the value every published VT configuration uses (VT's
# configs/*.yaml and the README's commands for the published models all pass --log_input;
# RawNet3_AAM.yaml and VT's command line use sinc_stride 10). VGGVox has no published
# configuration and VT's command line defaults to --log_input off, so it must be given.
ASSUMED = {
    "ResNetSE34L": {"log_input": True},
    "ResNetSE34V2": {"log_input": True},
    "RawNet3": {"sinc_stride": 10},
}
REQUIRED = {"VGGVox40": ("log_input",)}
# The loss heads' state-dict keys in VT (its loss/*.py); several losses may share a layout.
LOSS_LAYOUTS: dict[frozenset[str], tuple[str, ...]] = {
    frozenset({"W"}): ("amsoftmax",),
    frozenset({"weight"}): ("aamsoftmax",),
    frozenset({"fc.weight", "fc.bias"}): ("softmax",),
    frozenset({"w", "b"}): ("angleproto", "ge2e"),
    frozenset({"softmax.fc.weight", "softmax.fc.bias", "angleproto.w", "angleproto.b"}): (
        "softmaxproto",
    ),
}
# Loss hyper-parameters that VT files do not store, with their command-line options.
LOSS_FLAGS = {"margin": "--margin", "scale": "--scale"}
CONFIG_MODEL_KEYS = ("encoder_type", "n_mels", "log_input", "nOut", "sinc_stride")


def read_voxceleb_trainer(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a VT ``.model`` file without executing any code.

    Accepts the bare state dict of the published models and the ``{"model_state_dict": ...}``
    format of current VT; a pickle that would run code is refused.
    """
    obj = read_torch_state(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    return tensor_dict(obj, path, "voxceleb_trainer .model")


def write_voxceleb_trainer(
    output: str | Path,
    model_state: dict[str, torch.Tensor],
    loss_state: dict[str, torch.Tensor],
) -> Path:
    """Write VT's ``SpeakerNet`` state dict (``__S__.`` model, ``__L__.`` loss) atomically.

    The inverse of :func:`split_voxceleb_trainer`; VT's ``--initial_model`` reads the file.
    """
    state = {f"__S__.{key}": value for key, value in model_state.items()}
    state.update({f"__L__.{key}": value for key, value in loss_state.items()})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(output, buffer.getvalue())
    return Path(output)


def split_voxceleb_trainer(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a SpeakerNet state dict into model (``__S__.``) and loss (``__L__.``) parts."""
    model_state, loss_state = {}, {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith("__S__."):
            model_state[name[len("__S__.") :]] = value
        elif name.startswith("__L__."):
            loss_state[name[len("__L__.") :]] = value
        else:
            model_state[name] = value
    return model_state, loss_state


def _infer_num_classes(loss_state: dict[str, torch.Tensor]) -> int | None:
    """The class count implied by a classification head's weight, if there is one."""
    for key in ("W", "weight", "fc.weight", "softmax.fc.weight"):
        if key in loss_state and loss_state[key].dim() == 2:
            tensor = loss_state[key]
            return int(tensor.shape[1] if key == "W" else tensor.shape[0])
    return None


# --------------------------------------------------------------------------- inference


def _shape(state: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...] | None:
    """The shape of ``state[key]`` if it exists with ``ndim`` dimensions, else None."""
    tensor = state.get(key)
    if tensor is None or tensor.dim() != ndim:
        return None
    return tuple(tensor.shape)


def _has(state: dict[str, torch.Tensor], *keys: str) -> bool:
    return all(key in state for key in keys)


def detect_model(state: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """``(model name, the keys that decided it)`` for a VT model state dict, or None."""
    if _has(state, "netcnn.0.weight", "fc.weight"):
        return "VGGVox40", "netcnn.* keys"
    if _has(state, "conv1.filterbank.low_hz_", "fc6.weight"):
        return "RawNet3", "conv1.filterbank.* (sinc front end) and fc6.* keys"
    stem = _shape(state, "conv1.weight", 4)
    if stem is None or "layer1.0.conv1.weight" not in state:
        return None
    if stem[2:] == (7, 7) and "sap_linear.weight" in state and "conv1.bias" not in state:
        return "ResNetSE34L", f"conv1.weight {stem} (7x7 stem) and sap_linear.*"
    if stem[2:] == (3, 3) and _has(state, "conv1.bias", "attention.0.weight"):
        return "ResNetSE34V2", f"conv1.weight {stem} (3x3 stem with bias) and attention.0.*"
    return None


@dataclass
class Inferred:
    """Parameters read off the weights, each with the tensor that decided it."""

    params: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: Any, evidence: str) -> None:
        self.params[name] = value
        self.evidence[name] = evidence


def _mel_bands(state: dict[str, torch.Tensor], key: str) -> tuple[int, str] | None:
    """``n_mels`` from a mel filterbank buffer ``[n_freqs, n_mels]`` (empty in old files)."""
    shape = _shape(state, key, 2)
    if shape is None or shape[1] == 0:
        return None
    return shape[1], f"{key} {shape}"


def _resnet_stages(state: dict[str, torch.Tensor], found: Inferred) -> None:
    widths, depths = [], []
    for stage in range(1, 5):
        first = _shape(state, f"layer{stage}.0.conv1.weight", 4)
        if first is None:
            return
        widths.append(first[0])
        depths.append(
            sum(1 for block in range(64) if f"layer{stage}.{block}.conv1.weight" in state)
        )
    found.set("num_filters", widths, "layer1-4.0.conv1.weight output channels")
    found.set("layers", depths, "the number of layer1-4.N blocks")


def _fc(state: dict[str, torch.Tensor], key: str, found: Inferred) -> tuple[int, int] | None:
    shape = _shape(state, f"{key}.weight", 2)
    if shape is not None:
        found.set("nOut", shape[0], f"{key}.weight {shape}")
    return shape


def _pooling(found: Inferred, fc: tuple[int, int] | None, features: int, what: str) -> None:
    """SAP pools ``features`` values per utterance, ASP twice as many (mean and std)."""
    if fc is None:
        return
    choices = {features: "SAP", 2 * features: "ASP"}
    if fc[1] in choices:
        found.set(
            "encoder_type",
            choices[fc[1]],
            f"fc.weight {fc} takes {fc[1]} inputs; {what} = {features} (SAP: x1, ASP: x2)",
        )


def _infer_resnet34l(state: dict[str, torch.Tensor], found: Inferred) -> None:
    _resnet_stages(state, found)
    mels = _mel_bands(state, "torchfb.mel_scale.fb")
    if mels:
        found.set("n_mels", *mels)
    channels = _shape(state, "sap_linear.weight", 2)
    fc = _fc(state, "fc", found)
    if channels:
        _pooling(found, fc, channels[0], f"sap_linear.weight {channels} channels")


def _infer_resnet34v2(state: dict[str, torch.Tensor], found: Inferred) -> None:
    _resnet_stages(state, found)
    attention = _shape(state, "attention.0.weight", 3)
    mels = _mel_bands(state, "torchfb.1.mel_scale.fb")
    if mels:
        found.set("n_mels", *mels)
    elif attention and found.params.get("num_filters"):
        # VT's pooling width is num_filters[3] * int(n_mels / 8); its forward pass runs
        # only when n_mels is a multiple of 8, so the width fixes n_mels.
        bands, rest = divmod(attention[1], found.params["num_filters"][3])
        if not rest:
            found.set("n_mels", 8 * bands, f"attention.0.weight {attention} ({bands} bands)")
    fc = _fc(state, "fc", found)
    if attention:
        _pooling(found, fc, attention[1], f"attention.0.weight {attention} channels")


def _infer_vggvox40(state: dict[str, torch.Tensor], found: Inferred) -> None:
    _fc(state, "fc", found)
    if "sap_linear.weight" in state:
        found.set("encoder_type", "SAP", "sap_linear.* (SAP's attention weights)")


def _infer_rawnet3(state: dict[str, torch.Tensor], found: Inferred) -> None:
    _fc(state, "fc6", found)
    expand = _shape(state, "layer1.conv3.weight", 3)
    if expand:
        found.set("C", expand[0], f"layer1.conv3.weight {expand}")
    scale = sum(1 for index in range(256) if f"layer1.convs.{index}.weight" in state)
    if scale:
        found.set("model_scale", scale + 1, f"{scale} layer1.convs.* (Res2Net groups - 1)")
    first = _shape(state, "attention.0.weight", 3)
    last = _shape(state, "attention.3.weight", 3)
    aggregate = _shape(state, "layer4.weight", 3)
    if first and aggregate:
        context = {aggregate[0]: False, 3 * aggregate[0]: True}.get(first[1])
        if context is not None:
            found.set("context", context, f"attention.0.weight {first}")
    if last and aggregate:
        encoder = {aggregate[0]: "ECA", 1: "ASP"}.get(last[0])
        if encoder:
            found.set("encoder_type", encoder, f"attention.3.weight {last}")


_INFER = {
    "ResNetSE34L": _infer_resnet34l,
    "ResNetSE34V2": _infer_resnet34v2,
    "VGGVox40": _infer_vggvox40,
    "RawNet3": _infer_rawnet3,
}


def infer_params(name: str, state: dict[str, torch.Tensor]) -> Inferred:
    """Every parameter of VT model ``name`` that the tensors in ``state`` determine."""
    found = Inferred()
    if name in _INFER:
        _INFER[name](state, found)
    return found


def infer_loss(loss_state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The VT losses whose weights have the layout of ``loss_state`` (empty if none fits)."""
    return LOSS_LAYOUTS.get(frozenset(loss_state), ())


# --------------------------------------------------------------------------- config


def read_vt_config(path: Path) -> dict[str, Any]:
    """VT's flat YAML configuration (``configs/*.yaml``: one ``key: value`` a line)."""
    if not path.is_file():
        raise XvecError(f"{path}: --config file not found")
    values: dict[str, Any] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line == "---":
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or raw[:1].isspace():
            raise XvecError(
                f"{path}:{number}: expected 'key: value' (a voxceleb_trainer config is flat)"
            )
        values[key.strip()] = yaml_scalar(value.strip())
    return values


# --------------------------------------------------------------------------- conversion


def _flag(name: str) -> str:
    return FLAGS.get(name, f"--param {name}=...")


def _resolve_model(
    source: Path, model_state: dict[str, torch.Tensor], model: str | None, origin: str
) -> str:
    detected = detect_model(model_state)
    if model is None:
        if detected is None:
            sample = ", ".join(list(model_state)[:4]) or "none"
            raise XvecError(
                f"{source}: cannot tell the architecture from the weights (keys: {sample}, ...); "
                f"give --model (built in: {', '.join(VT_MODELS)})"
            )
        return detected[0]
    model = MODEL_ALIASES.get(model, model)
    model = registry.get_entry("model", model).name  # unknown names list what exists
    if detected is not None and model in VT_MODELS and detected[0] != model:
        raise XvecError(
            f"{source}: {origin} {model} contradicts the weights, which are a {detected[0]} "
            f"({detected[1]}); drop {origin.split()[0]} or correct it"
        )
    return model


def _model_params(
    source: Path,
    model_name: str,
    model_state: dict[str, torch.Tensor],
    given: dict[str, Any],
    origins: dict[str, str],
) -> tuple[dict[str, Any], dict[str, Any], Inferred]:
    """(params to build with, params assumed at VT's published value, what was inferred)."""
    if model_name not in VT_MODELS:  # a plugin model: its own mapping, no inference
        return dict(given), {}, Inferred()
    found = infer_params(model_name, model_state)
    for name, value in given.items():
        if name in found.params and found.params[name] != value:
            raise XvecError(
                f"{source}: {origins.get(name, _flag(name))} {value!r} contradicts the weights: "
                f"{found.evidence[name]} means {name} = {found.params[name]!r}"
            )
    assumed = {
        name: value
        for name, value in ASSUMED.get(model_name, {}).items()
        if name not in given and name not in found.params
    }
    detected = detect_model(model_state)
    if detected is None or detected[0] != model_name:
        # The file does not have this model's signature keys: the strict load that follows
        # names what is missing or mis-shaped, which says more than asking for options.
        return {**found.params, **assumed, **given}, assumed, found
    for name in REQUIRED.get(model_name, ()):
        if name not in given and name not in found.params:
            raise XvecError(
                f"{source}: {name} of a {model_name} is not stored in a voxceleb_trainer file "
                f"and VT has no published configuration for it; give {_flag(name)} "
                "(as the model was trained: VT's --log_input flag)"
            )
    if model_name == "VGGVox40" and "encoder_type" not in {**given, **found.params}:
        raise XvecError(
            f"{source}: this VGGVox40 pools without weights, which is TAP or MAX (not stored "
            "in the file); give --encoder TAP or --encoder MAX"
        )
    if model_name == "ResNetSE34L" and "n_mels" not in {**given, **found.params}:
        raise XvecError(
            f"{source}: the file's mel filterbank (torchfb.mel_scale.fb) is missing or empty, "
            "so the number of mel bands is not stored; give --n-mels (VT's --n_mels)"
        )
    return {**found.params, **assumed, **given}, assumed, found


def _fill_empty_buffers(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Constant buffers that old torchaudio saved empty (filled lazily) take the model's value."""
    buffers = dict(model.named_buffers())
    for key, value in list(state.items()):
        if value.numel() == 0 and key in buffers and buffers[key].numel() > 0:
            state[key] = buffers[key].detach().clone()


def _choose_loss(
    source: Path,
    loss_state: dict[str, torch.Tensor],
    trainfunc: str | None,
    loss_params: dict[str, Any],
    origin: str,
    notes: list[str],
) -> str | None:
    """The loss to import with the model, or None (with a note saying why) to leave it out."""
    candidates = infer_loss(loss_state)
    if trainfunc is not None:
        trainfunc = registry.get_entry("loss", trainfunc).name
        if candidates and trainfunc not in candidates:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in loss_state.items())
            raise XvecError(
                f"{source}: {origin} {trainfunc} contradicts the loss weights ({shapes}: "
                f"{' or '.join(candidates)})"
            )
        cls = registry.get_class("loss", trainfunc)
        for name, flag in LOSS_FLAGS.items():
            if name in cls.Params.model_fields and name not in loss_params:
                raise XvecError(
                    f"{source}: the {trainfunc} {name} is not stored in a voxceleb_trainer "
                    f"file; give {flag} (VT's --{name}, default {0.1 if name == 'margin' else 30})"
                )
        return trainfunc
    if not loss_state:
        return None
    if len(candidates) != 1:
        what = " or ".join(candidates) if candidates else "an unknown loss"
        notes.append(f"loss weights ({what}) left out: give --trainfunc to keep them")
        return None
    cls = registry.get_class("loss", candidates[0])
    missing = [
        flag
        for name, flag in LOSS_FLAGS.items()
        if name in cls.Params.model_fields and name not in loss_params
    ]
    if missing:
        notes.append(
            f"loss head {candidates[0]} left out: its {' and '.join(missing)} are not stored "
            f"in the file; give them (with --trainfunc {candidates[0]}) to keep it"
        )
        return None
    return candidates[0]


@dataclass
class _Options:
    """What the user asked for, from the command line over ``--config``, with its origins."""

    given: dict[str, Any]  # model parameters
    origins: dict[str, str]  # parameter -> the option or config line that set it
    model: str | None
    model_origin: str
    trainfunc: str | None
    loss_origin: str
    loss_params: dict[str, Any]  # --margin/--scale and loss_params
    loss_config: dict[str, Any]  # margin/scale from --config, where no option overrides them
    settings: dict[str, Any]  # the whole config


def _options(
    config: Path | None,
    overrides: dict[str, Any],
    model: str | None,
    trainfunc: str | None,
    loss_params: dict[str, Any],
) -> _Options:
    """Merge the options with the VT config: an option wins over the config's value."""
    settings = read_vt_config(Path(config)) if config is not None else {}
    given: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key in CONFIG_MODEL_KEYS:
        if key in settings:
            given[key], origins[key] = settings[key], f"{config}: {key}"
    for key, value in overrides.items():
        given[key], origins[key] = value, _flag(key)
    if isinstance(given.get("encoder_type"), str):
        given["encoder_type"] = given["encoder_type"].upper()
    loss_config = {
        key: settings[key] for key in LOSS_FLAGS if key in settings and key not in loss_params
    }
    return _Options(
        given=given,
        origins=origins,
        model=model if model is not None else settings.get("model"),
        model_origin="--model" if model is not None else f"{config}: model",
        trainfunc=trainfunc if trainfunc is not None else settings.get("trainfunc"),
        loss_origin="--trainfunc" if trainfunc is not None else f"{config}: trainfunc",
        loss_params=loss_params,
        loss_config=loss_config,
        settings=settings,
    )


def _build_loss(
    source: Path,
    loss_name: str,
    loss_state: dict[str, torch.Tensor],
    options: _Options,
    embedding_dim: int,
    num_classes: int | None,
) -> torch.nn.Module:
    """The loss head ``loss_name`` with VT's weights; classes from the weights or nClasses."""
    loss_class = registry.get_class("loss", loss_name)
    fields = loss_class.Params.model_fields
    from_config = {k: v for k, v in options.loss_config.items() if k in fields}
    classes = num_classes if num_classes is not None else _infer_num_classes(loss_state)
    if classes is None and options.settings.get("nClasses") and loss_class.needs_classes:
        classes = int(options.settings["nClasses"])
    loss = registry.build(
        "loss",
        loss_name,
        {**from_config, **options.loss_params},
        embedding_dim=embedding_dim,
        num_classes=classes,
    )
    load_state_strict(loss, loss_state, f"{source} (loss part)")
    return loss


def convert(
    source: Path,
    config: Path | None,
    overrides: dict[str, Any],
    *,
    model: str | None = None,
    trainfunc: str | None = None,
    margin: float | None = None,
    scale: float | None = None,
    loss_params: dict[str, Any] | None = None,
    num_classes: int | None = None,
) -> Converted:
    """Rebuild a VT ``.model`` as an xvec model (and its loss head when that is determined).

    ``overrides`` are model parameters (VT's names: ``encoder_type``, ``n_mels``, ...) and win
    over ``config`` (a VT YAML configuration), which wins over what the weights imply; any of
    them contradicting the weights is an error naming the option.
    """
    source = Path(source)
    given_loss = dict(loss_params or {})
    given_loss.update((k, v) for k, v in (("margin", margin), ("scale", scale)) if v is not None)
    options = _options(config, overrides, model, trainfunc, given_loss)

    model_state, loss_state = split_voxceleb_trainer(read_voxceleb_trainer(source))
    model_name = _resolve_model(source, model_state, options.model, options.model_origin)
    params, assumed, found = _model_params(
        source, model_name, model_state, options.given, options.origins
    )
    speaker_model = registry.build("model", model_name, params)
    model_state = type(speaker_model).from_voxceleb_trainer(model_state)
    if model_name in VT_MODELS:
        _fill_empty_buffers(speaker_model, model_state)
    load_state_strict(speaker_model, model_state, str(source))

    notes = [
        f"assumed {name}={value!r} (not stored; VT's published configurations use it; "
        f"{_flag(name)} to change)"
        for name, value in assumed.items()
    ]
    loss_name = _choose_loss(
        source,
        loss_state,
        options.trainfunc,
        {**options.loss_config, **options.loss_params},
        options.loss_origin,
        notes,
    )
    loss = None
    if loss_name is not None:
        loss = _build_loss(
            source, loss_name, loss_state, options, speaker_model.embedding_dim, num_classes
        )
    extra = {
        "imported_from": {
            "format": "voxceleb_trainer",
            "file": source.name,
            "inferred": sorted(found.params),
            "assumed": assumed,
            "notes": notes,
        }
    }
    return Converted(model_name, speaker_model, loss_name, loss, extra)


def import_voxceleb_trainer(
    source: str | Path,
    output: str | Path,
    model_name: str | None = None,
    model_params: dict[str, Any] | None = None,
    loss_name: str | None = None,
    loss_params: dict[str, Any] | None = None,
    num_classes: int | None = None,
) -> Path:
    """Convert a VT ``.model`` into a self-describing xvec checkpoint; returns its path."""
    converted = convert(
        Path(source),
        None,
        dict(model_params or {}),
        model=model_name,
        trainfunc=loss_name,
        loss_params=loss_params,
        num_classes=num_classes,
    )
    return converted.save(output)
