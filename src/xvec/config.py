"""Recipes: TOML files validated by pydantic, with ``--set section.field=value`` overrides.

Every section forbids unknown fields, so a typo (voxceleb_trainer's ``nLcasses``) is an error
naming the file, the field path and the allowed fields. The ``[model]`` and ``[loss]`` sections
take a registered ``name`` plus that item's own parameters, checked against its schema.
Defaults follow voxceleb_trainer's where it has one.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xvec import registry
from xvec.devices import DEVICE_CHOICES, DEVICE_PATTERN
from xvec.errors import XvecError
from xvec.schedules import LrSchedule, MarginRamp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


INDEX_MAX = 2**31 - 1  # sizes and counts torch can index and numpy can allocate safely
SEED_MAX = 2**63 - 1  # torch.manual_seed and numpy take a non-negative 64-bit seed


class Section(BaseModel):
    """A recipe section: unknown fields are errors; floats must be finite (``inf`` and ``nan``
    would only fail later, as a NaN loss)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class DataConfig(Section):
    """Where the training and test data live and how utterances are cropped."""

    train_list: Path | None = None
    train_path: Path = Path("data/voxceleb2")
    test_list: Path | None = None
    test_path: Path = Path("data/voxceleb1")
    max_frames: int = Field(200, gt=0, le=INDEX_MAX, description="training crop, in 10 ms frames")
    eval_frames: int = Field(
        300, ge=0, le=INDEX_MAX, description="evaluation crop (vt-crops); 0 = whole file"
    )
    num_eval: int = Field(10, gt=0, le=INDEX_MAX, description="evaluation crops per file")
    decode_cache: Path | None = Field(
        None, description="folder of decoded training audio: crops are sliced, not re-decoded"
    )


class NamedSection(Section):
    """``name`` of a registered item plus its own parameters (validated by the registry)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and "params" not in data:
            data = dict(data)
            name = data.pop("name", None)
            params = data
            data = {"params": params}
            if name is not None:
                data["name"] = name
        return data


class LossSection(NamedSection):
    """``[loss]``: a registered loss and its parameters, optionally ``[loss.margin_ramp]``."""

    margin_ramp: MarginRamp | None = None

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and "params" not in data:
            data = dict(data)
            ramp = data.pop("margin_ramp", None)
            data = NamedSection._collect_params.__func__(cls, data)
            if ramp is not None:
                data["margin_ramp"] = ramp
        return data


class OptimConfig(Section):
    """Optimiser, learning-rate schedule and gradient clipping."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(0.001, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["steplr", "cosine", "none"] = "steplr"
    lr_decay: float = Field(0.95, gt=0, le=1, description="steplr: factor every test_interval")
    warmup_epochs: float = Field(0.0, ge=0, description="cosine: linear warm-up length")
    min_lr: float = Field(0.0, ge=0, description="cosine: final learning rate")
    grad_clip: float | None = Field(None, gt=0)
    exempt_norm_and_bias: bool = Field(
        False, description="no weight decay on biases and normalisation layers"
    )


