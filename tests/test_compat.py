"""The supported torch range: one line outside it, and the same range as pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from xvec.compat import TORCH_RANGE, check_torch_version, installed_torch
from xvec.errors import XvecError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("release", ["2.11.0", "2.13.0+cpu", "2.15.0", "2.15.1.dev20261201"])
def test_supported_releases_pass(release: str) -> None:
    check_torch_version(release)


@pytest.mark.parametrize("release", ["2.10.1", "2.16.0", "3.0.0", "1.13.1", "nightly"])
def test_unsupported_release_is_one_line_naming_it(release: str) -> None:
    with pytest.raises(XvecError) as caught:
        check_torch_version(release)
    message = str(caught.value)
    assert release in message and TORCH_RANGE in message and "\n" not in message


def test_range_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"torch{TORCH_RANGE}" in project["dependencies"]
    assert not any(dep.startswith("torchaudio") for dep in project["dependencies"])
    assert project["optional-dependencies"]["torchaudio"] == ["torchaudio>=2.11"]


def test_installed_torch_is_supported_and_constraints_pin_it() -> None:
    installed = installed_torch()
    check_torch_version(installed)
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    ]
    assert len(pins) == 1
    check_torch_version(pins[0].removeprefix("torch=="))


def test_cli_refuses_an_unsupported_torch_in_one_line(tmp_path: Path) -> None:
    """A stand-in torch distribution 2.9.0 first on the path: every command stops at once."""
    dist = tmp_path / "torch-2.9.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from xvec.cli import main; main()"
    run = subprocess.run(
        [sys.executable, "-c", code, "count-classes", "x.txt"], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0
    assert "torch 2.9.0 is installed" in run.stderr and "Traceback" not in run.stderr


def test_eval_and_embed_ask_for_sleeping_threads_unless_the_user_chose(tmp_path: Path) -> None:
    """The policy reaches the process before torch loads; a user's own setting is kept."""
    import os

    code = (
        "import os, sys; from xvec.cli import main; sys.argv = ['xvec'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('policy', os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    args = [
        "embed",
        "--model",
        str(tmp_path / "none.safetensors"),
        "--list",
        "x",
        "-o",
        "e",
        "-r",
        str(tmp_path),
    ]
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    assert "policy PASSIVE" in run.stdout
    run = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
    )
    assert "policy ACTIVE" in run.stdout
    run = subprocess.run(
        [sys.executable, "-c", code, "count-classes", "x"], capture_output=True, text=True, env=env
    )
    assert "policy None" in run.stdout
