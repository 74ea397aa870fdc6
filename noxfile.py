"""nox sessions: tests, lint, bench; newest (drift check) and torch_range (oldest/newest torch).

``tests`` installs the tested versions in ``constraints.txt`` (what .ci/run installs). ``newest``
installs the newest release of everything the project allows, so an upstream change that breaks
users shows up here as a failing session first. ``torch_range`` runs the suite on the oldest and
newest supported torch, everything else at its tested version.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = "constraints.txt"
TORCH_RELEASES = ["2.11.0", "2.15.0"]  # the ends of xvec.compat.TORCH_RANGE


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite at the tested versions (the same command README.md and .ci/run use)."""
    session.install("-c", CONSTRAINTS, "-e", ".[dev,export]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def newest(session: nox.Session) -> None:
    """The suite on the newest allowed release of every dependency (no constraints)."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev,export]")
    session.run("python", "-m", "pip", "list")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
@nox.parametrize("torch", TORCH_RELEASES)
def torch_range(session: nox.Session, torch: str) -> None:
    """The suite on one end of the supported torch range; other packages as tested."""
    pins = [
        line
        for line in Path(CONSTRAINTS).read_text().splitlines()
        if not line.startswith("torch==")
    ]
    local = Path(session.create_tmp()) / "constraints-without-torch.txt"
    local.write_text("\n".join(pins) + "\n")
    session.install("-c", str(local), "-e", ".[dev,export]", f"torch=={torch}")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on everything that is Python."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "bench", "plugins", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark script in bench/ (each prints its numbers).

    Helpers (``_*.py``) and recipe_pairs.py (hours of training, which takes its two commands
    as arguments) are left out.
    """
    session.install("-c", CONSTRAINTS, "-e", ".[dev,export]")
    for script in sorted(Path("bench").glob("[!_]*.py")):
        if script.name == "recipe_pairs.py":
            continue
        session.log(f"== {script}")
        session.run("python", str(script), *session.posargs)