class TrainConfig(Section):
    """The training loop."""

    max_epoch: int = Field(500, gt=0, le=INDEX_MAX)
    batch_size: int = Field(200, gt=0, le=INDEX_MAX)
    nPerSpeaker: int = Field(1, gt=0, le=INDEX_MAX)
    max_seg_per_spk: int = Field(500, gt=0, le=INDEX_MAX)
    nClasses: int | None = Field(
        None, gt=0, le=INDEX_MAX, description="checked against the train list"
    )
    test_interval: int = Field(
        10,
        gt=0,
        le=INDEX_MAX,
        description="evaluate every N epochs, and at the end of training (with average_last: "
        "the average, in place of the last epoch)",
    )
    seed: int = Field(10, ge=0, le=SEED_MAX)
    output_dir: Path = Path("runs/exp1")
    num_workers: int = Field(2, ge=0, le=INDEX_MAX)
    loader_nice: int | Literal["auto"] = Field(
        "auto",
        description="niceness added to the loader workers: auto = 19 when training on the "
        "CPU (they then decode while the compute threads wait instead of preempting them "
        "mid-kernel; docs/benchmarks.md), 0 on CUDA",
    )

    @field_validator("loader_nice")
    @classmethod
    def _niceness_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 19:
            raise ValueError("must be 'auto' or between 0 and 19")
        return value

    mixed_precision: Literal["bf16", "fp16"] | bool = Field(
        True,
        description="autocast: true = fp16 on CUDA, bf16 on CPUs that have it (1.6-1.7x fp32 "
        "training on an AMX Xeon, docs/benchmarks.md), else fp32; bf16 / fp16 = that type; "
        "false = fp32",
    )
    device: str = "auto"
    log_every: int = Field(
        10, gt=0, le=INDEX_MAX, description="steps between JSON-lines log records"
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=INDEX_MAX,
        description="stop after this many optimiser steps overall (quick tries)",
    )

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        """A device name torch understands (availability is checked when training starts)."""
        name = value.strip().lower()
        if not DEVICE_PATTERN.fullmatch(name):
            raise ValueError(f"unknown device '{value}'; use {DEVICE_CHOICES}")
        return name

    save_every_steps: int = Field(
        0, ge=0, le=INDEX_MAX, description="also save the training state every N steps"
    )
    threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU intra-op threads; auto follows the cores actually free "
        "(probed from step times, xvec.cpu_threads)",
    )

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= INDEX_MAX:
            raise ValueError(f"must be 'auto' or between 1 and {INDEX_MAX}")
        return value

    deterministic: bool = Field(
        False, description="bit-identical reruns and resumes (slower: 1 CPU thread)"
    )
    compile: bool = Field(
        False,
        description="torch.compile the training step's forward pass (inductor): 1.1-1.6x "
        "per fp32 ResNetSE34L step on a 2-core CPU after ~90 s of compiling "
        "(docs/benchmarks.md); off by default. A margin ramp recompiles while it changes",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="keep the model's 2-D convolutions in channels-last memory: auto = on the "
        "CPU (per training step 1.1-1.2x for ResNetSE34L, 1.4-1.8x for the WeSpeaker ResNet34 "
        "on an AMX Xeon, docs/benchmarks.md), off on CUDA until measured there, and off "
        "for a model with a strided 1x1 convolution of under 16 input channels under bf16 on a "
        "CPU without AMX, or of under 8 in float32 on an AVX2 CPU (oneDNN bugs); the values "
        "computed are the same up to float rounding",
    )
    schedule: LrSchedule | None = Field(
        None,
        description="per-step learning-rate schedule from optim.lr; replaces optim.scheduler",
    )
    keep_epoch_models: int = Field(
        0, ge=0, description="keep the last N epochs' models in models/ (for xvec average)"
    )
    average_last: int = Field(
        0,
        ge=0,
        le=INDEX_MAX,
        description="at the end, average the last N epochs' models into avg.safetensors and "
        "evaluate that in place of the last epoch (keeps at least N per-epoch models)",
    )

    @field_validator("average_last")
    @classmethod
    def _average_within_the_run(cls, value: int, info: ValidationInfo) -> int:
        max_epoch = info.data.get("max_epoch")
        if max_epoch is not None and value > max_epoch:
            raise ValueError(
                f"{value} exceeds max_epoch ({max_epoch}): a run keeps at most one model per "
                "epoch; lower average_last"
            )
        return value


class EvalConfig(Section):
    """Evaluation during and after training."""

    protocol: Literal["full", "vt-crops"] = "full"
    max_seconds: float | None = Field(None, ge=0.025, description="at least one 25 ms window")
    batch_size: int = Field(32, gt=0, le=INDEX_MAX)
    dcf_p_target: float = Field(0.05, gt=0, lt=1)
    dcf_c_miss: float = Field(1.0, gt=0)
    dcf_c_fa: float = Field(1.0, gt=0)
    asnorm_top_k: int | None = Field(
        None,
        ge=2,
        le=INDEX_MAX,
        description="the final evaluation also scores with AS-norm: cohort = the mean embedding "
        "of each training speaker, this many top cohort scores per file (WeSpeaker: 300; a "
        "smaller cohort is used whole); unset = raw cosine only",
    )
    asnorm_files_per_speaker: int | None = Field(
        None,
        ge=1,
        le=INDEX_MAX,
        description="AS-norm's cohort means over at most this many files of each training "
        "speaker (a fixed random draw): a shorter cohort pass for a noisier mean; unset = "
        "every file (WeSpeaker's)",
    )
    plda_lda_dim: int | None = Field(
        None,
        ge=1,
        le=INDEX_MAX,
        description="the final evaluation also scores with a PLDA back end (centering, LDA to "
        "this many dimensions, length normalisation, two-covariance PLDA) fitted on the "
        "embeddings of every training file; at most the training speakers less one; unset = "
        "no back end",
    )
    plda_files_per_speaker: int | None = Field(
        None,
        ge=2,
        le=INDEX_MAX,
        description="the PLDA back end is fitted on at most this many files of each training "
        "speaker (the AS-norm cohort's fixed random draw): a shorter pass at the end of "
        "training; unset = every file",
    )

    @model_validator(mode="after")
    def _asnorm_needs_full(self) -> EvalConfig:
        if self.asnorm_top_k is not None and self.protocol != "full":
            raise ValueError('asnorm_top_k needs protocol = "full" (one embedding per file)')
        if self.plda_lda_dim is not None and self.protocol != "full":
            raise ValueError('plda_lda_dim needs protocol = "full" (one embedding per file)')
        if self.asnorm_files_per_speaker is not None and self.asnorm_top_k is None:
            raise ValueError("asnorm_files_per_speaker needs asnorm_top_k (AS-norm is off)")
        if self.plda_files_per_speaker is not None and self.plda_lda_dim is None:
            raise ValueError("plda_files_per_speaker needs plda_lda_dim (PLDA is off)")
        return self


