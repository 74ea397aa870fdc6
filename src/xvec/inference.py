"""A model made ready for embedding: BatchNorm folded into the convolution before it, and
channels-last convolutions on the CPU.

Both change only float rounding (the embeddings stay within ~1e-6 of the model's own) and
save work in every call, which matters when every file is embedded whole, one call each
(measured in docs/benchmarks.md, "Whole-file extraction on the default path").
A BatchNorm is folded only where it reads a convolution's output and nothing else does: that
is found by running a probe waveform through the model and counting, with a torch function
mode, every use of each convolution's output. The prepared model is checked on the probe
against the original; any difference above rounding, or a model the probe cannot run
(a plugin that takes other input), keeps the original.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from xvec.audio import SAMPLE_RATE

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
PROBE_SECONDS = 2.0
# Folding and channels-last change float32 rounding only: ~1e-6 of the embedding's scale.
AGREEMENT = 1e-4


class _UseCounter(TorchFunctionMode):
    """Counts the torch calls that read each watched tensor and return a tensor (metadata
    reads such as ``x.shape`` do not count), outside the BatchNorm being checked."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict[int, tuple[torch.Tensor, nn.Module]] = {}
        self.uses: dict[int, int] = {}
        self.inside_norm = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if self.inside_norm == 0 and any(isinstance(x, torch.Tensor) for x in tree_leaves(result)):
            for value in tree_leaves((args, kwargs)):
                if isinstance(value, torch.Tensor) and id(value) in self.watched:
                    self.uses[id(value)] += 1
        return result


def foldable_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(convolution, BatchNorm) pairs where the norm reads the convolution's output, that
    output has no other reader, and each module runs once per forward pass."""
    counter = _UseCounter()
    calls: dict[nn.Module, int] = {}
    candidates: list[tuple[nn.Module, nn.Module, int]] = []

    def after_conv(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        counter.watched[id(output)] = (output, module)
        counter.uses[id(output)] = 0

    def before_norm(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls[module] = calls.get(module, 0) + 1
        source = counter.watched.get(id(inputs[0]))
        if source is not None and source[0] is inputs[0]:
            counter.uses[id(inputs[0])] += 1
            candidates.append((source[1], module, id(inputs[0])))
        counter.inside_norm += 1

    def after_norm(*_: Any) -> None:
        counter.inside_norm -= 1

    handles = []
    for module in model.modules():
        if isinstance(module, CONVOLUTIONS):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, BATCH_NORMS):
            handles.append(module.register_forward_pre_hook(before_norm))
            handles.append(module.register_forward_hook(after_norm))
    try:
        with torch.no_grad(), counter:
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (conv, norm)
        for conv, norm, output in candidates
        if calls[conv] == 1 and calls[norm] == 1 and counter.uses[output] == 1
    ]


def fold_batchnorm(conv: nn.Module, norm: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (in float64, then back)."""
    std = torch.sqrt(norm.running_var.double() + norm.eps)
    scale = (norm.weight.double() if norm.affine else 1.0) / std
    shift = (norm.bias.double() if norm.affine else 0.0) - norm.running_mean.double() * scale
    weight = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    dtype = conv.weight.dtype
    shape = (-1,) + (1,) * (weight.dim() - 1)
    conv.weight = nn.Parameter((weight * scale.reshape(shape)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)


def _replace(parent: nn.Module, targets: set[int]) -> None:
    for name, child in parent.named_children():
        if id(child) in targets:
            setattr(parent, name, nn.Identity())
        else:
            _replace(child, targets)


@contextmanager
def _hooks_silenced(model: nn.Module) -> Iterator[None]:
    """The caller's forward hooks do not see the probe (they stay on the prepared copy)."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for module, _, _ in saved:
        module._forward_hooks, module._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for module, hooks, pre_hooks in saved:
            module._forward_hooks, module._forward_pre_hooks = hooks, pre_hooks


def _probe(model: nn.Module, device: torch.device) -> torch.Tensor:
    rate = int(getattr(model, "sample_rate", SAMPLE_RATE))
    generator = torch.Generator().manual_seed(0)
    samples = int(PROBE_SECONDS * rate)
    return (0.1 * torch.randn(1, samples, generator=generator)).to(device)


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device`` with BatchNorm folded where exact (and
    channels-last convolutions on the CPU); ``model`` itself is left as it was."""
    original = model.to(device).eval()
    try:
        probe = _probe(original, device)
        prepared = copy.deepcopy(original)
        with _hooks_silenced(original), _hooks_silenced(prepared):
            with torch.no_grad():
                expected = original(probe)
            pairs = foldable_pairs(prepared, probe)
            for conv, norm in pairs:
                fold_batchnorm(conv, norm)
            _replace(prepared, {id(norm) for _, norm in pairs})
            if device.type == "cpu":
                prepared = prepared.to(memory_format=torch.channels_last)
            with torch.no_grad():
                got = prepared(probe)
        scale = max(1.0, float(expected.abs().max()))
        if got.shape == expected.shape and float((got - expected).abs().max()) <= AGREEMENT * scale:
            return prepared
    except Exception:  # an optimisation only: a model it cannot run stays as it is
        pass
    return original
