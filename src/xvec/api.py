"""The small stable Python API: load a checkpoint, embed audio, score pairs.

>>> import xvec
>>> enc = xvec.load("model.safetensors")                # doctest: +SKIP
>>> enc.embed("a.wav").shape                            # doctest: +SKIP
(512,)
>>> enc.score("a.wav", "b.wav")                         # doctest: +SKIP
0.73

The protocols (:class:`xvec.protocol.Protocol`) are those of ``xvec embed``: ``full`` (whole
file, cosine scoring) and ``vt-crops`` (voxceleb_trainer's evenly spaced crops and its
crop-distance score). Every file is embedded whole by default, in batches of files of equal
length, so :meth:`Encoder.embed_batch` gives each file's :meth:`Encoder.embed` result;
``length_tolerance`` above 0 batches files of nearly equal length by trimming them (faster,
not exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from xvec.audio import SAMPLE_RATE
from xvec.devices import parse_device
from xvec.embed import embed_files, model_call
from xvec.inference import prepare_for_inference
from xvec.protocol import (
    EVAL_FRAMES,
    LENGTH_TOLERANCE,
    NUM_EVAL,
    Precision,
    Protocol,
    ProtocolName,
)

AudioInput = str | Path | np.ndarray


class Encoder:
    """A speaker-embedding extractor ready for inference (eval mode, on its device)."""

    def __init__(
        self,
        model: torch.nn.Module,
        protocol: Protocol | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 32,
    ) -> None:
        self.device = parse_device(str(device))
        self.model = prepare_for_inference(model, self.device)
        self.protocol = protocol or Protocol()
        self.batch_size = batch_size

    @property
    def embedding_dim(self) -> int:
        """Size of one embedding vector."""
        return int(self.model.embedding_dim)

    @property
    def sample_rate(self) -> int:
        """Sample rate the model expects; files at other rates are resampled on reading."""
        return int(getattr(self.model, "sample_rate", SAMPLE_RATE))

    def embed(self, audio: AudioInput) -> np.ndarray:
        """One file's (or one 16 kHz mono waveform's) embedding: ``[dim]``, or ``[crops, dim]``
        with the ``vt-crops`` protocol."""
        if isinstance(audio, np.ndarray):
            return self._embed_waveform(audio)
        return self.embed_batch([audio])[0]

    def embed_batch(self, files: Sequence[str | Path]) -> np.ndarray:
        """Embeddings of several files, ``[files, dim]`` (or with crops): each equal to the
        file's :meth:`embed`: files share a batch only at equal length or, for a model with
        ``exact_padding``, zero-padded with their lengths (unless the protocol's
        ``length_tolerance`` trims them)."""
        names = [str(f) for f in files]
        vectors = embed_files(
            self.model,
            Path(""),
            names,
            self.protocol,
            batch_size=self.batch_size,
            device=self.device,
            prepare=False,
        )
        return np.stack([vectors[name] for name in names])

    def score(self, first: AudioInput, second: AudioInput) -> float:
        """Similarity of two recordings (higher = more likely the same speaker)."""
        pair = np.stack([self.embed(first), self.embed(second)])
        return float(self.protocol.score(pair, np.array([0]), np.array([1]))[0])

    def _embed_waveform(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected a mono waveform [samples], got shape {audio.shape}")
        batch, _ = self.protocol.file_input(audio)
        output = model_call(self.model, batch, self.device, self.protocol.precision)
        return output if self.protocol.crops else output[0]


def load(
    path: str | Path,
    protocol: ProtocolName = "full",
    device: str = "auto",
    *,
    max_seconds: float | None = None,
    eval_frames: int = EVAL_FRAMES,
    num_eval: int = NUM_EVAL,
    batch_size: int = 32,
    length_tolerance: float = LENGTH_TOLERANCE,
    precision: Precision = "fp32",
) -> Encoder:
    """Load an xvec checkpoint (``.safetensors``) as an :class:`Encoder`.

    ``length_tolerance`` above 0 trades exactness for speed in :meth:`Encoder.embed_batch`:
    files whose lengths differ by up to that fraction are batched, trimmed to the shortest.
    ``precision="bf16"`` runs the model under bfloat16 autocast: faster on CPUs with bf16
    units, embeddings ~1e-3 from the exact ones.
    """
    from xvec.checkpoint import load_model  # torch: `import xvec` stays light until a load

    model = load_model(path)
    chosen = Protocol(
        protocol,
        max_seconds=max_seconds,
        eval_frames=eval_frames,
        num_eval=num_eval,
        length_tolerance=length_tolerance,
        precision=precision,
    )
    return Encoder(model, chosen, device=device, batch_size=batch_size)
