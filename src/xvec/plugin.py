"""The public API that models and losses implement, built-in or third-party.

A plugin package declares an entry point in the group ``xvec.models`` or ``xvec.losses`` that
points at a subclass of :class:`SpeakerModel` or :class:`SpeakerLoss`. Each class carries a
pydantic ``Params`` schema, so a recipe is validated against it before anything runs, and a
checkpoint can rebuild the object from its recorded parameters alone.

This module is the only part of xvec a plugin needs to import.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from xvec.audio import SAMPLE_RATE

__all__ = ["Params", "SpeakerLoss", "SpeakerModel"]


class Params(BaseModel):
    """Base for a model's or loss's parameter schema: unknown fields are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class SpeakerModel(nn.Module):
    """An embedding extractor: 16 kHz waveforms ``[batch, samples]`` -> ``[batch, embedding_dim]``.

    Subclasses set ``Params`` and implement ``forward`` and ``embedding_dim``. The first line of
    the class docstring is the description ``xvec models`` shows.
    """

    Params: ClassVar[type[Params]] = Params
    sample_rate: ClassVar[int] = SAMPLE_RATE
    exact_padding: ClassVar[bool] = False  # True where forward_padded is implemented
    # ONNX export tries this exporter first, the other if it fails: "torchscript" for a graph
    # torch.export cannot capture with a symbolic length, where a dynamo attempt only costs time
    onnx_exporter: ClassVar[Literal["dynamo", "torchscript"]] = "dynamo"

    def __init__(self, params: Params | None = None) -> None:
        super().__init__()
        self.params = params if params is not None else self.Params()

    @property
    def embedding_dim(self) -> int:
        """Size of the embedding vector this model returns."""
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_padded(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Embeddings of a zero-padded batch whose row ``i`` holds ``lengths[i]`` real samples,
        each equal to ``forward`` of that row's real samples alone.

        Optional: a model whose layers can ignore the padding implements it and sets
        ``exact_padding``; extraction then batches files of different lengths without trimming
        them. Other models see only batches of equal-length files.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot ignore padding")

    @classmethod
    def from_voxceleb_trainer(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a voxceleb_trainer ``__S__`` state dict (prefix removed) onto this model's keys.

        The default is the identity: built-in models keep voxceleb_trainer's module names.
        """
        return state


class SpeakerLoss(nn.Module):
    """A training objective on embeddings.

    ``forward(x, labels)`` takes ``x`` of shape ``[batch, per_speaker, dim]`` (``per_speaker``
    utterances of the same speaker in each row, as voxceleb_trainer's nPerSpeaker) and ``labels``
    of shape ``[batch]``; it returns ``(loss, accuracy)`` where accuracy is a top-1 percentage
    (or another "higher is better" figure, named in the docstring).

    Class attributes tell the trainer what the loss needs, so a recipe is checked up front:
    ``needs_classes`` (the number of training speakers), ``min_per_speaker`` and
    ``distinct_speakers`` (every row of a batch a different speaker, as metric losses that
    treat the other rows as negatives need). A loss with no accuracy to report sets
    ``reports_accuracy = False`` (and returns any number): its log records and curves then say
    so instead of showing zeros.
    """

    Params: ClassVar[type[Params]] = Params
    needs_classes: ClassVar[bool] = False
    min_per_speaker: ClassVar[int] = 1
    distinct_speakers: ClassVar[bool] = False
    reports_accuracy: ClassVar[bool] = True

    def __init__(
        self, params: Params | None, embedding_dim: int, num_classes: int | None = None
    ) -> None:
        super().__init__()
        self.params = params if params is not None else self.Params()
        if self.needs_classes and not num_classes:
            raise ValueError(f"{type(self).__name__} needs the number of classes (speakers)")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    def forward(  # pragma: no cover - abstract
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
