"""Training objectives: parity with voxceleb_trainer's losses, triplet mining, shapes, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xvec import registry
from xvec.checkpoint import load_state_strict
from xvec.errors import XvecError
from xvec.losses.metric import Triplet

from conftest import VT_FIXTURES, requires_fixtures

LOSS_FIXTURES = VT_FIXTURES / "losses"
EMBEDDING_DIM, NUM_CLASSES = 64, 10
METRIC_LOSSES = ["ge2e", "proto", "triplet", "angleproto", "softmaxproto"]
ALL_LOSSES = ["softmax", "amsoftmax", "aamsoftmax", *METRIC_LOSSES]


def _vt_cases() -> list[dict]:
    if not LOSS_FIXTURES.is_dir():
        return []
    return json.loads((LOSS_FIXTURES / "losses.json").read_text())["cases"]


def _build_vt_case(case: dict) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The loss of a fixture case with VT's initial weights, its input as [B, P, D], labels."""
    params = {k: v for k, v in case["kwargs"].items() if k not in ("nOut", "nClasses")}
    loss = registry.build(
        "loss", case["loss"], params, embedding_dim=EMBEDDING_DIM, num_classes=NUM_CLASSES
    )
    state = {
        k: torch.from_numpy(v) for k, v in np.load(LOSS_FIXTURES / case["params_file"]).items()
    }
    load_state_strict(loss, state, case["params_file"])
    x = torch.from_numpy(np.load(LOSS_FIXTURES / f"{case['input']}.npy"))
    x = x.unsqueeze(1) if x.dim() == 2 else x
    labels = torch.from_numpy(np.load(LOSS_FIXTURES / "labels.npy")).long()
    return loss, x.clone().requires_grad_(True), labels


def _assert_grad_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(
        actual.reshape(expected.shape).numpy(), expected, rtol=1e-5, atol=1e-6 * scale
    )


@requires_fixtures
@pytest.mark.parametrize(
    "case",
    [c for c in _vt_cases() if c["loss"] != "proto"],
    ids=lambda c: f"case{c['case']:02d}_{c['loss']}_{c['input']}",
)
def test_matches_voxceleb_trainer(case):
    loss, x, labels = _build_vt_case(case)
    value, accuracy = loss(x, labels)
    value.backward()
    assert value.item() == pytest.approx(case["value"], rel=1e-5)
    assert accuracy.item() == pytest.approx(case["acc"], abs=1e-4)
    _assert_grad_close(x.grad, np.load(LOSS_FIXTURES / case["grad_file"]))


