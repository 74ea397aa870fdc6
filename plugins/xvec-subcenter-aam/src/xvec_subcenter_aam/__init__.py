"""Sub-center additive angular margin loss for xvec, packaged as a third-party plugin.

Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web Faces"
(ECCV 2020): each class keeps ``K`` sub-centres; an embedding's similarity to a class is its
largest cosine to any of them, and the ArcFace margin is added to the angle of the true class.
Noisy or multi-modal classes can then spread over several sub-centres instead of pulling one
centre between them. With ``K = 1`` it is the ordinary additive angular margin softmax.

The package imports only :mod:`xvec.plugin`; xvec finds the class through the entry point
``subcenter_aam`` in the group ``xvec.losses`` declared in this package's pyproject.toml.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from xvec.plugin import Params, SpeakerLoss

__all__ = ["SubCenterAAM", "SubCenterAAMParams"]


class SubCenterAAMParams(Params):
    """Parameters of :class:`SubCenterAAM`, as written in a recipe's ``[loss]`` section."""

    margin: float = Field(
        0.2, ge=0, lt=math.pi / 2, description="additive angular margin m, in radians"
    )
    scale: float = Field(30.0, gt=0, description="logit scale s")
    K: int = Field(3, ge=1, description="sub-centres per class")
    easy_margin: bool = Field(
        False, description="margin only where cos(theta) > 0, instead of ArcFace's fallback"
    )


class SubCenterAAM(SpeakerLoss):
    """Sub-center AAM softmax (sub-center ArcFace): K sub-centres per speaker, max cosine."""

    Params = SubCenterAAMParams
    needs_classes: ClassVar[bool] = True
    min_per_speaker: ClassVar[int] = 1

    params: SubCenterAAMParams

    def __init__(
        self,
        params: SubCenterAAMParams | None,
        embedding_dim: int,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(params, embedding_dim, num_classes)
        sub_centres = self.params.K
        # Row c * K + k is sub-centre k of class c, so K = 1 has the plain AAM layout [C, D].
        self.weight = torch.nn.Parameter(torch.empty(num_classes * sub_centres, embedding_dim))
        torch.nn.init.xavier_normal_(self.weight, gain=1.0)
        margin = self.params.margin
        self._cos_m, self._sin_m = math.cos(margin), math.sin(margin)
        # Beyond theta = pi - m, cos(theta + m) stops decreasing; use cos(theta) - m sin(m) there.
        self._threshold = math.cos(math.pi - margin)
        self._fallback = math.sin(math.pi - margin) * margin

    def class_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each embedding ``[N, D]`` to each class ``[N, C]``: max over sub-centres."""
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return cosine.view(embeddings.shape[0], self.num_classes, self.params.K).amax(dim=-1)

    def add_margin(self, cosine: torch.Tensor) -> torch.Tensor:
        """``cos(theta + m)`` from ``cos(theta)``; past ``theta = pi - m``, ArcFace's fallback."""
        sine = (1.0 - cosine * cosine).clamp(min=1e-12).sqrt()
        with_margin = cosine * self._cos_m - sine * self._sin_m
        if self.params.easy_margin:
            return torch.where(cosine > 0, with_margin, cosine)
        return torch.where(cosine > self._threshold, with_margin, cosine - self._fallback)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and top-1 accuracy (%) of ``x`` ``[B, P, D]`` (or ``[B, D]``), ``labels`` ``[B]``.

        Every utterance of row ``b`` has label ``labels[b]``. The accuracy is measured on the
        margin-adjusted logits, as voxceleb_trainer reports it for its AAM softmax.
        """
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[0] != labels.shape[0] or x.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"expected x [batch, per_speaker, {self.embedding_dim}] and labels [batch], "
                f"got {tuple(x.shape)} and {tuple(labels.shape)}"
            )
        embeddings = x.reshape(-1, x.shape[-1])
        targets = labels.repeat_interleave(x.shape[1]).unsqueeze(1)
        # Angles need float32: under mixed precision, 1 - cos^2 near 0 is lost in float16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            cosine = self.class_cosines(embeddings.float())
            target_logit = self.add_margin(cosine.gather(1, targets))
            logits = self.params.scale * cosine.scatter(1, targets, target_logit)
            loss = F.cross_entropy(logits, targets.squeeze(1))
        accuracy = (logits.detach().argmax(dim=1) == targets.squeeze(1)).float().mean() * 100.0
        return loss, accuracy
