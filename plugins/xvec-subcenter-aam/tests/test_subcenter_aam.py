"""SubCenterAAM: agrees with xvec's AAM softmax at K=1, takes the max over sub-centres, learns."""

from __future__ import annotations

import math
import sys
from importlib import import_module
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from xvec_subcenter_aam import SubCenterAAM, SubCenterAAMParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def make_loss(num_classes: int, dim: int, **params: object) -> SubCenterAAM:
    return SubCenterAAM(SubCenterAAMParams(**params), embedding_dim=dim, num_classes=num_classes)


def test_entry_point_in_pyproject_names_this_class():
    project = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["xvec.losses"]["subcenter_aam"]
    module, _, attr = target.partition(":")
    assert getattr(import_module(module), attr) is SubCenterAAM
    assert project["dependencies"] == ["xvec"]
    assert SubCenterAAM.needs_classes and SubCenterAAM.min_per_speaker == 1


def test_parameters_have_the_paper_defaults_and_are_validated():
    defaults = SubCenterAAMParams()
    assert (defaults.margin, defaults.scale, defaults.K, defaults.easy_margin) == (
        0.2,
        30.0,
        3,
        False,
    )
    for bad in ({"margin": -0.1}, {"margin": 2.0}, {"scale": 0}, {"K": 0}, {"K": 1.5}):
        with pytest.raises(ValidationError) as info:
            SubCenterAAMParams(**bad)
        assert info.value.errors()[0]["loc"] == (next(iter(bad)),)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SubCenterAAMParams(sub_centers=3)
    with pytest.raises(ValueError, match="needs the number of classes"):
        SubCenterAAM(None, embedding_dim=4)
    assert make_loss(5, 4, K=3).weight.shape == (15, 4)


def _builtin_aamsoftmax(num_classes: int, dim: int, **params: object) -> torch.nn.Module:
    from xvec import registry

    return registry.build(
        "loss", "aamsoftmax", dict(params), embedding_dim=dim, num_classes=num_classes
    )


def _class_weight_key(loss: torch.nn.Module, num_classes: int, dim: int) -> tuple[str, bool]:
    """The built-in's class-centre parameter and whether it is stored transposed ``[D, C]``."""
    for key, value in loss.state_dict().items():
        if value.shape == (num_classes, dim):
            return key, False
        if value.shape == (dim, num_classes):
            return key, True
    raise AssertionError(f"no [C, D] weight in {list(loss.state_dict())}")


@pytest.mark.parametrize("easy_margin", [False, True])
def test_one_subcentre_equals_builtin_aamsoftmax(easy_margin):
    pytest.importorskip("xvec.losses", reason="xvec's built-in losses are not installed")
    torch.manual_seed(0)
    classes, dim, rows, per_speaker = 7, 16, 12, 2
    ours = make_loss(classes, dim, K=1, margin=0.2, scale=30, easy_margin=easy_margin)
    builtin = _builtin_aamsoftmax(classes, dim, margin=0.2, scale=30, easy_margin=easy_margin)
    key, transposed = _class_weight_key(builtin, classes, dim)
    with torch.no_grad():
        ours.weight.copy_(builtin.state_dict()[key].T if transposed else builtin.state_dict()[key])
    labels = torch.randint(0, classes, (rows,))
    x = torch.randn(rows, per_speaker, dim)
    # Some rows point away from their class, so theta + m > pi: the fallback branch is compared.
    x[:3, 0] = -F.normalize(ours.weight[labels[:3]].detach(), dim=1) * 3 + 0.01 * x[:3, 0]
    x_ours, x_builtin = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss_ours, acc_ours = ours(x_ours, labels)
    loss_builtin, acc_builtin = builtin(x_builtin, labels)
    loss_ours.backward()
    loss_builtin.backward()
    torch.testing.assert_close(loss_ours, loss_builtin, rtol=1e-5, atol=1e-6)
    assert float(acc_ours) == pytest.approx(float(acc_builtin))
    torch.testing.assert_close(x_ours.grad, x_builtin.grad, rtol=1e-4, atol=1e-6)
    weight_grad = dict(builtin.named_parameters())[key].grad
    torch.testing.assert_close(
        ours.weight.grad, weight_grad.T if transposed else weight_grad, rtol=1e-4, atol=1e-6
    )


def _brute_force(
    x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, classes: int, m: float, s: float
) -> tuple[float, float]:
    """Loss and accuracy with plain Python arithmetic, one utterance and sub-centre at a time."""
    sub = weight.shape[0] // classes
    total, correct, count = 0.0, 0, 0
    for row in range(x.shape[0]):
        for utt in range(x.shape[1]):
            vec = x[row, utt].tolist()
            norm = math.sqrt(sum(v * v for v in vec))
            logits = []
            for c in range(classes):
                best = -2.0
                for k in range(sub):
                    w = weight[c * sub + k].tolist()
                    cos = sum(a * b for a, b in zip(vec, w, strict=True)) / (
                        norm * math.sqrt(sum(b * b for b in w))
                    )
                    best = max(best, cos)
                theta = math.acos(max(-1.0, min(1.0, best)))
                logits.append(s * (math.cos(theta + m) if c == int(labels[row]) else best))
            top = max(logits)
            log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
            total += log_sum - logits[int(labels[row])]
            correct += int(max(range(classes), key=logits.__getitem__) == int(labels[row]))
            count += 1
    return total / count, 100.0 * correct / count


