"""Atomic file writes (torch-free): a crash or a full disk leaves the old file or the new one.

Every artefact xvec writes (checkpoints, training state, embeddings, scores, plots, JSON) goes
through :func:`atomic_write`: a temporary file in the same folder, flushed and fsynced, renamed
over the target, then the folder fsynced. On failure the previous file is untouched and the
temporary file is removed. :func:`safetensors_metadata` reads back the JSON records xvec keeps
in its safetensors files.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from xvec.errors import XvecError


@functools.cache
def _umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` (and its folders) with ``write(handle)``, atomically."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise XvecError(
            f"{path}: cannot write into {folder} ({exc.strerror or exc}); choose another output"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it private; use the usual mode
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise XvecError(
            f"{path}: write failed, previous file kept ({exc.strerror or exc})"
        ) from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(payload))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` so that ``path`` holds either its old content or all of the new."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, record: Any) -> None:
    """Write ``record`` as indented JSON with a final newline, atomically."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (read after safetensors loaded them).

    safetensors' loaders return only tensors; xvec's own records (checkpoint, embeddings,
    training state) live in this JSON header. Raises ``ValueError`` on a malformed header.
    """
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(metadata, dict | None):
        raise ValueError("safetensors header is not a JSON object of string metadata")
    return metadata or {}


def metadata_record(path: str | Path, raw: str, key: str, what: str) -> dict:
    """Decode the JSON object xvec stored under ``key``; anything else is one XvecError."""
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise XvecError(
            f"{path}: {what} metadata '{key}' is not valid JSON ({exc}); the file is damaged"
        ) from exc
    if not isinstance(record, dict):
        raise XvecError(
            f"{path}: {what} metadata '{key}' is a JSON {type(record).__name__}, expected an "
            "object; the file is damaged"
        )
    return record


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file (None: a regular file, symlinks followed).

    The answer completes "``path``: <what> ...": "not found", or "is not a regular file (a
    folder)" for a folder, a FIFO (reading one would block), a device or a symlink loop, so
    that such a name is never reported as missing. One ``stat`` call, no open.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found (a broken symlink)" if os.path.islink(path) else "not found"
    except NotADirectoryError:
        return "not found (a part of its path is a file, not a folder)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is not a regular file (a symlink loop)"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "an unknown kind")
    return f"is not a regular file ({kind})"


# What a training run folder holds, the model its final evaluation scored first (the average)
RUN_CHECKPOINTS = ("avg.safetensors", "best.safetensors", "last.safetensors")


def require_checkpoint_file(path: Path) -> None:
    """An XvecError unless ``path`` is a file; a run folder's error names its checkpoint."""
    if path.is_dir():
        inside = [path / name for name in RUN_CHECKPOINTS if (path / name).is_file()]
        hint = f"; give {inside[0]}" if inside else ""
        kind = "a run folder" if inside else "a folder"
        raise XvecError(f"{path}: is {kind}, not a checkpoint file{hint}")
    problem = file_problem(path)
    if problem:
        raise XvecError(f"{path}: checkpoint file {problem}")


def safetensors_header_metadata(path: str | Path) -> dict[str, Any] | None:
    """The header metadata of a safetensors file, None for anything else (e.g. a pickle).

    A safetensors file starts with its JSON header's length (8 bytes, little-endian), then
    the header, which starts with '{'; a zip or pickle from ``torch.save`` never does.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= path.stat().st_size - 8 or handle.read(1) != b"{":
                return None
            header = json.loads(b"{" + handle.read(length - 1))
    except (OSError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}
