"""The evaluation protocol: how a file becomes model input, and how its embeddings are scored.

One typed object used by ``xvec eval``/``embed``/``score``, the Python API, recipes and the
training loop's periodic evaluation, so their settings and defaults cannot drift apart:

- ``full``: each file embedded whole (optionally capped at ``max_seconds``) and cosine-scored.
  Files are sorted by length and every file is embedded whole (``length_tolerance`` 0, the
  default): a model that can ignore padding (``SpeakerModel.exact_padding``) gets files within
  :data:`PAD_TOLERANCE` of each other's length zero-padded into one batch with their lengths,
  any other model only files of the same length. A ``length_tolerance`` above 0 is a speed
  option that changes embeddings: files whose lengths differ by up to that fraction share a
  batch, each trimmed to the batch's shortest.
- ``vt-crops``: voxceleb_trainer's protocol, ``num_eval`` evenly spaced crops of
  ``eval_frames`` frames, scored by its crop-distance score; embeddings are
  ``[files, crops, dim]``.

Torch-free: scoring stored embeddings needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from xvec.audio import SAMPLE_RATE, eval_crops, wrap_crop
from xvec.errors import XvecError
from xvec.scoring import cosine_scores, vt_crop_scores

ProtocolName = Literal["full", "vt-crops"]
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
PROTOCOLS: tuple[str, ...] = ("full", "vt-crops")
MIN_SAMPLES = SAMPLE_RATE // 2  # shorter files are wrap-padded to 0.5 s
MIN_MAX_SECONDS = 0.025  # a capped file must hold one 25 ms window
EVAL_FRAMES = 400  # voxceleb_trainer's published evaluation (--eval_frames 400)
NUM_EVAL = 10
LENGTH_TOLERANCE = 0.0  # exact: every file whole
PAD_TOLERANCE = 0.05  # padded batches: at most 5 % of their compute is spent on padding


@dataclass(frozen=True)
class Protocol:
    """How files are turned into model inputs and their embeddings into trial scores."""

    name: ProtocolName = "full"
    max_seconds: float | None = None
    eval_frames: int = EVAL_FRAMES
    num_eval: int = NUM_EVAL
    length_tolerance: float = LENGTH_TOLERANCE
    precision: Precision = "fp32"  # bf16: the model runs under bfloat16 autocast (opt-in)

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise XvecError(f"unknown protocol '{self.name}'; choose one of {', '.join(PROTOCOLS)}")
        if self.max_seconds is not None and not (
            math.isfinite(self.max_seconds) and self.max_seconds >= MIN_MAX_SECONDS
        ):
            raise XvecError(
                f"max_seconds {self.max_seconds}: too small; give at least {MIN_MAX_SECONDS} "
                "(one 25 ms analysis window)",
                options=("max_seconds",),
            )
        if self.eval_frames < 0:
            raise XvecError(
                f"eval_frames {self.eval_frames}: must be >= 0 (0 = each file whole)",
                options=("eval_frames",),
            )
        if self.num_eval < 1:
            raise XvecError(
                f"num_eval {self.num_eval}: must be at least 1 crop per file", options=("num_eval",)
            )
        if not 0 <= self.length_tolerance < 1:
            raise XvecError(
                f"length_tolerance must be in [0, 1) (0 = every file whole), "
                f"got {self.length_tolerance}",
                options=("length_tolerance",),
            )
        if self.precision not in PRECISIONS:
            raise XvecError(
                f"precision '{self.precision}': choose one of {', '.join(PRECISIONS)}",
                options=("precision",),
            )

    @classmethod
    def from_recipe(cls, recipe: Any) -> Protocol:
        """The protocol a recipe's ``[eval]`` and ``[data]`` sections describe."""
        return cls(
            recipe.eval.protocol,
            max_seconds=recipe.eval.max_seconds,
            eval_frames=recipe.data.eval_frames,
            num_eval=recipe.data.num_eval,
        )

    @property
    def crops(self) -> bool:
        """True for voxceleb_trainer's crop protocol (embeddings ``[files, crops, dim]``)."""
        return self.name == "vt-crops"

    @property
    def crops_per_file(self) -> int:
        """Model inputs each file gives (``eval_frames`` 0 under vt-crops: the whole file)."""
        if not self.crops:
            return 1
        return 1 if self.eval_frames == 0 else self.num_eval

    @property
    def read_frames(self) -> int:
        """Samples to read from each file (-1 = all): ``full`` reads only up to its cap."""
        if not self.crops and self.max_seconds:
            return int(self.max_seconds * SAMPLE_RATE)
        return -1

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-ready record (``protocol`` is the name)."""
        record = asdict(self)
        return {"protocol": record.pop("name"), **record}

    def input_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """Per-file model input lengths in samples, for batch planning."""
        if self.read_frames > 0:
            lengths = np.minimum(lengths, self.read_frames)
        return np.maximum(lengths, MIN_SAMPLES)

    def plan_batches(
        self, lengths: np.ndarray, batch_size: int, max_batch_samples: int, padded: bool = False
    ) -> list[np.ndarray]:
        """Group file indices into batches: by sorted length for ``full``, fixed counts of
        files for ``vt-crops`` (whole files under eval_frames 0 differ in length: one each).

        ``padded`` plans batches that are zero-padded to their longest file (within
        :data:`PAD_TOLERANCE`) instead of trimmed to their shortest (within the tolerance).
        """
        order = np.argsort(-lengths, kind="stable")
        if self.crops:
            per_batch = 1 if self.eval_frames == 0 else max(1, batch_size // self.num_eval)
            return [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        tolerance = PAD_TOLERANCE if padded else self.length_tolerance
        batches: list[np.ndarray] = []
        start = 0
        while start < len(order):
            longest = lengths[order[start]]
            end = start + 1
            while (
                end < len(order)
                and end - start < batch_size
                and lengths[order[end]] >= longest * (1 - tolerance)
                and (end - start + 1) * (longest if padded else lengths[order[end]])
                <= max_batch_samples
            ):
                end += 1
            batches.append(order[start:end])
            start = end
        return batches

    def file_input(self, audio: np.ndarray) -> tuple[np.ndarray, bool]:
        """One decoded file's model input ``[crops, samples]``, and whether it was padded.

        ``audio`` is what was read with :attr:`read_frames`; under ``full`` a file shorter
        than 0.5 s is wrap-padded to 0.5 s.
        """
        if self.crops:
            return eval_crops(audio, self.eval_frames, self.num_eval), False
        if self.read_frames > 0:
            audio = audio[: self.read_frames]
        if audio.shape[0] < MIN_SAMPLES:
            return wrap_crop(audio, MIN_SAMPLES)[None], True
        return audio[None], False

    def batch_input(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
        """A batch's model input from decoded files, and how many were padded.

        ``full`` trims every file to the batch's shortest; ``vt-crops`` stacks all crops.
        """
        inputs, padded = zip(*(self.file_input(audio) for audio in audios), strict=True)
        if self.crops:
            return np.concatenate(inputs), 0
        length = min(x.shape[1] for x in inputs)
        return np.concatenate([x[:, :length] for x in inputs]), sum(padded)

    def score(self, embeddings: np.ndarray, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
        """Trial scores of rows ``enroll[i]`` vs ``test[i]`` of ``embeddings``."""
        scorer = vt_crop_scores if self.crops else cosine_scores
        return scorer(embeddings, enroll, test)

    def score_trials(self, embeddings: np.ndarray, trials: Any) -> np.ndarray:
        """Scores of a trial list from embeddings aligned with ``trials.files``."""
        return self.score(embeddings, trials.enroll, trials.test)
