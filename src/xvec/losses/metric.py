"""Metric-learning objectives on batches of ``per_speaker`` utterances of distinct speakers.

Each batch row holds ``per_speaker`` (voxceleb_trainer's nPerSpeaker) embeddings of one speaker
and every row is a different speaker, so the "classes" of a batch are its rows and the labels
are not needed (except by :class:`SoftmaxProto`'s softmax half). The mathematics, parameter
names, defaults and state-dict keys follow voxceleb_trainer's ``loss/ge2e.py``, ``proto.py``,
``angleproto.py``, ``softmaxproto.py`` and ``triplet.py``; where its code no longer does what it
means on current torch (``proto`` and ``triplet``, see their docstrings) the intended
mathematics is implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xvec.errors import XvecError
from xvec.losses.classification import Softmax, SoftmaxParams, check_input, top1_accuracy
from xvec.plugin import Params, SpeakerLoss

__all__ = ["GE2E", "AngleProto", "Proto", "SoftmaxProto", "Triplet"]


def _row_targets(rows: int, device: torch.device) -> torch.Tensor:
    """Class index of each batch row when the rows themselves are the classes."""
    return torch.arange(rows, device=device)


def _negative_squared_distances(queries: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[Q, D] x [C, D] -> [Q, C]``: minus the squared Euclidean distance of every pair.

    Differences are formed explicitly (``Q*C*D`` memory, a few MB at VT's batch sizes) rather
    than expanding ``|q|² + |c|² - 2q·c``, whose cancellation costs float32 precision.
    """
    return -(queries.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(2)


class ScaledCosineParams(Params):
    """Initial values of the learnable map ``w * cos + b`` applied to cosine similarities."""

    init_w: float = Field(10.0, gt=0, description="initial scale w of the cosine similarities")
    init_b: float = Field(-5.0, description="initial bias b of the cosine similarities")


class _ScaledCosineLoss(SpeakerLoss):
    """Shared part of AngleProto and GE2E: the learnable ``w``, ``b`` (voxceleb_trainer's names)."""

    Params = ScaledCosineParams
    needs_classes = False
    min_per_speaker = 2
    distinct_speakers = True

    def __init__(
        self, params: ScaledCosineParams | None, embedding_dim: int, num_classes: int | None = None
    ) -> None:
        super().__init__(params, embedding_dim, num_classes)
        self.w = nn.Parameter(torch.tensor(self.params.init_w))
        self.b = nn.Parameter(torch.tensor(self.params.init_b))


class AngleProto(_ScaledCosineLoss):
    """Angular prototypical loss: cosine of each query to every speaker's support centroid.

    The first utterance of a row is its query, the mean of the others its centroid; the logits
    ``w * cos + b`` (learnable ``w``, ``b``, voxceleb_trainer's names) go through a softmax over
    the rows. As in voxceleb_trainer ``w`` is not clamped (its clamp there has no effect).
    Accuracy: % of queries closest to their own centroid.
    """

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        queries = F.normalize(x[:, 0], dim=1)
        centroids = F.normalize(x[:, 1:].mean(1), dim=1)
        logits = (queries @ centroids.T) * self.w + self.b
        target = _row_targets(x.shape[0], x.device)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)


class GE2E(_ScaledCosineLoss):
    """Generalised end-to-end loss (softmax variant): every utterance against every centroid.

    An utterance is compared with its own speaker's centroid computed without it and with the
    full centroids of the other speakers; cosines are clamped below at 1e-6, mapped through
    ``w * cos + b`` (learnable, voxceleb_trainer's names, ``w`` unclamped as there) and scored
    with a softmax over the rows. Accuracy: % of utterances closest to their own speaker.
    """

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        rows, per_speaker, _ = x.shape
        unit = F.normalize(x, dim=2)
        centroids = F.normalize(x.mean(1), dim=1)
        # Own-speaker centroid of every utterance with that utterance left out.
        leave_one_out = F.normalize((x.sum(1, keepdim=True) - x) / (per_speaker - 1), dim=2)
        own = (unit * leave_one_out).sum(2)  # [rows, per_speaker]
        cosine = torch.einsum("rpd,cd->rpc", unit, centroids)  # [rows, per_speaker, rows]
        same_speaker = torch.eye(rows, dtype=torch.bool, device=x.device).unsqueeze(1)
        cosine = torch.where(same_speaker, own.unsqueeze(2), cosine).clamp(min=1e-6)
        logits = (cosine * self.w + self.b).reshape(rows * per_speaker, rows)
        target = _row_targets(rows, x.device).repeat_interleave(per_speaker)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)


class ProtoParams(Params):
    """No parameters."""


class Proto(SpeakerLoss):
    """Prototypical loss: minus squared Euclidean distance of each query to every centroid.

    The first utterance of a row is its query, the mean of the others its prototype; a softmax
    over the rows of ``-|query - prototype|²`` is the loss. This is voxceleb_trainer's intended
    mathematics: on torch >= 1.10 its ``F.pairwise_distance`` broadcasting reduces over the
    embedding axis instead and scores the wrong quantity (its value for the same input differs).
    Accuracy: % of queries nearest to their own prototype.
    """

    Params = ProtoParams
    needs_classes = False
    min_per_speaker = 2
    distinct_speakers = True

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        logits = _negative_squared_distances(x[:, 0], x[:, 1:].mean(1))
        target = _row_targets(x.shape[0], x.device)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)


