"""Recipes: validation errors name file, field and allowed fields; overrides; paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xvec.config import apply_overrides, load_recipe
from xvec.errors import XvecError

from conftest import ROOT

GOOD = """
[data]
train_list = "lists/train_list.txt"
train_path = "data/voxceleb2"
test_list = "lists/veri_test.txt"
max_frames = 200

[model]
name = "ResNetSE34L"
nOut = 512
encoder_type = "SAP"

[loss]
name = "amsoftmax"
margin = 0.3
scale = 30

[train]
batch_size = 200
max_epoch = 20
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_good_recipe_loads_with_voxceleb_trainer_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    assert recipe.model.name == "ResNetSE34L"
    assert recipe.model.params == {"nOut": 512, "encoder_type": "SAP"}
    assert recipe.loss.params == {"margin": 0.3, "scale": 30}
    assert recipe.train.batch_size == 200
    assert recipe.data.eval_frames == 300 and recipe.optim.lr == 0.001
    assert recipe.optim.lr_decay == 0.95 and recipe.train.test_interval == 10


def test_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(write(tmp_path, GOOD)).resolved()
    assert recipe.data.train_list == tmp_path / "lists" / "train_list.txt"
    assert recipe.train.output_dir == tmp_path / "runs" / "exp1"


def test_unknown_field_names_file_path_and_allowed(tmp_path):
    path = write(tmp_path, GOOD.replace("max_epoch = 20", "max_epoch = 20\nnLcasses = 5994"))
    with pytest.raises(XvecError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "train.nLcasses" in message
    assert (
        "allowed in this section:" in message and "batch_size" in message and "nClasses" in message
    )


def test_unknown_model_parameter_names_the_schema(tmp_path):
    path = write(tmp_path, GOOD.replace("nOut = 512", "nOutt = 512"))
    with pytest.raises(XvecError, match=r"\[model\].*'nOutt'.*allowed parameters:.*nOut"):
        load_recipe(path)


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "amsoftmax"', 'name = "amsoftmax'))
    with pytest.raises(XvecError, match=r"TOML syntax error.*line 14, column"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.lr=-0.1", "optim.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.eval_frames=-1", "data.eval_frames"),
        ("train.max_epoch='ten'", "train.max_epoch"),
    ],
)
def test_out_of_range_and_wrong_type(tmp_path, override, field):
    with pytest.raises(XvecError, match=rf"with --set overrides\): field '{field}'"):
        load_recipe(write(tmp_path, GOOD), [override])


def test_unknown_model_and_loss_names(tmp_path):
    with pytest.raises(XvecError, match=r"unknown model 'ResNet34'.*Available:.*ResNetSE34L"):
        load_recipe(write(tmp_path, GOOD), ["model.name=ResNet34"])
    with pytest.raises(XvecError, match=r"unknown loss 'arcface'.*aamsoftmax"):
        load_recipe(write(tmp_path, GOOD), ["loss.name=arcface"])


def test_overrides_apply_and_parse_values(tmp_path):
    recipe = load_recipe(
        write(tmp_path, GOOD),
        [
            "train.max_epoch=5",
            "optim.scheduler=cosine",
            "train.mixed_precision=false",
            "model.nOut=256",
        ],
    )
    assert recipe.train.max_epoch == 5 and recipe.optim.scheduler == "cosine"
    assert recipe.train.mixed_precision is False and recipe.model.params["nOut"] == 256


def test_mixed_precision_default_and_values(tmp_path):
    assert load_recipe(write(tmp_path, GOOD)).train.mixed_precision is True
    for value, expected in [("bf16", "bf16"), ("fp16", "fp16"), ("true", True), ("false", False)]:
        recipe = load_recipe(write(tmp_path, GOOD), [f"train.mixed_precision={value}"])
        assert recipe.train.mixed_precision == expected
    with pytest.raises(XvecError, match="mixed_precision"):
        load_recipe(write(tmp_path, GOOD), ["train.mixed_precision=fp8"])


