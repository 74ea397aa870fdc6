"""Batched embedding extraction, the evaluation protocols, and embedding files.

Protocols:

- ``full``: each file embedded whole (optionally capped at ``max_seconds``). Files are sorted by
  length and batched with files of nearly the same length; within a batch every file is trimmed
  to the shortest (at most ``length_tolerance`` of a file is dropped; 0 = exact, batch only equal
  lengths).
- ``vt-crops``: voxceleb_trainer's protocol, ``num_eval`` evenly spaced crops of ``eval_frames``;
  embeddings are ``[files, crops, dim]``.

Audio is decoded in a background thread while the model runs, under ``torch.inference_mode``.
Each unique file is embedded once. Partial results are saved next to the output, so an
interrupted ``xvec embed`` resumes without recomputing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xvec.audio import SAMPLE_RATE, AudioInfo, audio_info, eval_crops, read_audio, wrap_pad
from xvec.errors import XvecError
from xvec.files import atomic_write_bytes, metadata_record, safetensors_metadata

if TYPE_CHECKING:
    import torch

MIN_SAMPLES = SAMPLE_RATE // 2  # shorter files are wrap-padded to 0.5 s
MIN_MAX_SECONDS = 0.025  # a capped file must hold one 25 ms window
PROTOCOLS = ("full", "vt-crops")


@dataclass
class Protocol:
    """How files are turned into model inputs."""

    name: str = "full"
    max_seconds: float | None = None
    eval_frames: int = 400
    num_eval: int = 10
    length_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise XvecError(f"unknown protocol '{self.name}'; choose one of {', '.join(PROTOCOLS)}")
        if self.max_seconds is not None and not (
            math.isfinite(self.max_seconds) and self.max_seconds >= MIN_MAX_SECONDS
        ):
            raise XvecError(
                f"--max-seconds {self.max_seconds}: too small; give at least {MIN_MAX_SECONDS} "
                "(one 25 ms analysis window)"
            )
        if self.eval_frames < 0:
            raise XvecError(
                f"--eval-frames {self.eval_frames}: must be >= 0 (0 = each file whole)"
            )
        if self.num_eval < 1:
            raise XvecError(f"--num-eval {self.num_eval}: must be at least 1 crop per file")
        if not 0 <= self.length_tolerance < 1:
            raise XvecError(
                f"length tolerance must be in [0, 1) (0 = every file whole), "
                f"got {self.length_tolerance}"
            )

    @property
    def crops_per_file(self) -> int:
        """Crops each file gives under vt-crops (``eval_frames`` 0: the whole file, once)."""
        return 1 if self.eval_frames == 0 else self.num_eval

    def describe(self) -> dict[str, Any]:
        return {
            "protocol": self.name,
            "max_seconds": self.max_seconds,
            "eval_frames": self.eval_frames,
            "num_eval": self.num_eval,
            "length_tolerance": self.length_tolerance,
        }


@dataclass
class EmbedStats:
    """What an extraction did: counts, time and notes to show the user."""

    files: int = 0
    computed: int = 0
    seconds: float = 0.0
    short_files: int = 0
    resampled_files: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def files_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; bad or absent devices are an XvecError."""
    from xvec.devices import parse_device

    return parse_device(device)


