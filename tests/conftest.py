"""Shared test helpers: where the real data and voxceleb_trainer fixtures live, and ``run_cli``
to run the ``xvec`` command line in-process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XVEC_SHARED", ROOT.parent / "shared"))
VT_FIXTURES = SHARED / "fixtures" / "voxceleb_trainer"
SPEECHOCEAN = SHARED / "data" / "speechocean762"

requires_fixtures = pytest.mark.skipif(
    not VT_FIXTURES.is_dir(), reason=f"voxceleb_trainer fixtures not found at {VT_FIXTURES}"
)
requires_speechocean = pytest.mark.skipif(
    not SPEECHOCEAN.is_dir(), reason=f"speechocean762 data not found at {SPEECHOCEAN}"
)


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch to the two cores of the CI machine and tests reproducible."""
    import torch

    torch.set_num_threads(2)
    yield


@dataclass
class CliResult:
    """What ``xvec ARGS`` did, named like :class:`subprocess.CompletedProcess`."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: object,
    site: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str | None] | None = None,
) -> CliResult:
    """Run ``xvec ARGS`` in this process as the console script does (``xvec.cli.run``).

    Usage errors are one line with exit 2, as with ``CliRunner.invoke(app)``.
    stdin is empty, stdout and stderr are captured apart (``typer.testing.CliRunner``); an
    uncaught exception becomes exit 1 with its traceback on stderr, as in a real process.
    ``site`` puts a test distribution (see :func:`make_distribution`) on the path for this
    call only, as ``PYTHONPATH`` does for a subprocess; ``env`` sets (None: removes)
    variables for this call. What a command changes in the process (environment variables
    such as ``OMP_WAIT_POLICY``, torch threads and deterministic mode, SIGINT/SIGTERM
    handlers, warning filters, the working directory) is put back afterwards. Output that C
    code writes straight to file descriptor 2 is not captured: tests of that, of signals and
    of a fresh interpreter's start-up spawn ``python -m xvec``.
    """
    from typer.testing import CliRunner

    from xvec.cli import run

    argv = [str(arg) for arg in args]
    with _process_state_kept(), plugin_on_path(site):
        if cwd is not None:
            os.chdir(cwd)
        with CliRunner().isolation(env=env) as (stdout, stderr, _):
            try:
                code = run(argv)
            except SystemExit as exc:  # as the interpreter turns it into an exit status
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                if not isinstance(exc.code, int | None):
                    print(exc.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            out, err = stdout.getvalue(), stderr.getvalue()
    return CliResult(argv, code, out.decode(), err.decode())


# What a fresh interpreter starts with (``python -W``-free): pytest shows DeprecationWarnings,
# which a command (whose warnings become ``warning:`` lines) would then print.
_DEFAULT_WARNING_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
]


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Put back what an in-process command may change in the process."""
    import torch

    environ = dict(os.environ)
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in _DEFAULT_WARNING_FILTERS:
                warnings.filterwarnings(action, category=category, module=module, append=True)
            yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
        os.chdir(cwd)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def plugin_on_path(site: Path | None) -> Iterator[None]:
    """Make the test distribution in ``site`` importable and registered, then forget it."""
    if site is None:
        yield
        return
    from xvec import registry

    before = set(sys.modules)
    sys.path.insert(0, str(site))
    registry.refresh()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(site)):
                del sys.modules[name]
        registry.refresh()


def make_distribution(
    root: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]
) -> Path:
    """Write an importable test distribution (dist-info + modules) under ``root``.

    ``entry_points`` maps a group to {name: "module:attr"}. Put ``root`` on ``sys.path`` (and
    call ``xvec.registry.refresh()``) to make importlib.metadata see it.
    """
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, items in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in items.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


