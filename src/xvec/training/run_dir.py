"""The run folder: its lock (``train.lock``), its checks before anything is written, the
recorded recipe, and the names of the files a run leaves there."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from xvec.config import InitConfig, Recipe
from xvec.errors import XvecError
from xvec.files import write_json_atomic
from xvec.training.averaging import AVERAGE_FILE
from xvec.training.events import TrainingObserver

STATE_FILE = "state.safetensors"
LOCK_FILE = "train.lock"


class RunLock:
    """Exclusive hold on a run folder: ``train.lock`` (pid and host) created with O_EXCL.

    A lock whose pid is not alive on this host is stale and taken over with a warning.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def acquire(self, run_dir: Path, observer: TrainingObserver) -> None:
        """Take the lock or fail at once naming its holder (a stale one is taken over)."""
        path = run_dir / LOCK_FILE
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(path)
                if holder is None or _holder_alive(*holder):
                    who = f"pid {holder[0]} on {holder[1]}" if holder else "an unknown process"
                    raise XvecError(
                        f"{path}: another 'xvec train' ({who}) is using this run folder; wait "
                        "for it to end or set train.output_dir (remove the lock if it is gone)"
                    ) from None
                observer.stale_lock(path, holder[0])
                path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise XvecError(f"{path}: cannot create the run lock ({exc.strerror})") from exc
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
            self.path = path
            return
        raise XvecError(f"{path}: cannot take the run lock; remove it if no run is using it")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def _lock_holder(path: Path) -> tuple[int, str] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), str(data["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _holder_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell: assume it is running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


FINAL_OUTPUTS = ("last.safetensors", "curves.png")
EVAL_OUTPUTS = ("scores.txt", "result.json", "hist.png")
PLDA_FILE = "plda.safetensors"  # the final model's back end, with [eval] plda_lda_dim


def final_outputs(recipe: Recipe, evaluated: bool) -> tuple[str, ...]:
    """The files a finished run leaves in its folder (a resumed finished run writes those
    missing): the last model and curves, the evaluation's files with a trial list, and the
    averaged model with ``[train] average_last``, the PLDA back end with ``[eval]
    plda_lda_dim``."""
    averaged = (AVERAGE_FILE,) if recipe.train.average_last else ()
    plda = (PLDA_FILE,) if evaluated and recipe.eval.plda_lda_dim is not None else ()
    return FINAL_OUTPUTS + (EVAL_OUTPUTS if evaluated else ()) + averaged + plda


def recorded_init(run_dir: Path) -> InitConfig | None:
    """The ``[init]`` a run folder's recipe.json recorded when the run started (None: none, or
    no readable record; :func:`prepare_run_dir` reports an unreadable one)."""
    try:
        recorded = json.loads((run_dir / "recipe.json").read_text()).get("init")
        return InitConfig.model_validate(recorded) if recorded is not None else None
    except (OSError, ValueError, AttributeError):
        return None


# Everything a run writes in its folder: a folder holding any of these without a run's state
# is someone else's, and training there would overwrite it.
RUN_FILES = (
    STATE_FILE,
    "recipe.json",
    "log.jsonl",
    "best.safetensors",
    "avg.safetensors",
    "models",
    *FINAL_OUTPUTS,
    *EVAL_OUTPUTS,
    PLDA_FILE,
)


def prepare_run_dir(
    run_dir: Path, recipe: Recipe, resume: bool, lock: RunLock, observer: TrainingObserver
) -> None:
    """Create and lock the run folder, check it, then record the resolved recipe.

    Nothing is written in the folder (but the lock) before every check passes.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XvecError(f"{run_dir}: cannot create the run folder ({exc.strerror})") from exc
    if not os.access(run_dir, os.W_OK):
        raise XvecError(f"{run_dir}: run folder is not writable; set train.output_dir")
    lock.acquire(run_dir, observer)
    state_path = run_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise XvecError(f"{run_dir}: nothing to resume (no {STATE_FILE}); run without --resume")
    if not resume and state_path.exists():
        raise XvecError(
            f"{run_dir}: holds a previous run; add --resume to continue it, or set "
            "train.output_dir to a new folder"
        )
    if not resume:
        found = [name for name in RUN_FILES if os.path.lexists(run_dir / name)]
        if found:
            others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise XvecError(
                f"{run_dir}: holds {found[0]}{others} but no xvec run ({STATE_FILE}); training "
                "would overwrite it: set train.output_dir to a new or empty folder"
            )
    recorded = run_dir / "recipe.json"
    current = recipe.to_dict()
    if resume and recorded.is_file():
        try:
            previous = json.loads(recorded.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise XvecError(f"{recorded}: not a JSON recipe ({exc}); restore or remove it") from exc
        for section in ("data", "model", "loss"):
            if previous.get(section) != current.get(section):
                raise XvecError(
                    f"{recorded}: the [{section}] section differs from the recipe being resumed; "
                    "resume with the same recipe (only [train] limits such as max_epoch may change)"
                )
    write_json_atomic(recorded, current)