@requires_fixtures
@pytest.mark.parametrize(
    "case", [c for c in _vt_cases() if c["loss"] == "proto"], ids=lambda c: c["input"]
)
def test_proto_is_the_intended_prototypical_loss(case):
    """VT's fixture is its torch>=1.10 broadcasting accident; xvec computes what VT means.

    The fixture is reproduced by scoring ``[B, D]`` "logits" (``F.pairwise_distance``'s
    squared differences, with its eps 1e-6, summed over the batch axis instead of the embedding
    axis), proving what it measures; xvec matches the prototypical loss ``softmax_j(-|q_i -
    c_j|²)`` that VT computed on the torch it was written for (here exactly, in float64).
    """
    loss, x, labels = _build_vt_case(case)
    target = torch.arange(x.shape[0])

    query, prototypes = x[:, 0], x[:, 1:].mean(1)
    difference = query.unsqueeze(2) - prototypes.T.unsqueeze(0) + 1e-6  # [B, D, B]
    accident = F.cross_entropy(-difference.pow(2).sum(2), target)  # [B, D] "logits"
    (accident_grad,) = torch.autograd.grad(accident, x)
    assert accident.item() == pytest.approx(case["value"], rel=1e-5)
    _assert_grad_close(accident_grad, np.load(LOSS_FIXTURES / case["grad_file"]))

    exact_x = x.detach().double().requires_grad_(True)
    exact_logits = -torch.cdist(exact_x[:, 0], exact_x[:, 1:].mean(1)).pow(2)  # [B, B]
    exact = F.cross_entropy(exact_logits, target)
    (exact_grad,) = torch.autograd.grad(exact, exact_x)
    value, accuracy = loss(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == pytest.approx(exact.item(), rel=1e-5)
    assert value.item() != pytest.approx(case["value"], rel=1e-3)
    expected_accuracy = 100.0 * (exact_logits.argmax(1) == target).double().mean().item()
    assert accuracy.item() == pytest.approx(expected_accuracy)
    _assert_grad_close(grad, exact_grad.numpy())


def test_classification_scores_every_utterance_with_its_row_label():
    torch.manual_seed(0)
    x, labels = torch.randn(5, 3, 16), torch.tensor([0, 3, 1, 3, 2])
    for name in ("softmax", "amsoftmax", "aamsoftmax"):
        loss = registry.build("loss", name, {}, embedding_dim=16, num_classes=4)
        value, accuracy = loss(x, labels)
        flat_value, flat_accuracy = loss(x.reshape(15, 1, 16), labels.repeat_interleave(3))
        assert value.item() == pytest.approx(flat_value.item(), rel=1e-6)
        assert accuracy.item() == pytest.approx(flat_accuracy.item())


@pytest.mark.parametrize("easy_margin", [False, True])
def test_aamsoftmax_margin_branches(easy_margin):
    """True-class logit: s·cos(θ+m) where allowed, else VT's fallbacks (θ near π, or cos θ ≤ 0)."""
    torch.manual_seed(0)
    margin, scale = 0.5, 10.0
    loss = registry.build(
        "loss",
        "aamsoftmax",
        {"margin": margin, "scale": scale, "easy_margin": easy_margin},
        embedding_dim=8,
        num_classes=3,
    )
    weight = F.normalize(loss.weight.detach(), dim=1)
    # A unit direction orthogonal to every class weight, to place rows at chosen angles θ.
    basis, _ = torch.linalg.qr(torch.cat([weight.T, torch.randn(8, 1)], dim=1))
    away = basis[:, 3]
    angles = torch.tensor([0.3, 1.8, np.pi - 0.2])  # plain; cos θ < 0; θ + m past π
    x = (torch.cos(angles)[:, None] * weight + torch.sin(angles)[:, None] * away).unsqueeze(1)
    labels = torch.tensor([0, 1, 2])
    cosine = F.normalize(x[:, 0], dim=1) @ weight.T
    true_cos = cosine[torch.arange(3), labels]
    assert torch.allclose(true_cos, torch.cos(angles), atol=1e-6)
    theta = angles
    if easy_margin:
        expected_true = torch.where(true_cos > 0, torch.cos(theta + margin), true_cos)
    else:
        fallback = true_cos - np.sin(np.pi - margin) * margin
        expected_true = torch.where(theta + margin < np.pi, torch.cos(theta + margin), fallback)
    logits = cosine.clone()
    logits[torch.arange(3), labels] = expected_true
    value, _ = loss(x, labels)
    assert value.item() == pytest.approx(F.cross_entropy(scale * logits, labels).item(), rel=1e-5)


# ---------------------------------------------------------------------------------- triplet


def _triplet(**params) -> Triplet:
    return registry.build("loss", "triplet", params, embedding_dim=8)


def test_triplet_is_zero_when_negatives_are_beyond_the_margin():
    torch.manual_seed(0)
    anchors = torch.eye(8)[:5]  # orthogonal speakers: negatives at squared distance 2
    positives = F.normalize(anchors + 0.05 * torch.randn(5, 8), dim=1)
    x = torch.stack([anchors, positives], dim=1)
    for params in ({"hard_prob": 1.0, "margin": 1.0}, {"hard_rank": -1, "margin": 1.0}, {}):
        value, accuracy = _triplet(**params)(x)
        assert value.item() == 0.0 and accuracy.item() == 100.0


def test_triplet_penalises_a_negative_nearer_than_the_positive():
    torch.manual_seed(0)
    margin = 0.2
    anchors = torch.eye(8)[:4]
    positives = anchors.clone()
    positives[0] = torch.eye(8)[5]  # row 0's positive is far (squared distance 2) ...
    positives[1] = F.normalize(anchors[0] + 0.1 * torch.eye(8)[6], dim=0)  # ... row 1's is near
    anchors[1] = positives[1]  # row 1: a perfect pair, all its negatives at squared distance 2
    x = torch.stack([anchors, positives], dim=1)
    value, accuracy = _triplet(hard_prob=1.0, hard_rank=0, margin=margin)(x)
    # Row 0 mines row 1's positive as hardest; rows 1-3 have negatives far beyond the margin.
    near = (anchors[0] - positives[1]).pow(2).sum()
    expected = (2.0 - near + margin) / 4
    assert value.item() == pytest.approx(expected.item(), rel=1e-5) and value.item() > 0
    assert accuracy.item() == pytest.approx(75.0)


def test_triplet_hard_mining_picks_the_hardest_negative():
    torch.manual_seed(0)
    anchors, positives = torch.randn(16, 8), torch.randn(16, 8)
    distances = torch.cdist(F.normalize(anchors, dim=1), F.normalize(positives, dim=1))
    distances.fill_diagonal_(float("inf"))
    similarity = -distances.pow(2)
    assert torch.equal(
        _triplet(hard_prob=1.0, hard_rank=0).mine_negatives(similarity), distances.argmin(1)
    )
    # hard_rank 3: always one of the 4 nearest negatives, and each of them gets chosen.
    nearest4 = distances.argsort(1)[:, :4]
    picks = torch.stack(
        [_triplet(hard_prob=1.0, hard_rank=3).mine_negatives(similarity) for _ in range(200)], dim=1
    )
    assert (picks.unsqueeze(2) == nearest4.unsqueeze(1)).any(2).all()
    assert all(
        set(row.tolist()) == set(near.tolist()) for row, near in zip(picks, nearest4, strict=True)
    )
    # hard_prob 0: any other row, never the row's own positive.
    picks = torch.stack([_triplet(hard_prob=0.0).mine_negatives(similarity) for _ in range(400)], 1)
    assert not (picks == torch.arange(16).unsqueeze(1)).any()
    assert all(len(set(row.tolist())) == 15 for row in picks)


def test_triplet_semi_hard_mining():
    torch.manual_seed(0)
    own = torch.tensor([-1.0, -1.0, -1.0])
    # Row 0: only column 2 lies in (own - margin, own); rows 1 and 2 have none in the band.
    similarity = torch.tensor([[-1.0, -3.0, -1.2], [-0.5, -1.0, -3.0], [-2.0, -3.0, -1.0]])
    assert torch.equal(similarity.diagonal(), own)
    loss = _triplet(hard_rank=-1, margin=0.5)
    picks = torch.stack([loss.mine_negatives(similarity) for _ in range(100)], dim=1)
    assert (picks[0] == 2).all()
    assert set(picks[1].tolist()) == {0, 2} and set(picks[2].tolist()) == {0, 1}


def test_triplet_gradients_are_finite_even_for_coincident_embeddings():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 8)
    x[:, 1] = x[:, 0]  # anchor == positive
    x[3, 1] = x[2, 0] * 1e3  # a negative in the same direction as another anchor
    x.requires_grad_(True)
    for params in ({"hard_prob": 1.0, "margin": 0.3}, {"hard_rank": -1, "margin": 0.3}):
        value, _ = _triplet(**params)(x)
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