TINY_MODEL_SOURCE = '''
import torch
from xvec.plugin import Params, SpeakerModel


class TinyParams(Params):
    nOut: int = 8
    hidden: int = 16
    batch_norm: bool = True


class TinyModel(SpeakerModel):
    """A tiny frame-level MLP with mean pooling, for tests."""

    Params = TinyParams

    def __init__(self, params=None):
        super().__init__(params)
        self.frame = torch.nn.Conv1d(1, self.params.hidden, kernel_size=400, stride=160)
        hidden = self.params.hidden
        self.norm = torch.nn.BatchNorm1d(hidden) if self.params.batch_norm else torch.nn.Identity()
        self.out = torch.nn.Linear(2 * self.params.hidden, self.params.nOut)

    @property
    def embedding_dim(self):
        return self.params.nOut

    def forward(self, waveform):
        frames = torch.relu(self.norm(self.frame(waveform.unsqueeze(1))))
        stats = torch.cat([frames.mean(-1), frames.std(-1)], dim=1)
        return self.out(stats)
'''


@pytest.fixture
def tiny_model_dist(tmp_path, monkeypatch):
    """A test distribution registering ``TinyModel`` in ``xvec.models``."""
    import sys

    from xvec import registry

    root = make_distribution(
        tmp_path / "site",
        "xvec-tiny",
        {"xvec.models": {"TinyModel": "xvec_tiny:TinyModel"}},
        {"xvec_tiny": TINY_MODEL_SOURCE},
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    yield root
    sys.modules.pop("xvec_tiny", None)
    registry.refresh()


def write_tone_corpus(
    root: Path, speakers: int = 6, utterances: int = 4, seconds: float = 1.0
) -> Path:
    """A tiny corpus of speaker-specific harmonic tones in noise (train list + trials).

    Speaker ``k`` has its own fundamental and formant-like emphasis, so a model can learn it.
    """
    import numpy as np
    import soundfile

    rng = np.random.default_rng(1234)
    rate = 16000
    lines, by_speaker = [], {}
    for k in range(speakers):
        f0 = 100 + 25 * k
        for u in range(utterances):
            t = np.arange(int(seconds * rate * (1 + 0.25 * (u % 3)))) / rate
            wave = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.01 * u)) / h for h in range(1, 6))
            wave = 0.2 * wave + 0.02 * rng.standard_normal(t.size)
            name = f"spk{k}/utt{u}.wav"
            (root / "audio" / f"spk{k}").mkdir(parents=True, exist_ok=True)
            soundfile.write(str(root / "audio" / name), wave.astype(np.float32), rate)
            lines.append(f"spk{k} {name}")
            by_speaker.setdefault(k, []).append(name)
    train = [line for line in lines if int(line.split()[0][3:]) < speakers - 2]
    (root / "train_list.txt").write_text("\n".join(train) + "\n")
    trials = []
    test_speakers = list(range(speakers - 2, speakers))
    for k in test_speakers:
        files = by_speaker[k]
        other = by_speaker[test_speakers[0] if k != test_speakers[0] else test_speakers[1]]
        for i in range(len(files) - 1):
            trials.append(f"1 {files[i]} {files[i + 1]}")
            trials.append(f"0 {files[i]} {other[i]}")
    (root / "trials.txt").write_text("\n".join(trials) + "\n")
    return root


@pytest.fixture
def tone_corpus(tmp_path):
    return write_tone_corpus(tmp_path / "corpus")


def bench_module(name: str) -> Any:
    """A module of bench/ (analysis that a benchmark and its tests share), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def after_steps(count: int):
    """A ``train(stop_when=...)`` condition: stop after ``count`` steps of this call."""
    taken = []

    def stop_when(position) -> bool:
        taken.append(position.step)
        return len(taken) >= count

    return stop_when


class Recorder:
    """A training observer that keeps every event as ``(name, first argument)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: object) -> None:
            self.events.append((name, args[0] if args else None))
            self.calls.append((name, args))

        return record

    def names(self) -> list[str]:
        """Event names with runs of the same one collapsed (``step_done`` x N -> once)."""
        names = [name for name, _ in self.events]
        return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def three_speaker_list(path: Path, names: list[str]) -> Any:
    """A :class:`xvec.data.TrainList` of ``names``, file ``i`` by speaker ``s{i % 3}``."""
    import numpy as np

    from xvec.data import TrainList

    return TrainList(
        path=path,
        files=names,
        labels=np.array([i % 3 for i in range(len(names))], dtype=np.int64),
        speakers=["s0", "s1", "s2"],
        lines=list(range(1, len(names) + 1)),
    )