class SpecAugmentConfig(Section):
    """``[augment.spec_augment]``: masks on the model's features while training (WeSpeaker's
    ``spec_aug``, whose defaults these are); ``{}`` turns it on as they are."""

    probability: float = Field(0.6, ge=0, le=1, description="chance an utterance is masked")
    time_masks: int = Field(1, ge=0, description="time spans masked per utterance")
    max_frames: int = Field(10, ge=1, description="longest time span, in frames")
    band_masks: int = Field(1, ge=0, description="mel-band spans masked per utterance")
    max_bands: int = Field(8, ge=1, description="widest band span, in bands")


class AugmentConfig(Section):
    """Data augmentation (off unless a source is given)."""

    musan_path: Path | None = None
    rir_path: Path | None = None
    speed_perturb: bool | Literal["new_speakers"] = Field(
        False,
        description="true: 0.9x/1.1x speed joins the augmentation draw, the label kept; "
        '"new_speakers": WeSpeaker\'s way, every utterance plays at 1.0x, 0.9x or 1.1x and the '
        "sped-up and slowed-down ones are speakers of their own (three times the classes)",
    )
    probability: float = Field(0.6, ge=0, le=1, description="chance an utterance is augmented")
    spec_augment: SpecAugmentConfig | None = Field(
        None,
        description="SpecAugment on the features of models whose front end supports it "
        "(the peers' models: ECAPA-TDNN, TDNN, WeSpeaker ResNet, CAM++, ERes2Net); off unless set",
    )

    @property
    def speed_speakers(self) -> bool:
        """Whether speed perturbation makes new speakers (WeSpeaker) instead of augmenting."""
        return self.speed_perturb == "new_speakers"


class InitConfig(Section):
    """``[init]``: start training from another run's checkpoint (a stage of a multi-stage recipe).

    Only the model's weights (and the loss's, when its layout and class count match) are
    taken; crops, margin, learning rate and augmentation are this recipe's. Applied at the
    start of a run only: a resumed run continues from its own state.
    """

    model_config = ConfigDict(populate_by_name=True)

    from_: Path = Field(alias="from", description="xvec checkpoint to start from")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{16}$",
        description="the file's fingerprint (first 16 hex digits of its SHA-256); recorded "
        "when the run starts, checked when given",
    )


# Optional sections added after runs were first recorded: left out of a recipe's stored form
# while unset, so a run recorded before they existed still resumes (its recipe compares equal).
OMITTED_WHEN_UNSET = (
    ("loss", "margin_ramp"),
    ("init",),
    ("augment", "spec_augment"),
    ("eval", "plda_lda_dim"),
    ("eval", "plda_files_per_speaker"),
)


class Recipe(Section):
    """A whole training/evaluation recipe."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: NamedSection
    loss: LossSection | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    init: InitConfig | None = None

    def resolved(self, base: Path | None = None) -> Recipe:
        """A copy with every relative path made absolute against ``base`` (default: cwd)."""
        base = (base or Path.cwd()).resolve()

        def fix(value: Path | None) -> Path | None:
            return None if value is None else (base / value).resolve()

        data = self.data.model_copy(
            update={
                key: fix(getattr(self.data, key))
                for key in ("train_list", "train_path", "test_list", "test_path", "decode_cache")
            }
        )
        augment = self.augment.model_copy(
            update={key: fix(getattr(self.augment, key)) for key in ("musan_path", "rir_path")}
        )
        train = self.train.model_copy(update={"output_dir": fix(self.train.output_dir)})
        init = self.init and self.init.model_copy(update={"from_": fix(self.init.from_)})
        return self.model_copy(
            update={"data": data, "augment": augment, "train": train, "init": init}
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings), the form stored in checkpoints."""
        data = self.model_dump(mode="json", by_alias=True)
        for *sections, field in OMITTED_WHEN_UNSET:
            node = data
            for section in sections:
                node = node[section] or {}
            if field in node and node[field] is None:
                del node[field]
        return data


def _format_validation_error(source: str, exc: ValidationError, schema: type[BaseModel]) -> str:
    """Every error of ``exc`` in one line after ``source``, joined with "; "."""
    return f"{source}: " + "; ".join(_describe_error(error, schema) for error in exc.errors())


