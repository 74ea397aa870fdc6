"""Audio input: soundfile reads, mono downmix, resampling, and voxceleb_trainer-exact crops.

Crops read only the frames they need (soundfile ``start``/``frames``). Signals of a crop's length
or shorter are wrap-padded exactly as voxceleb_trainer does (``numpy.pad(..., "wrap")`` to one
sample more than the crop). Every unreadable input becomes a one-line :class:`XvecError`.

:class:`DecodeCache` keeps each file's decoded samples in a memory-mapped ``.npy`` so that
training reads crops with a slice instead of decoding (Opus, FLAC...) at every step.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from xvec.errors import XvecError
from xvec.files import atomic_write

SAMPLE_RATE = 16000  # every model's input rate; files at other rates are resampled on reading
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # what soundfile (libsndfile) can read
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
    if Path(path).is_file() and not os.access(path, os.R_OK):
        return XvecError(f"{path}: cannot read audio: permission denied; check the file's mode")
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


@functools.lru_cache(maxsize=16)
def _sinc_kernel(
    orig: int, new: int, dtype: str = "float32", zero_crossings: int = 6, rolloff: float = 0.99
):
    """Hann-windowed sinc filters ``[new, 1, taps]`` for rates already divided by their gcd.

    One filter per output phase: output ``j`` of every block of ``new`` samples reads the input
    around ``j * orig / new``, low-passed at ``rolloff`` of the lower Nyquist frequency and cut
    after ``zero_crossings`` zero crossings (torchaudio's ``sinc_interp_hann`` defaults).
    """
    import torch

    cutoff = min(orig, new) * rolloff
    half_width = math.ceil(zero_crossings * orig / cutoff)
    kind = getattr(torch, dtype)
    taps = torch.arange(-half_width, half_width + orig, dtype=kind)[None, None] / orig
    phases = torch.arange(0, -new, -1, dtype=kind)[:, None, None] / new
    t = ((phases + taps) * cutoff).clamp_(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t *= math.pi
    sinc = torch.where(t == 0, torch.tensor(1.0, dtype=kind), t.sin() / t)
    return sinc * (window * (cutoff / orig)), half_width


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited (windowed-sinc) resampling of a 1-D float32 (or float64) signal.

    The same computation as torchaudio's default ``functional.resample``, in plain torch; the
    output has ``ceil(len * new_rate / orig_rate)`` samples. A float64 signal is resampled in
    float64 (as torchaudio does), which the parity tests use; anything else in float32.
    """
    if orig_rate == new_rate:
        return audio
    import torch

    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    dtype = "float64" if audio.dtype == np.float64 else "float32"
    kernel, half_width = _sinc_kernel(orig, new, dtype)
    signal = torch.from_numpy(np.ascontiguousarray(audio, dtype=dtype))
    length = signal.shape[-1]
    padded = torch.nn.functional.pad(signal.view(1, 1, -1), (half_width, half_width + orig))
    out = torch.nn.functional.conv1d(padded, kernel, stride=orig)  # [1, new, blocks]
    out = out.transpose(1, 2).reshape(-1)
    target = int(torch.ceil(torch.as_tensor(new * length / orig)))  # float32 ceil, as torchaudio
    return out[:target].numpy()


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


def wrap_crop(audio: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` samples of ``audio``, wrap-padded first when it is shorter."""
    return wrap_pad(audio, length)[:length]


class DecodeCache:
    """Decoded 16 kHz mono samples on disk, one memory-mapped ``.npy`` per source file.

    An entry is named by a hash of the file's absolute path, modification time and size, so an
    edited or replaced file is decoded afresh (stale entries are left; delete the folder to
    reclaim them). Entries hold exactly what :func:`read_audio` returns for the whole file: as
    int16 when every sample lies on the 16-bit grid (PCM-16 sources), else float32 (decoded
    Opus or Vorbis is not on that grid, so rounding it would change the samples). Entries are
    written atomically on first use, so loader workers may fill one cache concurrently. Files
    at another sample rate are not cached: their crops are resampled span by span, and a slice
    of the whole resampled file would differ at the edges.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._warned = False

    def entry(self, path: str | Path) -> Path:
        """The cache file of ``path`` as it is now (path, mtime and size in the key)."""
        source = Path(path).absolute()
        stat = source.stat()
        key = f"{source}\0{stat.st_mtime_ns}\0{stat.st_size}\0{SAMPLE_RATE}".encode()
        digest = hashlib.sha1(key, usedforsecurity=False).hexdigest()
        return self.folder / digest[:2] / f"{digest[2:]}.npy"

    def signal(self, path: str | Path, info: AudioInfo) -> np.ndarray:
        """The whole decoded signal as stored (int16 or float32), decoding it on a miss."""
        try:
            entry = self.entry(path)
        except OSError as exc:
            raise XvecError(f"{path}: audio file not found") from exc
        try:
            return np.load(entry, mmap_mode="r")
        except FileNotFoundError:
            pass
        except (OSError, ValueError):  # a damaged entry (e.g. a foreign file): decode again
            pass
        stored = _compact(read_audio(path, info=info))
        try:
            atomic_write(entry, lambda handle: np.save(handle, stored, allow_pickle=False))
        except XvecError as exc:  # a full or read-only cache disk slows training, never stops it
            if not self._warned:
                self._warned = True
                warnings.warn(f"decode cache disabled for this file: {exc}", stacklevel=2)
        return stored


def _compact(audio: np.ndarray) -> np.ndarray:
    """``audio`` as int16 when that is lossless (samples k / 32768), else unchanged float32."""
    scaled = audio * np.float32(32768)
    if scaled.min() >= -32768 and scaled.max() <= 32767 and np.array_equal(scaled, np.rint(scaled)):
        return scaled.astype(np.int16)
    return audio


def _as_float(stored: np.ndarray) -> np.ndarray:
    """Stored samples back to the float32 :func:`read_audio` returned (exact for int16)."""
    if stored.dtype == np.int16:
        return stored.astype(np.float32) * np.float32(1 / 32768)
    return np.array(stored, dtype=np.float32)


def train_crop(
    path: str | Path,
    frames: int,
    rng: np.random.Generator,
    info: AudioInfo | None = None,
    cache: DecodeCache | None = None,
) -> np.ndarray:
    """A random training crop of ``frames`` frames, reading only those samples from disk.

    With ``cache`` the crop is a slice of the file's cached whole-file decode; the random start
    is drawn the same way, so the crop covers the same samples. (For Opus, libsndfile's seek
    can differ from the whole-file decode by a rounding step, ~1e-8, in a few files.)
    """
    return read_crop(path, crop_samples(frames), rng.random, info or audio_info(path), cache)


def read_crop(
    path: str | Path,
    length: int,
    position: Callable[[], float],
    info: AudioInfo,
    cache: DecodeCache | None = None,
) -> np.ndarray:
    """``length`` samples of ``path`` from ``int(position() * (total - length))`` (VT's crop).

    ``position`` (a draw in [0, 1)) is called only for a file longer than the crop; a shorter
    one, or a read the header overstated, is wrap-padded as voxceleb_trainer does.
    """
    total = info.frames_at(SAMPLE_RATE)
    stored = None
    if cache is not None and info.sample_rate == SAMPLE_RATE:
        stored = cache.signal(path, info)
    if total <= length:
        whole = read_audio(path, info=info) if stored is None else _as_float(stored)
        return wrap_crop(whole, length)
    start = int(position() * (total - length))
    if stored is None:
        audio = read_audio(path, start=start, frames=length, info=info)
    else:
        audio = _as_float(stored[start : start + length])
        if audio.size == 0:
            raise XvecError(f"{path}: no samples could be read (empty or truncated file)")
    if audio.shape[0] < length:  # header length can overstate decodable samples
        audio = wrap_crop(audio, length)
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
