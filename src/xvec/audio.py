"""Audio input: soundfile reads, mono downmix, resampling, and voxceleb_trainer-exact crops.

Crops read only the frames they need (soundfile ``start``/``frames``). Signals of a crop's length
or shorter are wrap-padded exactly as voxceleb_trainer does (``numpy.pad(..., "wrap")`` to one
sample more than the crop). Every unreadable input becomes a one-line :class:`XvecError`, and
so does a damaged one (a cut or corrupt file decodes to less than it declares): never padded.

:class:`DecodeCache` keeps each file's decoded samples in a memory-mapped ``.npy`` so that
training reads crops with a slice instead of decoding (Opus, FLAC...) at every step.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from xvec.errors import XvecError
from xvec.files import atomic_write, file_problem

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


def _fail(path: str | Path, exc: Exception, decoding: bool = False) -> XvecError:
    """The one-line error for a file libsndfile refused; ``decoding``: its header was read."""
    if Path(path).is_file() and not os.access(path, os.R_OK):
        return XvecError(f"{path}: cannot read audio: permission denied; check the file's mode")
    end = _ogg_end(path)
    if end is not None and end.cut:  # libsndfile calls a truncated Ogg file "malformed"
        return _damaged(path, 0, end.frames, end.cut)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = reason.replace(f"Error opening {str(path)!r}: ", "")
    if decoding:  # e.g. a cut FLAC file: "flac decoder lost sync"
        return XvecError(
            f"{path}: audio file is damaged: decoding failed after a valid header ({reason}); "
            "re-encode or replace it"
        )
    return XvecError(f"{path}: cannot read audio ({reason}); is it a valid wav/flac/ogg file?")


def _damaged(path: str | Path, decoded: int, declared: int | None, cut: bool) -> XvecError:
    """The one-line error for a file whose decoder stops before the length it declares."""
    if not cut:
        what = f"decoded {decoded} of {declared} samples (truncated or corrupt?)"
    elif declared is not None:
        what = f"decoded {decoded} of at least {declared} samples (it ends inside an Ogg page: "
        what += "truncated?)"
    else:
        what = f"decoded {decoded} samples, then it ends inside an Ogg page (truncated?)"
    return XvecError(f"{path}: audio file is damaged: {what}; re-encode or replace it")


_OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, n
_OGG_MAX_PAGE = _OGG_HEADER.size + 255 + 255 * 255  # header, segment table, largest payload
_OGG_HEAD_BYTES = _OGG_HEADER.size + 255 + 19  # first page up to OpusHead's pre-skip and rate


@dataclass(frozen=True)
class _OggEnd:
    """What the last page of an Ogg file says: declared length and whether the file is cut.

    ``frames`` is the length the last page's granule position declares (Opus: minus the
    pre-skip, at 48 kHz; scaled to the decoding rate), None when that page declares none or
    the codec is neither Opus nor Vorbis; ``cut``: the file ends inside a page (truncated).
    """

    frames: int | None
    cut: bool


def _ogg_end(path: str | Path, sample_rate: int | None = None) -> _OggEnd | None:
    """Read the first page and the last 128 KiB of an Ogg file (None: not Ogg, or unparsable).

    Cheap (two small reads, no decoding): the header of an Ogg file does not hold its length,
    so libsndfile takes it from the last *complete* page and a truncated file decodes as a
    shorter, seemingly valid one. The last page's own header, even when its body is cut off,
    still tells how long the file was meant to be. ``sample_rate``: the rate libsndfile decodes
    at (default: the one the Opus or Vorbis identification header gives).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_OGG_HEAD_BYTES)
            if head[:4] != b"OggS" or len(head) < _OGG_HEADER.size:
                return None
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 2 * _OGG_MAX_PAGE))
            tail = handle.read()
    except OSError:
        return None
    last = _last_ogg_page(tail, serial=_OGG_HEADER.unpack_from(head)[4])
    if last is None:
        return None
    granule, cut = last
    body = head[_OGG_HEADER.size + head[26] :]
    stream_rate = int.from_bytes(body[12:16], "little")  # OpusHead and Vorbis id: same place
    if body[:8] == b"OpusHead":  # granules count 48 kHz samples after the pre-skip
        pre_skip, granule_rate = int.from_bytes(body[10:12], "little"), 48000
    elif body[:7] == b"\x01vorbis":  # granules count samples at the stream's rate
        pre_skip, granule_rate = 0, stream_rate
    else:  # another codec: only whether the file is cut is known
        return _OggEnd(frames=None, cut=cut)
    sample_rate = sample_rate or stream_rate
    if granule < 0 or not granule_rate or not sample_rate:
        return _OggEnd(frames=None, cut=cut)
    return _OggEnd(frames=(granule - pre_skip) * sample_rate // granule_rate, cut=cut)


def _last_ogg_page(tail: bytes, serial: int) -> tuple[int, bool] | None:
    """(granule position, cut) of the last page in ``tail``, the end of an Ogg file.

    Pages of the stream ``serial`` are followed from the first capture pattern that starts a
    chain reaching the end (an ``OggS`` inside packet data breaks its chain; the next is tried).
    A file that ends inside a page header gives the previous page's granule (-1: none). None:
    no chain reaches the end (e.g. trailing bytes that are not Ogg), so nothing is claimed.
    """
    start = tail.find(b"OggS")
    while start >= 0:
        page, granule = start, -1
        while tail.startswith(b"OggS", page):
            table = page + _OGG_HEADER.size
            if len(tail) < table or len(tail) < table + tail[table - 1]:
                return granule, True  # cut inside the page header or its segment table
            _, version, _, granule, page_serial, *_ = _OGG_HEADER.unpack_from(tail, page)
            if version != 0 or page_serial != serial:
                break
            end = table + tail[table - 1] + sum(tail[table : table + tail[table - 1]])
            if end >= len(tail):
                return granule, end > len(tail)
            page = end
        start = tail.find(b"OggS", start + 1)
    return None


_WAV_UNKNOWN_SIZE = 0x7FFF0000  # data sizes from here up: "unknown" (streamed or crashed)


def _wav_declared_frames(path: str | Path) -> int | None:
    """Frames the ``data`` chunk of a RIFF/WAVE file declares (None: not found or unknown).

    libsndfile quietly shortens a WAV file's length to the bytes present, so a cut file
    reads as a valid shorter one; its data chunk's size still tells. Reads the first 64 KiB.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align, offset = 0, 12
    while offset + 8 <= len(head):
        chunk = head[offset : offset + 4]
        size = int.from_bytes(head[offset + 4 : offset + 8], "little")
        if chunk == b"fmt " and offset + 22 <= len(head):
            block_align = int.from_bytes(head[offset + 20 : offset + 22], "little")
        elif chunk == b"data":
            if not block_align or size == 0 or size >= _WAV_UNKNOWN_SIZE:
                return None
            return size // block_align
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def audio_info(path: str | Path) -> AudioInfo:
    """Header information of an audio file; unreadable, empty or truncated files: XvecError.

    libsndfile takes the length of a cut Ogg or WAV file from what is left of it, so the
    length it reports is checked against what the file declares: the last Ogg page's granule
    position (:func:`_ogg_end`), the WAV data chunk's size (:func:`_wav_declared_frames`).
    """
    problem = file_problem(path)
    if problem:
        raise XvecError(f"{path}: audio file {problem}")
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
    if info.format == "OGG":
        end = _ogg_end(path, int(info.samplerate))
        if end is not None and (end.cut or (end.frames or 0) > info.frames + 1):
            raise _damaged(path, int(info.frames), end.frames, end.cut)
    elif info.format == "WAV":
        declared = _wav_declared_frames(path)
        if declared is not None and declared > info.frames:
            raise _damaged(path, int(info.frames), declared, cut=False)
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
    requested span is read). NaN or infinite samples are an error, and so is a decoder that
    stops before the span (or the header's length) ends: a damaged file is never padded.
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
        raise _fail(path, exc, decoding=True) from exc
    available = max(info.frames - src_start, 0)
    if data.shape[0] < (available if src_frames < 0 else min(src_frames, available)):
        raise _damaged(path, src_start + data.shape[0], info.frames, cut=False)
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
    one is wrap-padded as voxceleb_trainer does. A file that decodes to less than its header
    says is an error, never padded.
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
        if audio.shape[0] < length:  # an entry decoded before damaged files were refused
            raise _damaged(path, stored.shape[0], total, cut=False)
    if audio.shape[0] < length:  # resampling rounded the span a sample short
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
