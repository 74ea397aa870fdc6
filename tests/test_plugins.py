"""A real third-party plugin: install the example package, list, validate, train, uninstall.

The session fixture pip-installs ``plugins/xvec-subcenter-aam`` (offline, no build isolation)
into the running environment and removes it at the end, restoring a copy that was installed
before. Broken and duplicate plugins are covered by test_registry.py with fake distributions.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
import torch

from xvec import checkpoint, registry
from xvec.config import load_recipe
from xvec.errors import XvecError

from conftest import ROOT, TINY_MODEL_SOURCE

PLUGIN_SOURCE = ROOT / "plugins" / "xvec-subcenter-aam"
DIST = "xvec-subcenter-aam"
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PIP_NO_INDEX": "1"}


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **PIP_ENV},
        timeout=300,
    )


def _installed_version() -> str | None:
    importlib.invalidate_caches()
    try:
        return distribution(DIST).version
    except PackageNotFoundError:
        return None


def _forget_plugin() -> None:
    """Make this process see the environment as it is now (after pip ran)."""
    importlib.invalidate_caches()
    for module in [m for m in sys.modules if m.split(".")[0] == "xvec_subcenter_aam"]:
        del sys.modules[module]
    registry.refresh()


class PluginInstaller:
    """Installs and removes the example plugin in the running interpreter's environment."""

    def __init__(self, build_dir: Path) -> None:
        # Build from a copy, so build/ and *.egg-info never appear in the source tree.
        self.source = shutil.copytree(
            PLUGIN_SOURCE, build_dir / DIST, ignore=shutil.ignore_patterns("build", "*.egg-info")
        )

    def install(self) -> None:
        if _installed_version() is None:
            _run_pip("install", "--no-deps", "--no-build-isolation", str(self.source))
        _forget_plugin()

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        result = _run_pip("uninstall", "-y", DIST)
        _forget_plugin()
        return result


def _run_pip(*args: str) -> subprocess.CompletedProcess[str]:
    result = _pip(*args)
    if result.returncode != 0:
        pytest.fail(
            f"pip {' '.join(args)} failed (building offline needs setuptools>=70.1 or the "
            f"'wheel' package in this environment):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result


@pytest.fixture(scope="session")
def plugin_installer(tmp_path_factory) -> Iterator[PluginInstaller]:
    """Session-wide installer; the environment is left as it was found."""
    previous = None
    if _installed_version() is not None:
        previous = json.loads(distribution(DIST).read_text("direct_url.json") or "{}")
        if not str(previous.get("url", "")).startswith("file://"):
            pytest.skip(f"{DIST} is already installed, not from a folder; tests would replace it")
        _run_pip("uninstall", "-y", DIST)
    installer = PluginInstaller(tmp_path_factory.mktemp("plugin-build"))
    yield installer
    if _installed_version() is not None:
        installer.uninstall()
    if previous is not None:
        editable = ["-e"] if previous.get("dir_info", {}).get("editable") else []
        folder = url2pathname(urlparse(previous["url"]).path)
        _run_pip("install", "--no-deps", "--no-build-isolation", *editable, folder)
    _forget_plugin()


@pytest.fixture
def installed_plugin(plugin_installer: PluginInstaller) -> PluginInstaller:
    plugin_installer.install()
    return plugin_installer


def _xvec(*args: str, env_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    if env_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(env_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "xvec", *args], capture_output=True, text=True, env=env, timeout=300
    )


RECIPE = """
[data]
train_list = "{corpus}/train_list.txt"
train_path = "{corpus}/audio"
test_list = "{corpus}/trials.txt"
test_path = "{corpus}/audio"
max_frames = 50

[model]
name = "TinyModel"
nOut = 8

[loss]
name = "subcenter_aam"
margin = 0.2
scale = 30
K = 2

[optim]
lr = 0.01

[train]
max_epoch = 1
batch_size = 4
test_interval = 1
seed = 5
num_workers = 0
output_dir = "{out}"
log_every = 1
"""


def _recipe(tmp_path: Path, corpus: Path) -> Path:
    path = tmp_path / "subcenter.toml"
    path.write_text(RECIPE.format(corpus=corpus, out=tmp_path / "run"))
    return path


def test_losses_command_lists_the_plugin_with_its_package_and_parameters(installed_plugin):
    result = _xvec("losses")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "subcenter_aam" in line)
    assert f"{DIST} 0.1.0" in row and "Sub-center AAM softmax" in row
    for parameter in ("margin: float = 0.2", "scale: float = 30.0", "K: int = 3"):
        assert parameter in result.stdout
    assert "easy_margin: bool = False" in result.stdout
    assert "aamsoftmax" in result.stdout  # the built-ins are still there


