"""nox sessions: tests, lint (ruff), bench (the scripts in bench/)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (the same command README.md and .ci/run use)."""
    session.install("-e", ".[dev,export]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on everything that is Python."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "bench", "plugins", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark script in bench/ (each prints its numbers)."""
    session.install("-e", ".[dev,export]")
    for script in sorted(Path("bench").glob("*.py")):
        session.log(f"== {script}")
        session.run("python", str(script), *session.posargs)
