"""Classification objectives over the training speakers: softmax, AM-softmax, AAM-softmax.

The mathematics, parameter names, defaults and state-dict keys follow voxceleb_trainer's
``loss/softmax.py``, ``loss/amsoftmax.py`` and ``loss/aamsoftmax.py``, so its ``__L__.*`` weights
load unchanged. xvec hands every loss ``x`` as ``[batch, per_speaker, dim]``; a classification
loss scores each of the ``batch * per_speaker`` utterances, each with its row's label.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xvec.errors import XvecError
from xvec.plugin import Params, SpeakerLoss

__all__ = ["AAMSoftmax", "AMSoftmax", "Softmax", "check_input", "top1_accuracy"]


def check_input(loss: SpeakerLoss, x: torch.Tensor, labels: torch.Tensor | None) -> None:
    """Reject inputs of the wrong shape with a message saying what the loss expects.

    ``x`` must be ``[batch, per_speaker, embedding_dim]`` with ``per_speaker`` at least the loss's
    ``min_per_speaker`` (voxceleb_trainer's nPerSpeaker), and ``labels``, when the loss uses
    them, ``[batch]``.
    """
    name = type(loss).__name__
    if x.dim() != 3:
        raise XvecError(
            f"{name} expects embeddings of shape [batch, nPerSpeaker, dim], got {tuple(x.shape)}"
        )
    if x.shape[1] < loss.min_per_speaker:
        raise XvecError(
            f"{name} needs nPerSpeaker >= {loss.min_per_speaker} utterances per speaker in a "
            f"batch row, got embeddings of shape {tuple(x.shape)} (nPerSpeaker {x.shape[1]}); "
            f"set train.nPerSpeaker={loss.min_per_speaker}"
        )
    if x.shape[2] != loss.embedding_dim:
        raise XvecError(
            f"{name} was built for {loss.embedding_dim}-dimensional embeddings, "
            f"got {x.shape[2]} (shape {tuple(x.shape)})"
        )
    if loss.needs_classes and (labels is None or labels.shape != x.shape[:1]):
        got = None if labels is None else tuple(labels.shape)
        raise XvecError(f"{name} needs one label per batch row ({x.shape[0]}), got {got}")


def top1_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Percentage of rows whose highest logit is the target class (no gradient)."""
    with torch.no_grad():
        return (logits.argmax(dim=1) == target).float().mean() * 100.0


def _flatten(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P, D]`` -> ``[B*P, D]`` with each row's label repeated for its P utterances."""
    per_speaker = x.shape[1]
    return x.reshape(-1, x.shape[-1]), labels.repeat_interleave(per_speaker)


class SoftmaxParams(Params):
    """No parameters: the layer's size comes from the model and the train list."""


class Softmax(SpeakerLoss):
    """Softmax cross-entropy over the training speakers (a linear layer with bias).

    Accuracy: top-1 classification accuracy in %. State dict: ``fc.weight`` ``[C, D]``,
    ``fc.bias`` ``[C]``, as voxceleb_trainer.
    """

    Params = SoftmaxParams
    needs_classes = True
    min_per_speaker = 1

    def __init__(
        self, params: SoftmaxParams | None, embedding_dim: int, num_classes: int | None = None
    ) -> None:
        super().__init__(params, embedding_dim, num_classes)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        flat, target = _flatten(x, labels)
        logits = self.fc(flat)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)


class AMSoftmaxParams(Params):
    """Additive margin softmax: ``scale * (cos(theta) - margin)`` for the true class."""

    margin: float = Field(0.3, ge=0, description="additive cosine margin m")
    scale: float = Field(15.0, gt=0, description="logit scale s")


class AMSoftmax(SpeakerLoss):
    """Additive-margin softmax (CosFace): s * (cos θ - m) for the true speaker.

    Embeddings and class weights are L2-normalised; the margin is subtracted from the true
    class's cosine before scaling. Accuracy: top-1 in % on the margin-applied logits, as
    voxceleb_trainer reports it. State dict: ``W`` ``[D, C]`` (voxceleb_trainer's layout).
    Defaults are voxceleb_trainer's loss defaults (m 0.3, s 15); its recipes use s 30.
    """

    Params = AMSoftmaxParams
    needs_classes = True
    min_per_speaker = 1

    def __init__(
        self, params: AMSoftmaxParams | None, embedding_dim: int, num_classes: int | None = None
    ) -> None:
        super().__init__(params, embedding_dim, num_classes)
        self.W = nn.Parameter(torch.empty(embedding_dim, num_classes))
        nn.init.xavier_normal_(self.W, gain=1)
        self.margin = self.params.margin  # settable: a margin ramp changes it during training

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        flat, target = _flatten(x, labels)
        cosine = F.normalize(flat, dim=1) @ F.normalize(self.W, dim=0)
        margin = F.one_hot(target, cosine.shape[1]).to(cosine.dtype) * self.margin
        logits = self.params.scale * (cosine - margin)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)


class AAMSoftmaxParams(Params):
    """Additive angular margin softmax: ``scale * cos(theta + margin)`` for the true class."""

    margin: float = Field(0.3, ge=0, lt=math.pi, description="additive angular margin m (rad)")
    scale: float = Field(15.0, gt=0, description="logit scale s")
    easy_margin: bool = Field(
        False, description="apply the margin only where cos θ > 0 (else the standard fallback)"
    )


class AAMSoftmax(SpeakerLoss):
    """Additive angular margin softmax (ArcFace): s * cos(θ + m) for the true speaker.

    Where θ + m would pass π (so cos(θ + m) stops decreasing) the logit becomes
    ``cos θ - m sin m`` instead, or with ``easy_margin`` the margin is used only where cos θ > 0:
    voxceleb_trainer's rule. Accuracy: top-1 in % on the margin-applied logits. State dict:
    ``weight`` ``[C, D]``. Defaults are voxceleb_trainer's loss defaults (m 0.3, s 15).
    """

    Params = AAMSoftmaxParams
    needs_classes = True
    min_per_speaker = 1

    def __init__(
        self, params: AAMSoftmaxParams | None, embedding_dim: int, num_classes: int | None = None
    ) -> None:
        super().__init__(params, embedding_dim, num_classes)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.margin = self.params.margin

    @property
    def margin(self) -> float:
        """The angular margin m (rad) the forward pass applies; settable (margin ramps)."""
        return self._margin

    @margin.setter
    def margin(self, value: float) -> None:
        if not 0 <= value < math.pi:
            raise ValueError(f"AAMSoftmax margin must be in [0, pi), got {value}")
        self._margin = float(value)
        self._cos_m, self._sin_m = math.cos(value), math.sin(value)
        self._threshold = math.cos(math.pi - value)  # cos θ above this <=> θ + m < π
        self._fallback = math.sin(math.pi - value) * value

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        flat, target = _flatten(x, labels)
        cosine = F.linear(F.normalize(flat, dim=1), F.normalize(self.weight, dim=1))
        # The margin only touches the true class, so cos(θ + m) is needed for one entry a row.
        true_cos = cosine.gather(1, target.unsqueeze(1))
        true_sin = (1.0 - true_cos * true_cos).clamp(0, 1).sqrt()
        with_margin = true_cos * self._cos_m - true_sin * self._sin_m
        if self.params.easy_margin:
            with_margin = torch.where(true_cos > 0, with_margin, true_cos)
        else:
            with_margin = torch.where(
                true_cos > self._threshold, with_margin, true_cos - self._fallback
            )
        logits = self.params.scale * cosine.scatter(1, target.unsqueeze(1), with_margin)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)