def _plan_batches(
    lengths: np.ndarray, protocol: Protocol, batch_size: int, max_batch_samples: int
) -> list[np.ndarray]:
    """Group file indices into batches (by sorted length for ``full``)."""
    order = np.argsort(-lengths, kind="stable")
    if protocol.name == "vt-crops":
        # whole files (eval_frames 0) differ in length: one file per batch
        per_batch = 1 if protocol.eval_frames == 0 else max(1, batch_size // protocol.num_eval)
        return [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]
        end = start + 1
        while (
            end < len(order)
            and end - start < batch_size
            and lengths[order[end]] >= longest * (1 - protocol.length_tolerance)
            and (end - start + 1) * lengths[order[end]] <= max_batch_samples
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def _load_inputs(
    root: Path, files: Sequence[str], infos: Sequence[AudioInfo], protocol: Protocol
) -> tuple[np.ndarray, int]:
    """Model input for one batch: ``[files, samples]`` (full) or ``[files*crops, samples]``."""
    short = 0
    if protocol.name == "vt-crops":
        crops = [
            eval_crops(read_audio(root / f, info=i), protocol.eval_frames, protocol.num_eval)
            for f, i in zip(files, infos, strict=True)
        ]
        return np.concatenate(crops), 0
    cap = int(protocol.max_seconds * SAMPLE_RATE) if protocol.max_seconds else -1
    audios = []
    for name, info in zip(files, infos, strict=True):
        audio = read_audio(root / name, frames=cap, info=info)
        if audio.shape[0] < MIN_SAMPLES:
            audio = wrap_pad(audio, MIN_SAMPLES)[:MIN_SAMPLES]
            short += 1
        audios.append(audio)
    length = min(a.shape[0] for a in audios)
    return np.stack([a[:length] for a in audios]), short


class EmbeddingStore:
    """Embeddings by file name, saved as safetensors (one tensor per file, keyed by its path)."""

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.meta = meta or {}
        self.path: Path | None = None

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save

        payload = save(
            {k: np.ascontiguousarray(v) for k, v in self.vectors.items()},
            metadata={"xvec_embeddings": json.dumps(self.meta)},
        )
        atomic_write_bytes(path, payload)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingStore:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        path = Path(path)
        if not path.is_file():
            raise XvecError(f"{path}: embeddings file not found")
        data = path.read_bytes()
        try:
            vectors = load(data)
            metadata = safetensors_metadata(data)
        except (SafetensorError, ValueError, OverflowError) as exc:
            raise XvecError(f"{path}: not a readable safetensors embeddings file") from exc
        raw = metadata.get("xvec_embeddings")
        store = cls(metadata_record(path, raw, "xvec_embeddings", "embeddings") if raw else {})
        store.vectors = vectors
        store.path = path
        store.check(path)
        return store

    def check(self, source: str | Path) -> None:
        """Every vector finite and of one shape; otherwise an XvecError naming the key."""
        shape = None
        first = ""
        for key, vector in self.vectors.items():
            if not np.isfinite(vector).all():
                raise XvecError(
                    f"{source}: embedding of '{key}' contains NaN or infinite values; "
                    "re-embed that file (is its audio or the model broken?)"
                )
            if shape is None:
                shape, first = vector.shape, key
            elif vector.shape != shape:
                raise XvecError(
                    f"{source}: embedding of '{key}' has shape {tuple(vector.shape)} but "
                    f"'{first}' has {tuple(shape)}; all embeddings must come from one model "
                    "and protocol"
                )

    def cohort_matrix(self) -> np.ndarray:
        """All vectors stacked, for score normalisation; an empty store is an XvecError."""
        if not self.vectors:
            raise XvecError(
                f"{self.path or 'cohort embeddings'}: no embeddings in the cohort file; "
                "embed cohort speakers with 'xvec embed'"
            )
        return np.stack(list(self.vectors.values()))

    def matrix(self, files: Sequence[str], source: str | Path) -> np.ndarray:
        """Stack the embeddings of ``files``; names absent from the store are one error."""
        missing = [f for f in files if f not in self.vectors]
        if missing:
            raise XvecError(
                f"{source}: {len(missing)} file(s) have no embedding in "
                f"{self.path or 'the embeddings file'} "
                f"(e.g. {', '.join(missing[:3])}); embed them first with 'xvec embed'"
            )
        return np.stack([self.vectors[f] for f in files])


def model_fingerprint(path: str | Path) -> str:
    """A short content hash of a checkpoint, so partial results are reused only for it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a" if path.is_dir() else "not found:"
        raise XvecError(f"{path}: {what} checkpoint file")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise XvecError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from exc
    return digest.hexdigest()[:16]


def _check_finite(output: np.ndarray, names: Sequence[str], root: Path) -> None:
    """Refuse NaN or infinite embeddings, naming the first file that produced one."""
    bad = ~np.isfinite(output.reshape(len(names), -1)).all(axis=1)
    if bad.any():
        raise XvecError(
            f"{root / names[int(np.argmax(bad))]}: the model produced NaN or infinite embedding "
            f"values ({int(bad.sum())} file(s) in this batch); check the checkpoint and the audio"
        )


def embed_files(
    model: torch.nn.Module,
    root: str | Path,
    files: Sequence[str],
    protocol: Protocol | None = None,
    *,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    max_batch_seconds: float = 240.0,
    progress: Callable[[int, int], None] | None = None,
    done: dict[str, np.ndarray] | None = None,
    checkpoint_every: float = 0.0,
    on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
    stats: EmbedStats | None = None,
) -> dict[str, np.ndarray]:
    """Embed each unique file in ``files`` (relative to ``root``) and return {file: vector}.

    ``done`` holds results to reuse (not recomputed). ``on_checkpoint`` is called with all
    results so far every ``checkpoint_every`` seconds and when an error stops the run, so an
    interruption loses nothing.
    """
    protocol = protocol or Protocol()
    stats = stats if stats is not None else EmbedStats()
    root = Path(root)
    results: dict[str, np.ndarray] = dict(done or {})
    todo = [f for f in dict.fromkeys(files) if f not in results]
    stats.files = len(results) + len(todo)
    if not todo:
        return results
    infos = [audio_info(root / f) for f in todo]
    stats.resampled_files = sum(i.sample_rate != SAMPLE_RATE for i in infos)
    if stats.resampled_files:
        stats.notes.append(
            f"{stats.resampled_files} file(s) not at {SAMPLE_RATE} Hz were resampled"
        )
    multichannel = sum(i.channels > 1 for i in infos)
    if multichannel:
        stats.notes.append(f"{multichannel} multi-channel file(s) were downmixed to mono")
    lengths = np.array([i.frames_at(SAMPLE_RATE) for i in infos], dtype=np.int64)
    if protocol.name == "full" and protocol.max_seconds:
        lengths = np.minimum(lengths, int(protocol.max_seconds * SAMPLE_RATE))
    batches = _plan_batches(
        np.maximum(lengths, MIN_SAMPLES), protocol, batch_size, int(max_batch_seconds * SAMPLE_RATE)
    )
    import torch  # here, not at import time: embedding files and scoring need no torch

    device = pick_device(str(device)) if not isinstance(device, torch.device) else device
    model = model.to(device).eval()

    def load(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        names = [todo[i] for i in batch]
        waves, short = _load_inputs(root, names, [infos[i] for i in batch], protocol)
        return batch, waves, short

    start = time.perf_counter()
    last_save = start
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = iter(batches)
        future = pool.submit(load, next(pending))
        try:
            while future is not None:
                batch, waves, short = future.result()
                following = next(pending, None)
                future = pool.submit(load, following) if following is not None else None
                stats.short_files += short
                with torch.inference_mode():
                    output = model(torch.from_numpy(waves).to(device)).float().cpu().numpy()
                if protocol.name == "vt-crops":
                    output = output.reshape(len(batch), protocol.crops_per_file, -1)
                _check_finite(output, [todo[i] for i in batch], root)
                for row, index in enumerate(batch):
                    results[todo[index]] = output[row]
                stats.computed += len(batch)
                if progress is not None:
                    progress(len(batch), len(todo))
                now = time.perf_counter()
                if (
                    on_checkpoint is not None
                    and checkpoint_every
                    and now - last_save > checkpoint_every
                ):
                    on_checkpoint(results)
                    last_save = now
        except BaseException:
            if future is not None:
                future.cancel()
            if on_checkpoint is not None and len(results) > len(done or {}):
                on_checkpoint(results)
            raise
    stats.seconds = time.perf_counter() - start
    if stats.short_files:
        stats.notes.append(
            f"{stats.short_files} file(s) shorter than 0.5 s were wrap-padded to 0.5 s"
        )
    return results