def test_max_over_subcentres_matches_brute_force():
    torch.manual_seed(1)
    classes, dim, rows, per_speaker = 4, 6, 5, 3
    loss = make_loss(classes, dim, K=3, margin=0.25, scale=12)
    labels = torch.randint(0, classes, (rows,))
    # Embeddings near random sub-centres, so several sub-centres win and accuracy is not trivial.
    picks = torch.randint(0, loss.weight.shape[0], (rows, per_speaker))
    x = F.normalize(loss.weight.detach()[picks], dim=-1) + 0.6 * torch.randn(rows, per_speaker, dim)
    value, accuracy = loss(x, labels)
    expected_loss, expected_accuracy = _brute_force(
        x, labels, loss.weight.detach(), classes, m=0.25, s=12
    )
    assert value.item() == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy.item() == pytest.approx(expected_accuracy)
    cos = F.normalize(x.reshape(-1, dim), dim=1) @ F.normalize(loss.weight.detach(), dim=1).T
    winners = cos.view(-1, classes, 3).argmax(-1)
    assert len(winners.unique()) > 1, "test data should make different sub-centres win"


def test_gradient_reaches_only_the_winning_subcentre():
    torch.manual_seed(2)
    loss = make_loss(3, 5, K=4)
    x = torch.randn(1, 1, 5)
    loss(x, torch.tensor([1]))[0].backward()
    winners = F.normalize(x[0], dim=1) @ F.normalize(loss.weight.detach(), dim=1).T
    winners = winners.view(3, 4).argmax(-1)
    grad_norms = loss.weight.grad.norm(dim=1).view(3, 4)
    assert (grad_norms.gather(1, winners[:, None]) > 0).all()
    losers = torch.ones(3, 4, dtype=torch.bool).scatter(1, winners[:, None], False)
    assert (grad_norms[losers] == 0).all()


def test_margin_is_cos_theta_plus_m_and_monotonic():
    loss = make_loss(2, 3, margin=0.3)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    target = loss.add_margin(theta.cos())
    assert (target <= theta.cos() + 1e-12).all()
    assert (target.diff() < 0).all(), "target logit must fall as the angle grows"
    exact = theta <= math.pi - 0.3
    torch.testing.assert_close(target[exact], (theta[exact] + 0.3).cos(), atol=1e-6, rtol=0)


def test_easy_margin_only_where_cosine_is_positive():
    loss = make_loss(2, 3, margin=0.3, easy_margin=True)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    target = loss.add_margin(theta.cos())
    acute = theta.cos() > 0
    torch.testing.assert_close(target[acute], (theta[acute] + 0.3).cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(target[~acute], theta[~acute].cos())


def test_per_speaker_rows_equal_flattened_utterances():
    torch.manual_seed(3)
    loss = make_loss(5, 8)
    x, labels = torch.randn(4, 3, 8), torch.randint(0, 5, (4,))
    grouped = loss(x, labels)
    flat = loss(x.reshape(12, 1, 8), labels.repeat_interleave(3))
    unbatched = loss(x.reshape(12, 8), labels.repeat_interleave(3))
    for a, b in zip(grouped, flat, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(flat, unbatched, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"expected x \[batch, per_speaker, 8\]"):
        loss(torch.randn(4, 3, 7), labels)


def test_loss_falls_and_accuracy_rises_when_training():
    """Classes made of two separate clusters: a linear embedder plus the loss learns them."""
    torch.manual_seed(4)
    classes, modes, dim = 5, 2, 10
    centres = 3 * torch.randn(classes, modes, dim)
    labels = torch.arange(classes).repeat_interleave(16)
    mode = torch.randint(0, modes, (labels.numel(),))
    inputs = centres[labels, mode] + 0.5 * torch.randn(labels.numel(), dim)
    embedder = torch.nn.Linear(dim, 8)
    loss = make_loss(classes, 8, K=2, margin=0.2, scale=16)
    optimiser = torch.optim.Adam([*embedder.parameters(), *loss.parameters()], lr=0.05)
    history = []
    for _ in range(60):
        optimiser.zero_grad()
        value, accuracy = loss(embedder(inputs).unsqueeze(1), labels)
        value.backward()
        optimiser.step()
        history.append((value.item(), accuracy.item()))
    assert history[-1][0] < 0.25 * history[0][0]
    assert history[-1][1] > history[0][1] and history[-1][1] >= 90.0