def test_recipe_parameters_are_checked_against_the_plugin_schema(
    installed_plugin, tmp_path, tone_corpus, tiny_model_dist
):
    path = _recipe(tmp_path, tone_corpus)
    recipe = load_recipe(path, ["loss.K=4"])
    assert recipe.loss is not None and recipe.loss.name == "subcenter_aam"
    assert recipe.loss.params == {"margin": 0.2, "scale": 30, "K": 4}
    with pytest.raises(XvecError) as info:
        load_recipe(path, ["loss.subcenters=3"])
    message = str(info.value)
    assert "[loss] loss 'subcenter_aam' parameter 'subcenters'" in message
    assert "allowed parameters: margin, scale, K, easy_margin" in message
    with pytest.raises(XvecError, match=r"parameter 'K': Input should be greater than or equal"):
        load_recipe(path, ["loss.K=0"])


@pytest.mark.slow
def test_train_evaluate_then_uninstall(installed_plugin, tmp_path, tone_corpus, tiny_model_dist):
    path = _recipe(tmp_path, tone_corpus)
    overrides = ["--set", "train.max_epoch=2", "--set", "loss.margin=0.1"]
    trained = _xvec("train", str(path), *overrides, env_path=tiny_model_dist)
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 8 and all(value == value for value in losses)  # 16 utts / 4, 2 epochs

    best = run / "best.safetensors"
    ckpt = checkpoint.read_checkpoint(best)
    record = ckpt.meta["loss"]
    assert (record["name"], record["package"], record["package_version"]) == (
        "subcenter_aam",
        DIST,
        "0.1.0",
    )
    assert record["params"] == {"margin": 0.1, "scale": 30.0, "K": 2, "easy_margin": False}
    # 4 training speakers x 2 sub-centres, 8-dimensional embeddings.
    assert ckpt.loss_state["weight"].shape == (8, 8)
    loss = checkpoint.build_loss(best, ckpt)
    assert type(loss).__name__ == "SubCenterAAM" and loss.params.K == 2
    assert torch.equal(loss.weight.detach(), ckpt.loss_state["weight"])

    evaluated = _xvec(
        *("eval", "--model", str(best), "--trials", str(tone_corpus / "trials.txt")),
        *("--audio-root", str(tone_corpus / "audio"), "--out-dir", str(tmp_path / "eval")),
        env_path=tiny_model_dist,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0 <= json.loads((tmp_path / "eval" / "result.json").read_text())["eer"] <= 100

    removed = installed_plugin.uninstall()
    assert f"Successfully uninstalled {DIST}" in removed.stdout
    elsewhere = f"train.output_dir={tmp_path / 'run2'}"
    again = _xvec("train", str(path), "--set", elsewhere, env_path=tiny_model_dist)
    assert again.returncode == 1
    error = again.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert "unknown loss 'subcenter_aam'. Available:" in error and "aamsoftmax" in error
    assert not (tmp_path / "run2").exists()

    with pytest.raises(XvecError) as info:
        checkpoint.build_loss(best, checkpoint.read_checkpoint(best))
    message = str(info.value)
    assert f"needs loss 'subcenter_aam' from package '{DIST}'" in message
    assert f"pip install '{DIST}==0.1.0'" in message
    # Embedding needs only the model's package: the checkpoint still evaluates without the loss.
    assert checkpoint.load_model(best).embedding_dim == 8


@pytest.mark.slow
def test_example_plugin_own_tests_pass():
    """The package's own tests (run from its folder, importing it from src/) pass in CI too."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=PLUGIN_SOURCE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


def test_docs_model_example_is_the_tested_tiny_model():
    """docs/plugins.md shows the model the suite trains with, so the example is known to work."""
    docs = (ROOT / "docs" / "plugins.md").read_text()
    example = docs.split("Minimal example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert example.strip() == TINY_MODEL_SOURCE.strip()
