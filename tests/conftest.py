"""Shared test helpers: where the real data and voxceleb_trainer fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

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


def after_steps(count: int):
    """A ``train(stop_when=...)`` condition: stop after ``count`` steps of this call."""
    taken = []

    def stop_when(position) -> bool:
        taken.append(position.step)
        return len(taken) >= count

    return stop_when