def _describe_error(error: Any, schema: type[BaseModel]) -> str:
    """One pydantic error as "field 'train.max_epoch': ..." (unknown fields list the allowed)."""
    loc, owner = _located(schema, [str(part) for part in error["loc"]])
    path = ".".join(loc)
    if error["type"] == "extra_forbidden":
        fields = getattr(owner, "model_fields", {})
        allowed = ", ".join(field.alias or name for name, field in fields.items())
        return f"unknown field '{path}' (allowed in this section: {allowed})"
    return f"field '{path}': {error['msg']}"


def _located(schema: type[BaseModel], loc: list[str]) -> tuple[list[str], Any]:
    """An error's field path without union tags (``train.schedule.step.gamma`` ->
    ``train.schedule.gamma``) and the section class holding its last field."""
    owners: list[type[BaseModel]] = [schema]
    shown: list[str] = []
    for index, part in enumerate(loc):
        tagged = [owner for owner in owners if _union_tag(owner) == part]
        if tagged and index > 0:
            owners = tagged
            continue
        shown.append(part)
        if index == len(loc) - 1:
            break
        fields = [owner.model_fields[part] for owner in owners if part in owner.model_fields]
        owners = [model for field in fields for model in _models_in(field.annotation)] or owners
    return shown, owners[0]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The section classes an annotation can hold (through ``| None``, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _union_tag(model: type[BaseModel]) -> Any:
    """The ``name`` literal that selects ``model`` in a tagged union (None if it has none)."""
    field = model.model_fields.get("name")
    values = get_args(field.annotation) if field is not None else ()
    return values[0] if len(values) == 1 else None


def parse_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a recipe dict; errors name ``source`` and the field path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise XvecError(_format_validation_error(source, exc, Recipe)) from exc


def _parse_value(text: str) -> Any:
    """A TOML value (number, bool, string, list); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides to a raw recipe dict (a deep copy is returned).

    An empty value (``data.test_list=``) removes the field, so its default applies.
    """
    import copy

    result = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise XvecError(f"--set '{item}': expected SECTION.FIELD=VALUE, e.g. train.max_epoch=5")
        parts = key.split(".")
        if len(parts) < 2:
            raise XvecError(f"--set '{item}': expected SECTION.FIELD=VALUE, e.g. train.max_epoch=5")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise XvecError(f"--set '{item}': '{part}' is a value, not a section")
            node = child
        if value.strip():
            node[parts[-1]] = _parse_value(value.strip())
        else:  # 'section.field=' unsets the field: back to its default (e.g. no test list)
            node.pop(parts[-1], None)
    return result


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise XvecError(f"{path}: recipe file not found")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise XvecError(f"{path}: TOML syntax error: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise XvecError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe, including the model's and loss's parameters."""
    path = Path(path)
    if path.is_dir():  # a run folder: its own resolved recipe
        recorded = path / "recipe.json"
        if not recorded.is_file():
            raise XvecError(f"{path}: no recipe.json here; is this a training run folder?")
        try:
            raw = json.loads(recorded.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise XvecError(f"{recorded}: not a JSON recipe ({exc})") from exc
        data = apply_overrides(raw, overrides or [])
    else:
        data = apply_overrides(read_toml(path), overrides or [])
    source = str(path) + (" (with --set overrides)" if overrides else "")
    recipe = parse_recipe(data, source)
    check_components(recipe, source)
    return recipe


def check_components(recipe: Recipe, source: str) -> None:
    """Validate ``[model]`` and ``[loss]`` parameters against their registered schemas.

    Both sections are checked before anything is reported, and numbers their schemas accept
    must still be usable: finite floats (``margin = inf`` would only show up as a NaN loss)
    and integers torch can index.
    """
    sections = [("model", recipe.model)] + ([("loss", recipe.loss)] if recipe.loss else [])
    problems = []
    for kind, section in sections:
        try:
            cls = registry.get_class(kind, section.name)
            params = registry.validate_params(kind, section.name, cls, section.params)
        except XvecError as exc:
            problems.append(f"[{kind}] {exc}")
            continue
        values = params.model_dump() if isinstance(params, BaseModel) else section.params
        problems += [f"[{kind}] {kind} '{section.name}' {bad}" for bad in _unusable_numbers(values)]
    if problems:
        raise XvecError(f"{source}: " + "; ".join(problems))


def _unusable_numbers(values: Any, path: str = "") -> list[str]:
    """One message (``parameter 'margin': inf is not a finite number``) per unusable number."""
    if isinstance(values, dict):
        return [
            bad
            for key, value in values.items()
            for bad in _unusable_numbers(value, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(values, list | tuple):
        return [bad for i, v in enumerate(values) for bad in _unusable_numbers(v, f"{path}[{i}]")]
    if isinstance(values, float) and not math.isfinite(values):
        return [f"parameter '{path}': {values} is not a finite number"]
    if isinstance(values, int) and not isinstance(values, bool) and abs(values) > INDEX_MAX:
        return [f"parameter '{path}': {values} is too large (at most {INDEX_MAX})"]
    return []