# ------------------------------------------------------------------------------- every loss


LEARNING_PARAMS = {
    "amsoftmax": {"margin": 0.3, "scale": 30},
    "aamsoftmax": {"margin": 0.2, "scale": 30},
    "triplet": {"hard_prob": 1.0, "hard_rank": 0, "margin": 0.3},
}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_optimising_the_embeddings_lowers_the_loss(name):
    torch.manual_seed(0)
    loss = registry.build(
        "loss", name, LEARNING_PARAMS.get(name, {}), embedding_dim=16, num_classes=8
    )
    per_speaker = loss.min_per_speaker if name == "triplet" else 3
    x = torch.randn(8, per_speaker, 16, requires_grad=True)
    labels = torch.randperm(8)
    optimiser = torch.optim.Adam([x, *loss.parameters()], lr=0.05)
    values = []
    for _ in range(15):
        value, accuracy = loss(x, labels)
        values.append(value.item())
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    assert values[-1] < 0.7 * values[0], values
    assert 0.0 <= accuracy.item() <= 100.0


@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_metric_losses_need_two_utterances_per_speaker(name):
    loss = registry.build("loss", name, {}, embedding_dim=16, num_classes=8)
    assert loss.min_per_speaker == 2
    with pytest.raises(XvecError, match="nPerSpeaker"):
        loss(torch.randn(8, 1, 16), torch.arange(8))


def test_shape_errors_are_clear():
    softmax = registry.build("loss", "softmax", {}, embedding_dim=16, num_classes=8)
    with pytest.raises(XvecError, match=r"nPerSpeaker"):
        softmax(torch.randn(8, 16), torch.arange(8))
    with pytest.raises(XvecError, match=r"16-dimensional"):
        softmax(torch.randn(8, 1, 12), torch.arange(8))
    with pytest.raises(XvecError, match=r"label"):
        softmax(torch.randn(8, 1, 16), torch.arange(4))
    with pytest.raises(XvecError, match=r"nPerSpeaker = 2"):
        _triplet()(torch.randn(8, 3, 8))


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("amsoftmax", {"scale": 0}, "scale"),
        ("aamsoftmax", {"margin": -0.1}, "margin"),
        ("triplet", {"hard_prob": 1.5}, "hard_prob"),
        ("angleproto", {"init_w": -1.0}, "init_w"),
        ("proto", {"margin": 0.1}, "margin"),
    ],
)
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(XvecError, match=f"parameter '{field}'"):
        registry.build("loss", name, params, embedding_dim=16, num_classes=8)


def test_defaults_and_state_keys_are_voxceleb_trainers():
    def build(name):
        return registry.build("loss", name, {}, embedding_dim=16, num_classes=8)

    assert (build("amsoftmax").params.margin, build("amsoftmax").params.scale) == (0.3, 15.0)
    triplet = build("triplet").params
    assert (triplet.hard_rank, triplet.hard_prob, triplet.margin) == (0, 0.0, 0.0)
    shapes = {
        "softmax": {"fc.weight": (8, 16), "fc.bias": (8,)},
        "amsoftmax": {"W": (16, 8)},
        "aamsoftmax": {"weight": (8, 16)},
        "angleproto": {"w": (), "b": ()},
        "ge2e": {"w": (), "b": ()},
        "proto": {},
        "triplet": {},
        "softmaxproto": {
            "softmax.fc.weight": (8, 16),
            "softmax.fc.bias": (8,),
            "angleproto.w": (),
            "angleproto.b": (),
        },
    }
    for name, expected in shapes.items():
        state = build(name).state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == expected, name
    assert build("ge2e").w.item() == 10.0 and build("ge2e").b.item() == -5.0
