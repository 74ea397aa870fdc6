"""Import SpeechBrain's ECAPA-TDNN ``embedding_model.ckpt`` (e.g. ``spkrec-ecapa-voxceleb``).

The checkpoint is a plain ``torch.save`` of the module's state dict, read without executing any
pickled code. Tensor shapes give every architecture parameter except the dilations, which come
from the model's ``hyperparams.yaml`` or ``NAME=VALUE`` overrides. Without either, a five-layer
ECAPA gets the dilations every published SpeechBrain ECAPA uses, ``[1, 2, 3, 4, 1]``, and the
import notes the assumption; other depths have no published dilations and are refused. The
YAML is read by a small line parser for the flat ``key: value`` entries of its
``embedding_model``, ``compute_features`` and ``mean_var_norm`` blocks (with ``!ref <name>``
resolved from top-level scalars): SpeechBrain's files use custom tags, and xvec does not depend
on a YAML library. Front-end settings xvec does not reproduce are refused.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import torch

from xvec import registry
from xvec.checkpoint import load_state_strict
from xvec.errors import XvecError
from xvec.interop.base import Converted, read_torch_state, strip_yaml_comment, tensor_dict

__all__ = ["convert", "read_hyperparams"]

MODEL_NAME = "SpeechBrainECAPA"
FORMAT = "speechbrain"
ECAPA_MARKERS = ("blocks.0.conv.conv.weight", "mfa.conv.conv.weight", "asp.tdnn.conv.conv.weight")

_ENTRY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.]*)\s*:\s*(?P<value>.*)$")
_REF = re.compile(r"^!ref\s+<([\w.]+)>$")

# Options of SpeechBrain's blocks that only matter in training or are xvec's only choice.
_IGNORED_MODEL_KEYS = {"device", "dropout"}
# The dilations of every published SpeechBrain ECAPA_TDNN configuration (all have five layers).
PUBLISHED_DILATIONS = [1, 2, 3, 4, 1]
_FIXED_MODEL_KEYS = {"activation": "!name:torch.nn.ReLU"}
# Fbank / InputNormalization options and the only values xvec reproduces (None: any value).
_FBANK_SUPPORTED: dict[str, Any] = {
    "n_mels": None,
    "deltas": False,
    "context": False,
    "left_frames": None,
    "right_frames": None,
    "requires_grad": False,
    "sample_rate": 16000,
    "n_fft": 400,
    "win_length": 25,
    "hop_length": 10,
    "f_min": 0,
    "f_max": 8000,
    "filter_shape": "triangular",
    "param_change_factor": None,
    "param_rand_factor": None,
}
_NORM_SUPPORTED: dict[str, Any] = {
    "norm_type": "sentence",
    "std_norm": False,
    "mean_norm": True,
    "update_until_epoch": None,
    "avoid_padding_norm": None,
    "epsilon": None,
    "requires_grad": None,
}


def _parse_value(text: str, where: str) -> Any:
    """A YAML flow scalar or list as Python: ints, floats, booleans, ``[a, b]``, bare strings."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("null", "none", "~"):
        return None
    if text.startswith("!"):
        return text
    try:
        return ast.literal_eval(text.replace("true", "True").replace("false", "False"))
    except (ValueError, SyntaxError):
        if text.startswith("["):
            raise XvecError(f"{where}: cannot read the list '{text}'") from None
        return text.strip("'\"")


