"""Entry-point discovery: built-ins, lazy import, unknown/broken/duplicate plugins."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from xvec import registry
from xvec.errors import XvecError

from conftest import make_distribution

BUILTIN_MODELS = {"ResNetSE34L", "ResNetSE34V2", "VGGVox40", "RawNet3", "ECAPA-TDNN", "TDNN"}
BUILTIN_LOSSES = {
    "softmax",
    "amsoftmax",
    "aamsoftmax",
    "ge2e",
    "proto",
    "triplet",
    "angleproto",
    "softmaxproto",
}


def test_builtins_are_registered_through_entry_points():
    models = registry.entries("model")
    losses = registry.entries("loss")
    assert set(models) >= BUILTIN_MODELS
    assert set(losses) >= BUILTIN_LOSSES
    assert models["ResNetSE34L"].distribution == "xvec"


def test_listing_does_not_import_models():
    code = (
        "import sys; from xvec import registry; registry.entries('model'); "
        "registry.entries('loss'); import xvec.cli; "
        "print(any(m.startswith('xvec.models.') for m in sys.modules), 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_unknown_name_lists_available_and_close_match():
    with pytest.raises(XvecError) as info:
        registry.get_entry("loss", "amsoftmx")
    message = str(info.value)
    assert "unknown loss 'amsoftmx'" in message
    assert "Did you mean 'amsoftmax'" in message
    assert "angleproto" in message and "\n" not in message


def test_case_insensitive_lookup():
    assert registry.get_entry("model", "resnetse34l").name == "ResNetSE34L"


def test_plugin_model_builds_with_validated_params(tiny_model_dist):
    model = registry.build("model", "TinyModel", {"nOut": 5})
    assert model.embedding_dim == 5
    with pytest.raises(XvecError, match=r"parameter 'nOutt'.*allowed parameters: nOut, hidden"):
        registry.build("model", "TinyModel", {"nOutt": 5})
    summary, params = registry.describe(type(model))
    assert summary.startswith("A tiny frame-level MLP")
    assert ("nOut", "int", 8) in params


def test_broken_plugin_warns_and_others_still_work(tmp_path, monkeypatch):
    root = make_distribution(
        tmp_path / "site",
        "xvec-broken",
        {"xvec.losses": {"brokenloss": "xvec_broken_mod:Loss"}},
        {"xvec_broken_mod": "raise ImportError('needs libfoo')\n"},
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = registry.loadable("loss")
        assert "brokenloss" not in loaded
        assert "amsoftmax" in loaded
        messages = [str(w.message) for w in caught]
        assert any(
            "brokenloss" in m and "xvec-broken" in m and "needs libfoo" in m for m in messages
        )
        with pytest.raises(XvecError, match="failed to load: ImportError: needs libfoo"):
            registry.get_class("loss", "brokenloss")
    finally:
        registry.refresh()


def test_duplicate_name_from_two_packages_is_an_error(tmp_path, monkeypatch):
    for dist in ("xvec-dup-a", "xvec-dup-b"):
        module = dist.replace("-", "_")
        make_distribution(
            tmp_path / dist,
            dist,
            {"xvec.models": {"DupNet": f"{module}:Net"}},
            {module: "Net = None\n"},
        )
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    registry.refresh()
    try:
        with pytest.raises(XvecError) as info:
            registry.entries("model")
        assert "'DupNet' is registered by two packages" in str(info.value)
        assert "xvec-dup-a" in str(info.value) and "xvec-dup-b" in str(info.value)
    finally:
        registry.refresh()
