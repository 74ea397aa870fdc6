"""Per-step learning-rate schedules, the margin ramp on real margin losses, decay groups."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError
from torch import nn

from xvec.config import parse_recipe
from xvec.errors import XvecError
from xvec.losses.classification import AAMSoftmax, AMSoftmax, Softmax
from xvec.schedules import (
    Constant,
    LrSchedule,
    MarginRamp,
    Step,
    WarmupCosine,
    WarmupExponential,
    has_margin,
    learning_rate,
    margin_at,
    set_margin,
)
from xvec.training.optim import apply_schedules, decay_groups, make_scheduler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEDULE = TypeAdapter(LrSchedule)
STEPS_PER_EPOCH = 10


def _rates(schedule, steps, total_epochs, base_lr):
    return [learning_rate(schedule, s, STEPS_PER_EPOCH, total_epochs, base_lr) for s in steps]


# --------------------------------------------------------------------------- learning rates


def test_warmup_exponential_decays_geometrically_to_final_lr():
    schedule = WarmupExponential(name="warmup_exponential", final_lr=5e-5, warmup_epochs=0)
    total = 6 * STEPS_PER_EPOCH

    def by_hand(step):
        return 0.1 * (5e-5 / 0.1) ** (step / total)

    for step in (0, 1, 17, 30, 59):
        assert learning_rate(schedule, step, STEPS_PER_EPOCH, 6, 0.1) == pytest.approx(
            by_hand(step), rel=1e-12
        )
    assert learning_rate(schedule, 0, STEPS_PER_EPOCH, 6, 0.1) == 0.1
    assert learning_rate(schedule, total, STEPS_PER_EPOCH, 6, 0.1) == 5e-5
    assert learning_rate(schedule, 10 * total, STEPS_PER_EPOCH, 6, 0.1) == 5e-5


def test_warmup_exponential_warms_up_from_zero_then_decays():
    schedule = WarmupExponential(
        name="warmup_exponential", final_lr=1e-3, warmup_epochs=2, warm_from_zero=True
    )
    total, warmup = 5 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH

    def decayed(step):
        return 0.2 * (1e-3 / 0.2) ** (step / total)

    rates = _rates(schedule, [0, 5, 19, 20, 21, 49], 5, 0.2)
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(5 / warmup * decayed(5), rel=1e-12)
    assert rates[2] == pytest.approx(19 / warmup * decayed(19), rel=1e-12)
    assert rates[3] == pytest.approx(decayed(20), rel=1e-12)  # warm-up over: full coefficient
    assert rates[4] == pytest.approx(decayed(21), rel=1e-12)
    assert rates[5] == pytest.approx(decayed(49), rel=1e-12)


def test_warmup_exponential_scale_ratio_as_wespeaker():
    above = WarmupExponential(
        name="warmup_exponential", final_lr=1e-3, warmup_epochs=1, scale_ratio=4
    )
    below = WarmupExponential(
        name="warmup_exponential", final_lr=1e-3, warmup_epochs=1, scale_ratio=0.5
    )

    def decayed(step):
        return 0.1 * (1e-3 / 0.1) ** (step / 30)

    # From 1 up to the ratio over the warm-up (10 steps), the ratio after it.
    assert learning_rate(above, 0, STEPS_PER_EPOCH, 3, 0.1) == pytest.approx(0.1)
    assert learning_rate(above, 5, STEPS_PER_EPOCH, 3, 0.1) == pytest.approx(2.5 * decayed(5))
    assert learning_rate(above, 10, STEPS_PER_EPOCH, 3, 0.1) == pytest.approx(4 * decayed(10))
    assert learning_rate(above, 30, STEPS_PER_EPOCH, 3, 0.1) == pytest.approx(4 * 1e-3)
    # A ratio below 1 applies from the first step.
    for step in (0, 5, 10, 20):
        assert learning_rate(below, step, STEPS_PER_EPOCH, 3, 0.1) == pytest.approx(
            0.5 * decayed(step)
        )


def test_warmup_cosine_by_hand():
    schedule = WarmupCosine(name="warmup_cosine", final_lr=1e-4, warmup_epochs=1)
    base, final, warmup, total = 0.01, 1e-4, 10, 50

    def cosine(step):
        progress = (step - warmup) / (total - warmup)
        return final + (base - final) * (1 + math.cos(math.pi * progress)) / 2

    rates = _rates(schedule, [0, 4, 9, 10, 30, 49, 50, 80], 5, base)
    assert rates[0] == pytest.approx(base / 10)
    assert rates[1] == pytest.approx(base * 5 / 10)
    assert rates[2] == pytest.approx(base)  # last warm-up step reaches the base rate
    assert rates[3] == pytest.approx(base)  # the cosine starts at the top
    assert rates[4] == pytest.approx((base + final) / 2)  # half way down
    assert rates[5] == pytest.approx(cosine(49), rel=1e-12)
    assert rates[6] == final and rates[7] == final


def test_warmup_cosine_matches_the_epoch_recipe_cosine_bit_for_bit():
    recipe = parse_recipe(
        {
            "model": {"name": "any"},
            "optim": {"scheduler": "cosine", "lr": 0.003, "min_lr": 1e-5, "warmup_epochs": 1.5},
            "train": {"max_epoch": 4},
        }
    )
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.003)
    scheduler, unit = make_scheduler(recipe, optimizer, STEPS_PER_EPOCH)
    assert unit == "step"
    schedule = WarmupCosine(name="warmup_cosine", final_lr=1e-5, warmup_epochs=1.5)
    for step in range(4 * STEPS_PER_EPOCH):
        assert optimizer.param_groups[0]["lr"] == learning_rate(
            schedule, step, STEPS_PER_EPOCH, 4, 0.003
        )
        optimizer.step()
        scheduler.step()


def test_step_schedule_multiplies_by_gamma_every_n_epochs():
    schedule = Step(name="step", gamma=0.5, every_epochs=2)
    rates = _rates(schedule, [0, 19, 20, 39, 40, 65], 10, 0.08)
    assert rates == [0.08, 0.08, 0.04, 0.04, 0.02, 0.01]
    # The same rates as torch's epoch-wise StepLR, but per step.
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.08)
    steplr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for epoch in range(7):
        for batch in range(STEPS_PER_EPOCH):
            step = epoch * STEPS_PER_EPOCH + batch
            assert learning_rate(schedule, step, STEPS_PER_EPOCH, 7, 0.08) == pytest.approx(
                optimizer.param_groups[0]["lr"], rel=1e-12
            )
        optimizer.step()
        steplr.step()


def test_constant_schedule():
    assert _rates(Constant(name="constant"), [0, 7, 10_000], 3, 0.02) == [0.02] * 3


def test_schedules_are_read_from_toml_tables():
    text = """
    [schedule]
    name = "warmup_exponential"
    final_lr = 5e-5
    warmup_epochs = 6
    warm_from_zero = true
    """
    schedule = SCHEDULE.validate_python(tomllib.loads(text)["schedule"])
    assert schedule == WarmupExponential(
        name="warmup_exponential", final_lr=5e-5, warmup_epochs=6, warm_from_zero=True
    )
    assert SCHEDULE.validate_python({"name": "step", "gamma": 0.9}) == Step(name="step", gamma=0.9)
    assert SCHEDULE.validate_python({"name": "constant"}) == Constant(name="constant")


@pytest.mark.parametrize(
    "table",
    [
        {"name": "linear"},  # unknown schedule
        {"name": "warmup_exponential"},  # final_lr is required
        {"name": "warmup_exponential", "final_lr": 0.0},  # log of zero
        {"name": "warmup_exponential", "final_lr": float("nan")},
        {"name": "warmup_exponential", "final_lr": 1e-5, "warmup_epochs": -1},
        {"name": "warmup_exponential", "final_lr": 1e-5, "scale_ratio": 0},
        {"name": "warmup_exponential", "final_lr": 1e-5, "warmup_epoch": 6},  # typo
        {"name": "warmup_cosine", "final_lr": -1e-5},
        {"name": "warmup_cosine", "warmup_epochs": float("inf")},
        {"name": "step", "gamma": 0},
        {"name": "step", "gamma": 1.5},
        {"name": "step", "gamma": 0.5, "every_epochs": 0},
        {"name": "constant", "lr": 0.1},
    ],
)
def test_bad_schedules_are_refused(table):
    with pytest.raises(ValidationError):
        SCHEDULE.validate_python(table)


def test_learning_rate_rejects_impossible_positions():
    schedule = Constant(name="constant")
    for args in [(-1, 10, 5, 0.1), (0, 0, 5, 0.1), (0, 10, 0, 0.1), (0, 10, 5, 0.0)]:
        with pytest.raises(ValueError):
            learning_rate(schedule, *args)


# --------------------------------------------------------------------------- margin ramp


def test_linear_margin_ramp_by_hand():
    ramp = MarginRamp(
        start_epoch=3, end_epoch=5, initial_margin=0.0, final_margin=0.2, kind="linear"
    )
    # The rise spans steps 20 (first step of epoch 3) to 40 (first step of epoch 5).
    expected = {0: 0.0, 19: 0.0, 20: 0.0, 25: 0.05, 30: 0.1, 39: 0.19, 40: 0.2, 500: 0.2}
    for step, margin in expected.items():
        assert margin_at(ramp, step, STEPS_PER_EPOCH) == pytest.approx(margin, abs=1e-15)


def test_exp_margin_ramp_by_hand():
    ramp = MarginRamp(start_epoch=2, end_epoch=4, initial_margin=0.1, final_margin=0.3)
    assert ramp.kind == "exp"  # WeSpeaker's default
    for step in (10, 13, 20, 29):
        progress = (step - 10) / 20
        fraction = 1 - (1e-3 / (1 + 1e-6)) ** progress
        assert margin_at(ramp, step, STEPS_PER_EPOCH) == pytest.approx(
            0.1 + 0.2 * fraction, rel=1e-12
        )
    assert margin_at(ramp, 9, STEPS_PER_EPOCH) == 0.1
    assert margin_at(ramp, 10, STEPS_PER_EPOCH) == pytest.approx(0.1, abs=1e-9)
    assert margin_at(ramp, 30, STEPS_PER_EPOCH) == 0.3


def test_ramp_starting_and_ending_together_switches_at_once():
    ramp = MarginRamp(start_epoch=2, end_epoch=2, initial_margin=0.05, final_margin=0.2)
    assert margin_at(ramp, 9, STEPS_PER_EPOCH) == 0.05
    assert margin_at(ramp, 10, STEPS_PER_EPOCH) == 0.2


@pytest.mark.parametrize(
    "fields",
    [
        {"start_epoch": 5, "end_epoch": 3, "final_margin": 0.2},
        {"start_epoch": 0, "end_epoch": 3, "final_margin": 0.2},
        {"start_epoch": 1, "end_epoch": 3, "final_margin": -0.1},
        {"start_epoch": 1, "end_epoch": 3, "final_margin": float("inf")},
        {"start_epoch": 1, "end_epoch": 3, "final_margin": 0.2, "kind": "cubic"},
        {"start_epoch": 1, "end_epoch": 3, "final_margin": 0.2, "increase_type": "exp"},
        {"start_epoch": 1, "end_epoch": 3},
    ],
)
def test_bad_margin_ramps_are_refused(fields):
    with pytest.raises(ValidationError):
        MarginRamp.model_validate(fields)


def test_margin_opt_in():
    class ReadOnly(nn.Module):
        @property
        def margin(self) -> float:
            return 0.2

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.margin = 0.1

    plain = Plain()
    assert has_margin(plain) and set_margin(plain, 0.25) and plain.margin == 0.25
    assert not has_margin(ReadOnly()) and not set_margin(ReadOnly(), 0.3)
    softmax = Softmax(None, 4, 3)
    assert not has_margin(softmax) and not set_margin(softmax, 0.3)
    ramp = MarginRamp(start_epoch=1, end_epoch=2, final_margin=0.2)
    optimizer = torch.optim.SGD(softmax.parameters(), lr=0.1)
    with pytest.raises(XvecError, match="Softmax has no settable margin"):
        apply_schedules(
            optimizer, softmax, None, ramp, 0, steps_per_epoch=10, total_epochs=3, base_lr=0.1
        )


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(5, 1, 6, generator=generator), torch.tensor([0, 1, 2, 3, 1])


def test_ramp_drives_the_aam_softmax_margin():
    torch.manual_seed(0)
    loss = AAMSoftmax(AAMSoftmax.Params(margin=0.2, scale=30), embedding_dim=6, num_classes=4)
    x, labels = _inputs()
    ramp = MarginRamp(start_epoch=2, end_epoch=4, final_margin=0.2, kind="linear")
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)

    def by_hand(margin: float) -> torch.Tensor:
        cosine = F.normalize(x[:, 0], dim=1) @ F.normalize(loss.weight, dim=1).T
        theta = torch.acos(cosine.gather(1, labels[:, None]).clamp(-1, 1))
        assert bool((theta + margin < math.pi).all())  # no fallback branch in this test
        logits = cosine.scatter(1, labels[:, None], torch.cos(theta + margin))
        return F.cross_entropy(30 * logits, labels)

    with torch.no_grad():
        for step, margin in [(0, 0.0), (9, 0.0), (15, 0.05), (25, 0.15), (30, 0.2), (99, 0.2)]:
            values = apply_schedules(
                optimizer, loss, None, ramp, step, steps_per_epoch=10, total_epochs=5, base_lr=0.1
            )
            assert values.margin == pytest.approx(margin) and loss.margin == values.margin
            value, _ = loss(x, labels)
            torch.testing.assert_close(value, by_hand(margin), rtol=1e-5, atol=1e-5)
    assert loss.params.margin == 0.2  # the configured margin (checkpoint record) is unchanged


def test_ramp_drives_the_am_softmax_margin():
    torch.manual_seed(0)
    loss = AMSoftmax(AMSoftmax.Params(margin=0.3, scale=15), embedding_dim=6, num_classes=4)
    x, labels = _inputs()
    ramp = MarginRamp(
        start_epoch=1, end_epoch=3, initial_margin=0.1, final_margin=0.3, kind="linear"
    )
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)

    def by_hand(margin: float) -> torch.Tensor:
        cosine = F.normalize(x[:, 0], dim=1) @ F.normalize(loss.W, dim=0)
        logits = cosine - margin * F.one_hot(labels, 4)
        return F.cross_entropy(15 * logits, labels)

    with torch.no_grad():
        for step, margin in [(0, 0.1), (10, 0.2), (15, 0.25), (20, 0.3)]:
            apply_schedules(
                optimizer, loss, None, ramp, step, steps_per_epoch=10, total_epochs=5, base_lr=0.1
            )
            value, _ = loss(x, labels)
            torch.testing.assert_close(value, by_hand(margin), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- applying both


def test_apply_schedules_sets_every_group_with_its_scale():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters()},
            {"params": model[1].parameters(), "lr_scale": 0.1},
        ],
        lr=0.5,
    )
    schedule = Step(name="step", gamma=0.5, every_epochs=1)
    values = apply_schedules(
        optimizer, None, schedule, None, 25, steps_per_epoch=10, total_epochs=5, base_lr=0.4
    )
    assert values.lr == 0.1 and values.margin is None
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.1 * 0.1]
    untouched = apply_schedules(
        optimizer, None, None, None, 26, steps_per_epoch=10, total_epochs=5, base_lr=0.4
    )
    assert untouched.lr is None and optimizer.param_groups[0]["lr"] == 0.1


def test_rates_depend_only_on_the_step_so_resume_is_exact():
    schedule = WarmupExponential(
        name="warmup_exponential", final_lr=1e-4, warmup_epochs=1, warm_from_zero=True
    )
    run = nn.Linear(2, 2)
    through = torch.optim.SGD(run.parameters(), lr=1.0)
    for step in range(37):
        apply_schedules(
            through, None, schedule, None, step, steps_per_epoch=10, total_epochs=5, base_lr=0.1
        )
    resumed = torch.optim.SGD(run.parameters(), lr=1.0)
    apply_schedules(
        resumed, None, schedule, None, 36, steps_per_epoch=10, total_epochs=5, base_lr=0.1
    )
    assert resumed.param_groups[0]["lr"] == through.param_groups[0]["lr"]


# --------------------------------------------------------------------------- weight decay


def test_decay_groups_exempt_batch_norm_and_biases():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3, bias=False)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4, 3)
            self.ln = nn.LayerNorm(3)
            self.tied = nn.Linear(4, 3, bias=False)
            self.tied.weight = self.fc.weight  # shared: listed once

    net = Net()
    groups = decay_groups(net, 1e-4)
    assert [group["weight_decay"] for group in groups] == [1e-4, 0.0]
    ids = [{id(p) for p in group["params"]} for group in groups]
    assert ids[0] == {id(net.conv.weight), id(net.fc.weight)}
    assert ids[1] == {
        id(p) for p in (net.bn.weight, net.bn.bias, net.fc.bias, net.ln.weight, net.ln.bias)
    }
    assert sum(len(group["params"]) for group in groups) == len(list(net.parameters()))
    torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)  # a valid optimiser spec


def test_decay_groups_leave_out_an_empty_group():
    groups = decay_groups(nn.Linear(3, 2, bias=False), 1e-3)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-3