def read_hyperparams(path: Path) -> dict[str, dict[str, Any]]:
    """The flat entries of the top level (``""``) and of each top-level block of a SpeechBrain YAML.

    ``!ref <name>`` values are replaced by the top-level scalar they name; other tagged values
    (``!new:``, ``!name:``, references to blocks) are kept as their text.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise XvecError(f"{path}: cannot read the hyperparameter file ({exc})") from exc
    sections: dict[str, dict[str, Any]] = {"": {}}
    block: str | None = None
    for number, raw in enumerate(lines, start=1):
        line = strip_yaml_comment(raw)
        match = _ENTRY.match(line)
        if not line.strip() or not match:
            continue
        key, value, nested = match["key"], match["value"], bool(match["indent"])
        where = f"{path}:{number}"
        if not nested:
            block = key
            sections[key] = {}
            if value and not value.startswith("!new:"):
                sections[""][key] = _parse_value(value, where)
            continue
        if block is None or not value:
            continue  # deeper structure (dicts, multi-line lists) that no imported option uses
        parsed = _parse_value(value, where)
        reference = _REF.match(parsed) if isinstance(parsed, str) else None
        if reference and reference[1] in sections[""]:
            parsed = sections[""][reference[1]]
        sections[block].setdefault(key, parsed)
    return sections


def _check_front_end(path: Path, sections: dict[str, dict[str, Any]], input_size: Any) -> None:
    """Refuse Fbank / normalisation settings that :class:`SpeechBrainECAPA` does not compute."""
    checks = (("compute_features", _FBANK_SUPPORTED), ("mean_var_norm", _NORM_SUPPORTED))
    for block, supported in checks:
        for key, value in sections.get(block, {}).items():
            if key not in supported:
                raise XvecError(f"{path}: {block}.{key} is not supported by {MODEL_NAME}")
            wanted = supported[key]
            if wanted is not None and value != wanted:
                raise XvecError(
                    f"{path}: {block}.{key} = {value!r} is not supported by {MODEL_NAME} "
                    f"(it computes {key} = {wanted!r})"
                )
    n_mels = sections.get("compute_features", {}).get("n_mels")
    if n_mels is not None and input_size is not None and n_mels != input_size:
        raise XvecError(
            f"{path}: compute_features.n_mels ({n_mels}) differs from "
            f"embedding_model.input_size ({input_size})"
        )


def params_from_config(path: Path) -> dict[str, Any]:
    """The ``embedding_model`` arguments of a ``hyperparams.yaml`` that xvec's model takes."""
    sections = read_hyperparams(path)
    if "embedding_model" not in sections:
        raise XvecError(f"{path}: no 'embedding_model' block; is this SpeechBrain's hyperparams?")
    allowed = set(registry.get_class("model", MODEL_NAME).Params.model_fields)
    params: dict[str, Any] = {}
    for key, value in sections["embedding_model"].items():
        if key in _IGNORED_MODEL_KEYS:
            continue
        if key in _FIXED_MODEL_KEYS:
            if value != _FIXED_MODEL_KEYS[key]:
                raise XvecError(f"{path}: embedding_model.{key} = {value} is not supported")
            continue
        if key == "groups":
            if not isinstance(value, list) or any(group != 1 for group in value):
                raise XvecError(f"{path}: embedding_model.groups = {value} is not supported")
            continue
        if key not in allowed:
            raise XvecError(f"{path}: embedding_model.{key} is not an option of {MODEL_NAME}")
        if isinstance(value, str) and value.startswith("!"):
            raise XvecError(
                f"{path}: embedding_model.{key} = {value} cannot be evaluated here; "
                f"give it as the override {key}=VALUE"
            )
        params[key] = value
    _check_front_end(path, sections, params.get("input_size"))
    return params


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)``; a mismatch is one line naming a few keys."""
    expected = model.state_dict()
    state = dict(state)
    for key in expected:
        # Counters BatchNorm does not use in evaluation; some older files lack them.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    load_state_strict(
        model,
        state,
        str(source),
        "give the model's hyperparams.yaml or NAME=VALUE architecture overrides",
    )


def convert(source: Path, config: Path | None, overrides: dict[str, Any]) -> Converted:
    """Rebuild SpeechBrain's ECAPA-TDNN from ``embedding_model.ckpt`` as ``SpeechBrainECAPA``.

    Parameters come from the tensor shapes, then ``config`` (a ``hyperparams.yaml``), then
    ``overrides`` (string values are read as YAML scalars or lists), later ones winning.
    """
    source = Path(source)
    state = tensor_dict(
        read_torch_state(source, "SpeechBrain checkpoint"), source, "SpeechBrain embedding_model"
    )
    absent = [key for key in ECAPA_MARKERS if key not in state]
    if absent:
        raise XvecError(
            f"{source}: not a SpeechBrain ECAPA-TDNN embedding_model.ckpt (no '{absent[0]}'); "
            "give the embedding_model.ckpt of an ECAPA_TDNN model"
        )
    cls = registry.get_class("model", MODEL_NAME)
    try:
        params = cls.params_from_state(state)
    except KeyError as exc:
        raise XvecError(f"{source}: incomplete ECAPA-TDNN state dict (no {exc})") from exc
    stated = params_from_config(Path(config)) if config is not None else {}
    if config is not None:  # a config without dilations keeps ECAPA_TDNN's default ones
        stated.setdefault("dilations", list(PUBLISHED_DILATIONS))
    params.update(stated)
    for name, value in overrides.items():
        params[name] = _parse_value(value, f"override {name}") if isinstance(value, str) else value
    record: dict[str, Any] = {"format": FORMAT, "file": source.name}
    if "dilations" not in params:
        params["dilations"] = _assumed_dilations(source, len(params["channels"]))
        record["notes"] = [
            f"assumed dilations={PUBLISHED_DILATIONS} (not stored; every published SpeechBrain "
            "ECAPA uses them; give --config with the model's hyperparams.yaml or --param "
            "dilations=[...] if it was trained otherwise)"
        ]
    model = registry.build("model", MODEL_NAME, params)
    _load_weights(model, state, source)
    model.eval()
    return Converted(model_name=MODEL_NAME, model=model, extra={"imported_from": record})


def _assumed_dilations(source: Path, layers: int) -> list[int]:
    """The published dilations for a five-layer ECAPA; other depths are an error."""
    if layers != len(PUBLISHED_DILATIONS):
        raise XvecError(
            f"{source}: the dilations of this {layers}-layer ECAPA-TDNN are not stored in the "
            f"weights and no published SpeechBrain ECAPA has {layers} layers; give --config "
            f"(the model's hyperparams.yaml) or --param dilations=[...] ({layers} numbers)"
        )
    return list(PUBLISHED_DILATIONS)
