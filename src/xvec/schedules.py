"""Per-step learning-rate schedules and the loss-margin ramp: recipe settings and their values.

Every schedule here is a pure function of the global optimiser step (0-based: the number of
steps already taken), so nothing needs saving for an exact resume: the loop recomputes the
rate and the margin from ``Position.step`` before each step. The semantics follow WeSpeaker's
``ExponentialDecrease`` (with its warm-up) and ``MarginScheduler`` (``exp`` or linear increase),
re-derived from their formulas.

In a recipe (TOML), a learning-rate schedule is a table with a ``name`` and that schedule's
fields, for instance ``name = "warmup_exponential"``, ``final_lr = 5e-5``,
``warmup_epochs = 6``; the starting rate is the optimiser's own ``lr``.
"""

from __future__ import annotations

import inspect
import math
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Constant",
    "LrSchedule",
    "MarginLoss",
    "MarginRamp",
    "Step",
    "WarmupCosine",
    "WarmupExponential",
    "has_margin",
    "learning_rate",
    "margin_at",
    "set_margin",
]


class _Config(BaseModel):
    """A schedule's settings: unknown fields are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WarmupExponential(_Config):
    """WeSpeaker's exponential decay: ``lr`` to ``final_lr`` over the whole run, with warm-up.

    The rate at step ``i`` of ``T`` (all epochs' steps) is ``coeff(i) * lr * (final_lr /
    lr) ** (i / T)``. During the first ``warmup_epochs`` the coefficient rises linearly from 0
    (``warm_from_zero``) or from 1 to ``scale_ratio``; after it, it is ``scale_ratio``. A
    ``scale_ratio`` below 1 without ``warm_from_zero`` applies from the first step, as
    WeSpeaker does (which sets it to ``world_size * batch_size / 64``).
    """

    name: Literal["warmup_exponential"]
    final_lr: float = Field(gt=0, allow_inf_nan=False, description="the rate at the run's end")
    warmup_epochs: float = Field(6.0, ge=0, allow_inf_nan=False, description="warm-up length")
    warm_from_zero: bool = Field(False, description="warm up from 0 rather than from lr")
    scale_ratio: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="multiplier reached at the end of warm-up"
    )


class WarmupCosine(_Config):
    """Linear warm-up to ``lr`` over ``warmup_epochs``, then a half cosine down to ``final_lr``.

    Warm-up step ``i`` runs at ``lr * (i + 1) / W``; the cosine then spans the remaining steps
    of the run. The same rates as ``[optim] scheduler = "cosine"`` (``min_lr`` is ``final_lr``).
    """

    name: Literal["warmup_cosine"]
    final_lr: float = Field(0.0, ge=0, allow_inf_nan=False, description="the rate at the end")
    warmup_epochs: float = Field(0.0, ge=0, allow_inf_nan=False, description="warm-up length")


class Step(_Config):
    """``lr`` multiplied by ``gamma`` every ``every_epochs`` epochs, counted in steps.

    Step ``i`` runs at ``lr * gamma ** (i // (every_epochs * steps_per_epoch))``: the same
    rates as an epoch-wise StepLR, but applied per step so a resume mid-epoch is exact.
    """

    name: Literal["step"]
    gamma: float = Field(gt=0, le=1, allow_inf_nan=False, description="factor per period")
    every_epochs: int = Field(1, ge=1, description="epochs per period")


class Constant(_Config):
    """The optimiser's ``lr`` throughout."""

    name: Literal["constant"]


LrSchedule = Annotated[
    WarmupExponential | WarmupCosine | Step | Constant, Field(discriminator="name")
]
"""Any learning-rate schedule, chosen by its ``name`` field."""


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up length in whole steps (rounded down, as the epoch-wise cosine schedule does)."""
    return int(warmup_epochs * steps_per_epoch)


def learning_rate(
    schedule: LrSchedule, step: int, steps_per_epoch: int, total_epochs: int, base_lr: float
) -> float:
    """The rate for global step ``step`` (0-based) of a ``total_epochs`` run; no state kept.

    ``base_lr`` is the optimiser's configured rate (the schedule's starting rate). Past the
    run's last step the final rate holds.
    """
    if step < 0 or steps_per_epoch < 1 or total_epochs < 1:
        raise ValueError(
            f"need step >= 0, steps_per_epoch >= 1 and total_epochs >= 1, got {step}, "
            f"{steps_per_epoch}, {total_epochs}"
        )
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base_lr must be a positive finite number, got {base_lr}")
    total_steps = total_epochs * steps_per_epoch
    if isinstance(schedule, WarmupExponential):
        return _warmup_exponential(schedule, step, steps_per_epoch, total_steps, base_lr)
    if isinstance(schedule, WarmupCosine):
        return _warmup_cosine(schedule, step, steps_per_epoch, total_steps, base_lr)
    if isinstance(schedule, Step):
        return base_lr * schedule.gamma ** (step // (schedule.every_epochs * steps_per_epoch))
    if isinstance(schedule, Constant):
        return base_lr
    raise TypeError(f"not a learning-rate schedule: {schedule!r}")


def _warmup_exponential(
    schedule: WarmupExponential, step: int, steps_per_epoch: int, total_steps: int, base_lr: float
) -> float:
    scale = schedule.scale_ratio
    warmup = _warmup_steps(schedule.warmup_epochs, steps_per_epoch)
    coeff = scale
    if step < warmup:
        start = 0.0 if schedule.warm_from_zero else min(1.0, scale)
        coeff = start + (scale - start) * step / warmup
    if step >= total_steps:
        return coeff * schedule.final_lr
    decay = math.exp(step / total_steps * math.log(schedule.final_lr / base_lr))
    return coeff * base_lr * decay


def _warmup_cosine(
    schedule: WarmupCosine, step: int, steps_per_epoch: int, total_steps: int, base_lr: float
) -> float:
    warmup = _warmup_steps(schedule.warmup_epochs, steps_per_epoch)
    if step < warmup:
        return base_lr * ((step + 1) / warmup)
    if step >= total_steps:
        return schedule.final_lr
    floor = schedule.final_lr / base_lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- margin ramp


class MarginRamp(_Config):
    """WeSpeaker's margin schedule: ``initial_margin`` until ``start_epoch``, rising to
    ``final_margin`` at ``end_epoch`` (its fix epoch), then held; updated every step.

    Epochs are 1-based: the rise begins with the first step of ``start_epoch``. ``kind =
    "linear"`` rises evenly; ``"exp"`` rises fast then slowly, by the fraction ``1 - 1000 **
    -p`` of the way at progress ``p`` (so it jumps the last 0.1 % at ``end_epoch``).
    """

    start_epoch: int = Field(ge=1, description="first epoch of the rise")
    end_epoch: int = Field(ge=1, description="epoch from which final_margin holds")
    initial_margin: float = Field(0.0, ge=0, allow_inf_nan=False)
    final_margin: float = Field(ge=0, allow_inf_nan=False)
    kind: Literal["linear", "exp"] = "exp"

    @model_validator(mode="after")
    def _ordered(self) -> MarginRamp:
        if self.end_epoch < self.start_epoch:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must not come before start_epoch "
                f"({self.start_epoch})"
            )
        return self


# WeSpeaker's exp ramp: the remaining fraction decays from 1 to 1e-3 (its 1e-6 guard kept).
_EXP_RAMP_START, _EXP_RAMP_END = 1.0, 1e-3


def margin_at(ramp: MarginRamp, step: int, steps_per_epoch: int) -> float:
    """The margin for global step ``step`` (0-based); no state kept."""
    if step < 0 or steps_per_epoch < 1:
        raise ValueError(f"need step >= 0 and steps_per_epoch >= 1, got {step}, {steps_per_epoch}")
    rise_start = (ramp.start_epoch - 1) * steps_per_epoch
    rise_end = (ramp.end_epoch - 1) * steps_per_epoch
    if step >= rise_end:
        return ramp.final_margin
    if step < rise_start:
        return ramp.initial_margin
    progress = (step - rise_start) / (rise_end - rise_start)
    if ramp.kind == "exp":
        remaining = math.exp(progress * math.log(_EXP_RAMP_END / (_EXP_RAMP_START + 1e-6)))
        fraction = 1.0 - remaining * _EXP_RAMP_START
    else:
        fraction = progress
    return ramp.initial_margin + (ramp.final_margin - ramp.initial_margin) * fraction


@runtime_checkable
class MarginLoss(Protocol):
    """A loss whose margin can be scheduled: a settable float ``margin`` its forward uses."""

    margin: float


def has_margin(loss: Any) -> bool:
    """True when ``loss`` exposes a settable float ``margin`` (the opt-in to a margin ramp)."""
    value = getattr(loss, "margin", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    descriptor = inspect.getattr_static(type(loss), "margin", None)
    return not (isinstance(descriptor, property) and descriptor.fset is None)


def set_margin(loss: Any, value: float) -> bool:
    """Set ``loss.margin`` to ``value`` if the loss has one; False (nothing done) otherwise."""
    if not has_margin(loss):
        return False
    loss.margin = float(value)
    return True