@pytest.mark.parametrize(
    ("device", "mode", "expected"),
    [
        ("cpu", False, (False, "float32")),
        ("cpu", "bf16", (True, "bfloat16")),
        ("cuda", True, (True, "float16")),
        ("cuda", "bf16", (True, "bfloat16")),
        ("cuda", "fp16", (True, "float16")),
        ("cuda", False, (False, "float32")),
    ],
)
def test_autocast_settings(device, mode, expected):
    import torch

    from xvec.training.optim import autocast_settings

    enabled, dtype = autocast_settings(torch.device(device), mode)
    assert (enabled, str(dtype).removeprefix("torch.")) == expected


def test_autocast_fp16_needs_cuda():
    import torch

    from xvec.training.optim import _cpu_has_bf16, autocast_settings

    with pytest.raises(XvecError, match=r"fp16.*CUDA"):
        autocast_settings(torch.device("cpu"), "fp16")
    assert autocast_settings(torch.device("cpu"), True) == (
        (True, torch.bfloat16) if _cpu_has_bf16() else (False, torch.float32)
    )


@pytest.mark.parametrize("bad", ["train.max_epoch", "=5", "max_epoch=5", "train..x=1"])
def test_malformed_override(bad):
    with pytest.raises(XvecError, match="--set"):
        apply_overrides({"train": {}}, [bad])


def test_override_into_a_value_is_an_error():
    with pytest.raises(XvecError, match="'max_epoch' is a value, not a section"):
        apply_overrides({"train": {"max_epoch": 3}}, ["train.max_epoch.x=1"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(XvecError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_empty_override_restores_the_default():
    data = apply_overrides({"data": {"test_list": "t.txt", "max_frames": 100}}, ["data.test_list="])
    assert data == {"data": {"max_frames": 100}}


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_builds(path):
    from xvec import registry

    recipe = load_recipe(path)
    model = registry.build("model", recipe.model.name, recipe.model.params)
    assert model.embedding_dim > 0
    loss = registry.build(
        "loss",
        recipe.loss.name,
        recipe.loss.params,
        embedding_dim=model.embedding_dim,
        num_classes=10,
    )
    assert recipe.train.nPerSpeaker >= loss.min_per_speaker


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("margin = 0.3", "margin = inf"), r"\[loss\] loss 'amsoftmax' parameter 'margin': inf is"),
        (("scale = 30", "scale = 1e400"), r"parameter 'scale': inf is not a finite number"),
        (("nOut = 512", "nOut = 99999999999999"), r"parameter 'nOut': 99999999999999 is too large"),
        (("batch_size = 200", "batch_size = 99999999999999999999"), r"field 'train.batch_size'"),
        (("batch_size = 200", "batch_size = 2147483648"), r"field 'train.batch_size'"),
        (("max_epoch = 20", "max_epoch = 1e400"), r"field 'train.max_epoch'"),
        (("max_epoch = 20", "max_epoch = 20\nseed = -1"), r"field 'train.seed'"),
        (("[train]", "[optim]\nweight_decay = inf\n[train]"), r"field 'optim.weight_decay'"),
    ],
)
def test_unusable_numbers_are_refused(tmp_path, edit, expected):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(XvecError, match=rf"^{re.escape(str(path))}: .*{expected}"):
        load_recipe(path)


def test_every_recipe_mistake_is_reported_at_once(tmp_path):
    path = write(tmp_path, "[train]\nmax_epoch = 1e400\nbatch_size = 0\n[optim]\nlr = nan\n")
    with pytest.raises(XvecError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for field in ("model", "optim.lr", "train.max_epoch", "train.batch_size"):
        assert f"field '{field}'" in message, message
    both = GOOD.replace("nOut = 512", "nOutt = 512").replace("margin = 0.3", "margin = inf")
    with pytest.raises(XvecError, match=r"\[model\].*'nOutt'.*; \[loss\].*'margin': inf"):
        load_recipe(write(tmp_path, both))
