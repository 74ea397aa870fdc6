"""Batched embedding extraction and embedding files.

Files are read, cut and batched as the :class:`~xvec.protocol.Protocol` says: by default every
embedding is the whole file's, equal to embedding the file alone (files of close lengths are
zero-padded into one batch for models that ignore padding, others batch only files of equal
length); a length tolerance above 0 trims files to batch them, and says so in a note.
Audio is decoded in a background thread while the model runs, under ``torch.inference_mode``;
on the CPU several batches run at once, each on its own thread. Each unique file is embedded
once. Partial results are saved next to the output, so an interrupted ``xvec embed`` resumes
without recomputing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xvec.audio import SAMPLE_RATE, AudioInfo, audio_info, read_audio
from xvec.devices import parse_device
from xvec.errors import XvecError
from xvec.files import (
    atomic_write_bytes,
    metadata_record,
    require_checkpoint_file,
    safetensors_metadata,
)
from xvec.protocol import Protocol

if TYPE_CHECKING:
    import torch


@dataclass
class EmbedStats:
    """What an extraction did: counts, time and notes to show the user."""

    computed: int = 0
    seconds: float = 0.0
    short_files: int = 0
    resampled_files: int = 0
    trimmed_files: int = 0
    most_trimmed: float = 0.0  # the largest fraction of one file that trimming dropped
    length_tolerance: float = 0.0
    notes: list[str] = field(default_factory=list)

    def finish(self, seconds: float) -> None:
        """Record the extraction time and the notes on padded and trimmed files."""
        self.seconds = seconds
        if self.short_files:
            self.notes.append(
                f"{self.short_files} file(s) shorter than 0.5 s were wrap-padded to 0.5 s"
            )
        if self.trimmed_files:
            self.notes.append(
                f"{self.trimmed_files} file(s) were trimmed to the shortest file of their batch "
                f"(up to {100 * self.most_trimmed:.1f} % of a file dropped, length tolerance "
                f"{self.length_tolerance:g}), so their embeddings are not whole-file ones; "
                "length tolerance 0 embeds every file whole"
            )

    @property
    def files_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


# One model call's input: the positions of its files in the batch, their rows, and for a
# zero-padded batch each row's length in samples (None when every row is used whole).
InputGroup = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _load_inputs(
    root: Path,
    files: Sequence[str],
    infos: Sequence[AudioInfo],
    protocol: Protocol,
    padded: bool,
) -> tuple[list[InputGroup], int]:
    """One batch's model inputs, reading only needed frames, and how many files were padded.

    With a length tolerance (or crops) the batch is one input (:meth:`Protocol.batch_input`).
    Without, ``padded`` zero-pads the files into one input with their lengths; otherwise files
    are grouped by their exact decoded length (the planned lengths come from file headers,
    which can be a sample off after resampling, and no file may be trimmed).
    """
    audios = [
        read_audio(root / name, frames=protocol.read_frames, info=info)
        for name, info in zip(files, infos, strict=True)
    ]
    if protocol.crops or protocol.length_tolerance > 0:
        waves, short = protocol.batch_input(audios)
        return [(np.arange(len(audios)), waves, None)], short
    inputs = [protocol.file_input(audio) for audio in audios]
    short = sum(padded for _, padded in inputs)
    if padded:
        lengths = np.array([wave.shape[1] for wave, _ in inputs], dtype=np.int64)
        waves = np.zeros((len(inputs), lengths.max()), dtype=np.float32)
        for row, (wave, _) in enumerate(inputs):
            waves[row, : wave.shape[1]] = wave[0]
        return [(np.arange(len(inputs)), waves, lengths)], short
    by_length: dict[int, list[int]] = {}
    for position, (wave, _) in enumerate(inputs):
        by_length.setdefault(wave.shape[1], []).append(position)
    groups = [
        (np.array(positions), np.concatenate([inputs[i][0] for i in positions]), None)
        for positions in by_length.values()
    ]
    return groups, short


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
        if path.is_dir():
            raise XvecError(f"{path}: is a folder, not an embeddings file (from xvec embed)")
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
        crops = store.meta.get("protocol") == "vt-crops"  # [crops, dim] per file, else [dim]
        odd = next((key for key, v in vectors.items() if v.ndim != (2 if crops else 1)), None)
        if odd is not None:
            raise XvecError(
                f"{path}: embedding of '{odd}' has shape {tuple(vectors[odd].shape)}, but a "
                f"{'vt-crops' if crops else 'full'}-protocol embeddings file holds one "
                f"{'[crops, dim] array' if crops else '[dim] vector'} per file; re-embed with "
                "'xvec embed'"
            )
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
    require_checkpoint_file(path)
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


def _survey(root: Path, files: Sequence[str], stats: EmbedStats) -> list[AudioInfo]:
    """Headers of the files to embed; notes for files that are resampled or downmixed."""
    infos = [audio_info(root / f) for f in files]
    stats.resampled_files = sum(i.sample_rate != SAMPLE_RATE for i in infos)
    if stats.resampled_files:
        stats.notes.append(
            f"{stats.resampled_files} file(s) not at {SAMPLE_RATE} Hz were resampled"
        )
    multichannel = sum(i.channels > 1 for i in infos)
    if multichannel:
        stats.notes.append(f"{multichannel} multi-channel file(s) were downmixed to mono")
    return infos


def _prefetched(load: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``load(item)`` for each item, the next one decoded in a background thread meanwhile."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, items[0])
        try:
            for following in items[1:]:
                ready = future.result()
                future = pool.submit(load, following)
                yield ready
            yield future.result()
        finally:
            future.cancel()


MAX_STREAMS = 4  # batches computed at once on the CPU: bounds the memory of batches in flight


def cpu_streams(device: torch.device) -> tuple[int, int]:
    """How many batches to compute at once on ``device``, and intra-op threads for each.

    On the CPU, the threads torch may use are split into up to :data:`MAX_STREAMS` independent
    streams: the small convolutions of speaker models keep two cores busier as two streams of
    one thread than as one op split over two threads. CUDA (and MPS) get one stream.
    """
    import torch

    if device.type != "cpu":
        return 1, torch.get_num_threads()
    threads = torch.get_num_threads()
    streams = max(1, min(threads, MAX_STREAMS))
    return streams, max(1, threads // streams)


def _computed_in_order(
    compute: Callable[[Any], Any], items: Iterable[Any], streams: int, threads: int
) -> Iterator[Any]:
    """``compute(item)`` for each item, in order, ``streams`` at once on threads that each use
    ``threads`` intra-op threads (torch's thread count is per thread). When reading the next
    item fails, the results already being computed are yielded before the error is raised."""
    if streams <= 1:
        yield from map(compute, items)
        return
    import torch

    pool = ThreadPoolExecutor(streams, initializer=torch.set_num_threads, initargs=(threads,))
    with pool:
        pending: deque[Future[Any]] = deque()
        source, failure = iter(items), None
        try:
            while failure is None:
                try:
                    pending.append(pool.submit(compute, next(source)))
                except StopIteration:
                    break
                except Exception as exc:  # the finished work is kept; then the error
                    failure = exc
                if len(pending) > streams:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
            if failure is not None:
                raise failure
        finally:
            for future in pending:
                future.cancel()


def _maybe_checkpoint(
    save: Callable[[dict[str, np.ndarray]], None],
    results: dict[str, np.ndarray],
    last_save: float,
    every: float,
) -> float:
    """Save the results when ``every`` seconds have passed since ``last_save``; the new time."""
    now = time.perf_counter()
    if now - last_save > every:
        save(results)
        return now
    return last_save


def model_call(
    model: torch.nn.Module,
    waves: np.ndarray,
    device: torch.device,
    precision: str,
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """The model's float32 outputs for a batch of waveforms, in inference mode; ``bf16`` runs
    it under bfloat16 autocast (faster on CPUs with bf16 units, not the exact embedding).
    ``lengths`` marks a zero-padded batch (the model's ``forward_padded``)."""
    import torch

    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        inputs = torch.from_numpy(waves).to(device)
        if lengths is None:
            output = model(inputs)
        else:
            output = model.forward_padded(inputs, torch.from_numpy(lengths).to(device))
        return output.float().cpu().numpy()


def _model_outputs(
    model: torch.nn.Module,
    waves: np.ndarray,
    lengths: np.ndarray | None,
    device: torch.device,
    precision: str,
    *,
    skip_repeats: bool,
) -> np.ndarray:
    """The model's outputs for the rows of ``waves``.

    With ``skip_repeats`` a row equal to the one before it is computed once: a file shorter than
    a crop gives ``num_eval`` identical crops (about half of a corpus of short utterances), and
    near-crop-length files give repeated crop starts.
    """
    if skip_repeats and len(waves) > 1:
        repeat = np.zeros(len(waves), dtype=bool)
        repeat[1:] = (waves[1:] == waves[:-1]).all(axis=1)
        if repeat.any():
            source = np.cumsum(~repeat) - 1
            distinct = model_call(model, waves[~repeat], device, precision)
            return distinct[source]
    return model_call(model, waves, device, precision, lengths)


def _count_trimmed(protocol: Protocol, sizes: np.ndarray, stats: EmbedStats) -> None:
    """Add to ``stats`` the files of one batch (model input ``sizes``) that a length tolerance
    trims to the batch's shortest, and the largest fraction of a file that drops."""
    trims = protocol.length_tolerance > 0 and not protocol.crops
    trimmed = int((sizes > sizes.min()).sum()) if trims else 0
    if trimmed:
        stats.trimmed_files += trimmed
        stats.most_trimmed = max(stats.most_trimmed, float(1 - sizes.min() / sizes.max()))
        stats.length_tolerance = protocol.length_tolerance


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
    prepare: bool = True,
) -> dict[str, np.ndarray]:
    """Embed each unique file in ``files`` (relative to ``root``) and return {file: vector}.

    The model runs as :func:`~xvec.inference.prepare_for_inference` makes it (a copy;
    ``prepare=False`` when the caller has prepared it already).

    ``done`` holds results to reuse (not recomputed). ``on_checkpoint`` is called with all
    results so far every ``checkpoint_every`` seconds and when an error stops the run, so an
    interruption loses nothing.
    """
    protocol = protocol or Protocol()
    stats = stats or EmbedStats()
    root = Path(root)
    results: dict[str, np.ndarray] = dict(done or {})
    todo = [f for f in dict.fromkeys(files) if f not in results]
    if not todo:
        return results
    infos = _survey(root, todo, stats)
    lengths = np.array([i.frames_at(SAMPLE_RATE) for i in infos], dtype=np.int64)
    input_lengths = protocol.input_lengths(lengths)
    padded = bool(getattr(model, "exact_padding", False)) and protocol.length_tolerance == 0
    max_samples = int(max_batch_seconds * SAMPLE_RATE)
    batches = protocol.plan_batches(input_lengths, batch_size, max_samples, padded=padded)
    import torch  # here, not at import time: embedding files and scoring need no torch

    from xvec.inference import prepare_for_inference

    device = parse_device(str(device)) if not isinstance(device, torch.device) else device
    model = prepare_for_inference(model, device) if prepare else model.to(device).eval()

    def load(batch: np.ndarray) -> tuple[np.ndarray, list[InputGroup], int]:
        names = [todo[i] for i in batch]
        groups, short = _load_inputs(root, names, [infos[i] for i in batch], protocol, padded)
        return batch, groups, short

    def compute(
        loaded: tuple[np.ndarray, list[InputGroup], int],
    ) -> tuple[np.ndarray, np.ndarray, int]:
        batch, groups, short = loaded
        parts = [
            (
                positions,
                _model_outputs(
                    model, waves, sizes, device, protocol.precision, skip_repeats=protocol.crops
                ),
            )
            for positions, waves, sizes in groups
        ]
        if len(parts) == 1:
            return batch, parts[0][1], short
        output = np.empty((len(batch), *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
        for positions, rows in parts:
            output[positions] = rows
        return batch, output, short

    computed = _computed_in_order(compute, _prefetched(load, batches), *cpu_streams(device))
    start = last_save = time.perf_counter()
    try:
        for batch, output, short in computed:
            names = [todo[i] for i in batch]
            output = output.reshape(len(names), protocol.crops_per_file, -1)
            _check_finite(output, names, root)
            results.update(zip(names, output if protocol.crops else output[:, 0], strict=True))
            stats.short_files += short
            _count_trimmed(protocol, input_lengths[batch], stats)
            stats.computed += len(batch)
            if progress is not None:
                progress(len(batch), len(todo))
            if on_checkpoint is not None and checkpoint_every:
                last_save = _maybe_checkpoint(on_checkpoint, results, last_save, checkpoint_every)
    except BaseException:
        if on_checkpoint is not None and len(results) > len(done or {}):
            on_checkpoint(results)
        raise
    stats.finish(time.perf_counter() - start)
    return results