class SoftmaxProtoParams(ScaledCosineParams):
    """Initial ``w``, ``b`` of the angular prototypical half (the softmax half has none)."""


class SoftmaxProto(SpeakerLoss):
    """Softmax cross-entropy plus angular prototypical loss, summed.

    The softmax half classifies every utterance by its row's speaker label; the angular
    prototypical half is :class:`AngleProto` on the same batch. State dict as voxceleb_trainer:
    ``softmax.fc.weight``, ``softmax.fc.bias``, ``angleproto.w``, ``angleproto.b``.
    Accuracy: the softmax half's top-1 %.
    """

    Params = SoftmaxProtoParams
    needs_classes = True
    min_per_speaker = 2
    distinct_speakers = True

    def __init__(
        self, params: SoftmaxProtoParams | None, embedding_dim: int, num_classes: int | None = None
    ) -> None:
        super().__init__(params, embedding_dim, num_classes)
        self.softmax = Softmax(SoftmaxParams(), embedding_dim, num_classes)
        angle_params = ScaledCosineParams(init_w=self.params.init_w, init_b=self.params.init_b)
        self.angleproto = AngleProto(angle_params, embedding_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        softmax_loss, accuracy = self.softmax(x, labels)
        prototypical_loss, _ = self.angleproto(x, labels)
        return softmax_loss + prototypical_loss, accuracy


class TripletParams(Params):
    """Margin and hard-negative mining of the triplet loss (voxceleb_trainer's names/defaults)."""

    hard_rank: int = Field(
        0,
        description="mine among the hard_rank+1 nearest negatives; negative: semi-hard mining",
    )
    hard_prob: float = Field(
        0.0, ge=0, le=1, description="probability of rank-based mining, else a random negative"
    )
    margin: float = Field(0.0, ge=0, description="margin on squared distances")


class Triplet(SpeakerLoss):
    """Triplet loss on squared distances of unit embeddings, with hard-negative mining.

    Each row is (anchor, positive); a negative is another row's positive, chosen per anchor:
    with probability ``hard_prob`` uniformly among the ``hard_rank + 1`` nearest negatives,
    otherwise uniformly among all. With ``hard_rank < 0``, semi-hard mining instead: uniformly
    among negatives farther than the positive by less than ``margin`` (any negative if none).
    Loss: mean of ``relu(|a - p|² - |a - n|² + margin)``. This is what voxceleb_trainer's
    triplet loss means; its code indexes past the batch on torch >= 1.10.
    Accuracy: % of anchors whose positive is nearer than the mined negative (voxceleb_trainer
    reports an EER over these pairs instead).
    """

    Params = TripletParams
    needs_classes = False
    min_per_speaker = 2
    distinct_speakers = True

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, labels)
        if x.shape[1] != 2 or x.shape[0] < 2:
            raise XvecError(
                f"Triplet needs nPerSpeaker = 2 (anchor, positive) and at least 2 speakers a "
                f"batch, got embeddings of shape {tuple(x.shape)}; set train.nPerSpeaker=2"
            )
        anchors = F.normalize(x[:, 0], dim=1)
        positives = F.normalize(x[:, 1], dim=1)
        with torch.no_grad():
            # Unit vectors: |a - p|² = 2 - 2 a·p, so similarity ranks negatives by distance.
            negative_index = self.mine_negatives(2.0 * (anchors @ positives.T) - 2.0)
        negatives = positives[negative_index]
        positive_distance = (anchors - positives).pow(2).sum(1)
        negative_distance = (anchors - negatives).pow(2).sum(1)
        loss = F.relu(positive_distance - negative_distance + self.params.margin).mean()
        with torch.no_grad():
            accuracy = (positive_distance < negative_distance).float().mean() * 100.0
        return loss, accuracy

    def mine_negatives(self, similarity: torch.Tensor) -> torch.Tensor:
        """Index of the negative (another row's positive) for each anchor.

        ``similarity[i, j]`` is minus the squared distance of anchor ``i`` to positive ``j``,
        so the diagonal holds the true pairs. Random choices use torch's generator.
        """
        rows = similarity.shape[0]
        device = similarity.device
        is_self = torch.eye(rows, dtype=torch.bool, device=device)
        if self.params.hard_rank < 0:
            own = similarity.diagonal().unsqueeze(1)
            semi_hard = (similarity > own - self.params.margin) & (similarity < own) & ~is_self
            has_semi_hard = semi_hard.any(dim=1, keepdim=True)
            return _uniform_choice(torch.where(has_semi_hard, semi_hard, ~is_self))
        # Negatives from nearest (hardest) to farthest; the row's own positive sorts last.
        by_hardness = similarity.masked_fill(is_self, float("-inf")).argsort(1, descending=True)
        hardest_rank = min(self.params.hard_rank, rows - 2)
        use_hard = torch.rand(rows, device=device) < self.params.hard_prob
        rank = torch.where(
            use_hard,
            torch.randint(0, hardest_rank + 1, (rows,), device=device),
            torch.randint(0, rows - 1, (rows,), device=device),
        )
        return by_hardness.gather(1, rank.unsqueeze(1)).squeeze(1)


def _uniform_choice(allowed: torch.Tensor) -> torch.Tensor:
    """For each row of a boolean mask, the column of one allowed entry drawn uniformly."""
    draws = torch.rand(allowed.shape, device=allowed.device).masked_fill(~allowed, -1.0)
    return draws.argmax(dim=1)
