"""Audio input: soundfile reads, mono downmix, resampling, and voxceleb_trainer-exact crops.

Crops read only the frames they need (soundfile ``start``/``frames``). Signals of a crop's length
or shorter are wrap-padded exactly as voxceleb_trainer does (``numpy.pad(..., "wrap")`` to one
sample more than the crop). Every unreadable input becomes a one-line :class:`XvecError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from xvec.errors import XvecError

SAMPLE_RATE = 16000
HOP = 160  # samples per 10 ms frame at 16 kHz
WINDOW_EXTRA = 240  # window length (400) minus hop: crop = frames * HOP + WINDOW_EXTRA


def crop_samples(frames: int) -> int:
    """Samples in a voxceleb_trainer crop of ``frames`` 10 ms frames (200 -> 32,240)."""
    return frames * HOP + WINDOW_EXTRA


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: length in frames at its own rate, rate and channels."""

    frames: int
    sample_rate: int
    channels: int

    def frames_at(self, sample_rate: int) -> int:
        """Length in samples once resampled to ``sample_rate``."""
        return int(round(self.frames * sample_rate / self.sample_rate))


def _fail(path: str | Path, exc: Exception) -> XvecError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = reason.replace(f"Error opening {str(path)!r}: ", "")
    return XvecError(f"{path}: cannot read audio ({reason}); is it a valid wav/flac/ogg file?")


def audio_info(path: str | Path) -> AudioInfo:
    """Header information of an audio file; unreadable or empty files raise an XvecError."""
    try:
        info = soundfile.info(str(path))
    except FileNotFoundError as exc:
        raise XvecError(f"{path}: audio file not found") from exc
    except (RuntimeError, soundfile.LibsndfileError, OSError) as exc:
        if not Path(path).exists():
            raise XvecError(f"{path}: audio file not found") from exc
        raise _fail(path, exc) from exc
    if info.frames <= 0:
        raise XvecError(f"{path}: empty audio file (0 samples)")
    return AudioInfo(
        frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels)
    )


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation) of a 1-D float32 signal."""
    if orig_rate == new_rate:
        return audio
    import torch
    import torchaudio.functional as AF

    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return AF.resample(tensor, orig_rate, new_rate).numpy()


def read_audio(
    path: str | Path,
    start: int = 0,
    frames: int = -1,
    sample_rate: int = SAMPLE_RATE,
    info: AudioInfo | None = None,
) -> np.ndarray:
    """Read mono float32 samples ``[start, start + frames)`` counted at ``sample_rate``.

    Multi-channel files are averaged to mono; files at another rate are resampled (only the
    requested span is read). NaN or infinite samples are an error.
    """
    info = info or audio_info(path)
    ratio = info.sample_rate / sample_rate
    src_start = int(round(start * ratio))
    src_frames = -1 if frames < 0 else int(round(frames * ratio))
    try:
        data, _ = soundfile.read(
            str(path), start=src_start, frames=src_frames, dtype="float32", always_2d=True
        )
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as exc:
        raise _fail(path, exc) from exc
    audio = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if audio.size == 0:
        raise XvecError(f"{path}: no samples could be read (empty or truncated file)")
    if not np.isfinite(audio).all():
        raise XvecError(f"{path}: contains NaN or Inf samples; re-encode the file")
    if info.sample_rate != sample_rate:
        audio = resample(audio, info.sample_rate, sample_rate)
        if frames >= 0:
            audio = audio[:frames]
    return np.ascontiguousarray(audio, dtype=np.float32)


def wrap_pad(audio: np.ndarray, length: int) -> np.ndarray:
    """voxceleb_trainer's padding: a signal of ``length`` samples or fewer wraps to length+1."""
    if audio.shape[0] <= length:
        return np.pad(audio, (0, length - audio.shape[0] + 1), mode="wrap")
    return audio


def train_crop(
    path: str | Path, frames: int, rng: np.random.Generator, info: AudioInfo | None = None
) -> np.ndarray:
    """A random training crop of ``frames`` frames, reading only those samples from disk."""
    length = crop_samples(frames)
    info = info or audio_info(path)
    total = info.frames_at(SAMPLE_RATE)
    if total <= length:
        return wrap_pad(read_audio(path, info=info), length)[:length]
    start = int(rng.random() * (total - length))
    audio = read_audio(path, start=start, frames=length, info=info)
    if audio.shape[0] < length:  # header length can overstate decodable samples
        audio = wrap_pad(audio, length)[:length]
    return audio


def eval_crop_starts(total: int, frames: int, num_eval: int) -> np.ndarray:
    """voxceleb_trainer's evenly spaced evaluation crop starts for a (padded) signal length."""
    return np.linspace(0, total - crop_samples(frames), num=num_eval).astype(np.int64)


def eval_crops(audio: np.ndarray, frames: int, num_eval: int) -> np.ndarray:
    """``[num_eval, crop]`` evenly spaced crops of a whole signal, as voxceleb_trainer evaluates.

    ``frames == 0`` returns the whole (unpadded) signal as a single crop.
    """
    if frames == 0:
        return audio[None, :]
    length = crop_samples(frames)
    audio = wrap_pad(audio, length)
    starts = eval_crop_starts(audio.shape[0], frames, num_eval)
    return np.stack([audio[s : s + length] for s in starts])
