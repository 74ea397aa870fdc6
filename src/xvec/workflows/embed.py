"""``xvec embed``: one embedding per unique file of a list, written resumably.

Inputs are checked first; results so far are kept in ``OUTPUT.partial`` and reused by the
same command after an error or a kill.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xvec.checkpoint import load_model
from xvec.data import check_files_exist, read_file_list, read_trials
from xvec.devices import parse_device
from xvec.embed import EmbeddingStore, EmbedStats, embed_files, model_fingerprint
from xvec.errors import XvecError, check_at_least
from xvec.outputs import check_not_listed, check_outputs
from xvec.protocol import Protocol


@dataclass
class EmbedRun:
    """What :func:`embed_to_file` did: the file written, how many reused, the extraction."""

    output: Path
    count: int
    resumed: int
    stats: EmbedStats


def run_embed(
    model_path: Path,
    audio_root: Path,
    output: Path,
    *,
    file_list: Path | None = None,
    trials: Path | None = None,
    protocol: Protocol | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: AbstractContextManager[Callable[[int, int], None]] | None = None,
    force: bool = False,
) -> EmbedRun:
    """``xvec embed``: the files of ``file_list`` or of ``trials``, every input checked first.

    ``progress`` (e.g. a :class:`xvec.report.FileProgress`) is entered once the checks pass.
    An existing ``output`` that is not an embeddings file is replaced only with ``force``; an
    input (the model, the list, a listed audio file) never is.
    """
    if (file_list is None) == (trials is None):
        raise XvecError("give exactly one of --list or --trials")
    check_at_least("batch_size", batch_size, 1)
    parse_device(device)
    model_fingerprint(model_path)  # a missing checkpoint fails before the audio is checked
    source = file_list or trials
    files = read_file_list(file_list) if file_list else read_trials(trials).files  # type: ignore[arg-type]
    check_not_listed(output, audio_root, files)
    check_outputs({output: "embeddings"}, [model_path, source], force)  # type: ignore[list-item]
    check_files_exist(audio_root, files, source)
    with progress or contextlib.nullcontext() as bar:
        return embed_to_file(
            model_path,
            audio_root,
            files,
            output,
            protocol,
            batch_size=batch_size,
            device=device,
            progress=bar,
        )


def embed_to_file(
    model_path: Path,
    audio_root: Path,
    files: Sequence[str],
    output: Path,
    protocol: Protocol | None = None,
    *,
    batch_size: int = 32,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    checkpoint_every: float = 30.0,
) -> EmbedRun:
    """Embed ``files`` with a checkpoint into an embeddings file, resumably (``xvec embed``).

    Results so far are kept in ``OUTPUT.partial`` every ``checkpoint_every`` seconds and when
    an error stops the run; the same call later reuses them when model (by content) and
    protocol are unchanged.
    """
    protocol = protocol or Protocol()
    meta = {"model": str(model_path), "model_sha256": model_fingerprint(model_path)}
    meta.update(protocol.describe())
    partial = output.with_name(output.name + ".partial")
    done: dict[str, np.ndarray] = {}
    if partial.is_file():
        previous = EmbeddingStore.load(partial)
        if previous.meta == meta:
            done = previous.vectors
    kept = len(done)

    def save_partial(results: dict[str, np.ndarray]) -> None:
        nonlocal kept
        store = EmbeddingStore(meta)
        store.vectors = results
        store.save(partial)
        kept = len(results)

    stats = EmbedStats()
    try:
        vectors = embed_files(
            load_model(model_path),
            audio_root,
            files,
            protocol,
            batch_size=batch_size,
            device=device,
            progress=progress,
            done=done,
            checkpoint_every=checkpoint_every,
            on_checkpoint=save_partial,
            stats=stats,
        )
    except XvecError as exc:
        if kept:
            raise XvecError(
                f"{exc}; the {kept} embeddings computed so far are kept in "
                f"{partial}: fix the file and run the same command again to resume"
            ) from exc
        raise
    store = EmbeddingStore(meta)
    store.vectors = {f: vectors[f] for f in files}
    store.save(output)
    partial.unlink(missing_ok=True)
    return EmbedRun(output=output, count=len(files), resumed=len(done), stats=stats)
