"""Export a trained model to ONNX or TorchScript, front end included, and verify the result.

The exported graph takes 16 kHz waveforms ``[batch, samples]`` (both axes dynamic) and returns
``[batch, embedding_dim]``, so a service needs no feature code. After writing, the export is run
on random waveforms of several lengths and compared with the PyTorch model; a difference above
``tolerance`` is an error, and the file is removed rather than left looking good.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xvec.checkpoint import load_model
from xvec.errors import XvecError
from xvec.files import atomic_write_bytes

FORMATS = ("onnx", "torchscript")
CHECK_SECONDS = (1.0, 2.37, 4.0)
OPSET = 17  # first opset with STFT, which the log-mel front ends need


@dataclass
class ExportReport:
    """Where the export went and how closely it matches the PyTorch model."""

    path: Path
    format: str
    max_abs_diff: float
    lengths: tuple[int, ...]

    def __str__(self) -> str:
        return (
            f"{self.format} -> {self.path}; verified on {len(self.lengths)} waveforms of "
            f"{', '.join(f'{n / 16000:.2f} s' for n in self.lengths)}: "
            f"max |difference| {self.max_abs_diff:.2e}"
        )


def _check_inputs(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (0.1 * rng.standard_normal((2, int(s * 16000)))).astype(np.float32) for s in CHECK_SECONDS
    ]


def _reference(model: torch.nn.Module, waves: list[np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [model(torch.from_numpy(w)).float().numpy() for w in waves]


def model_metadata(model: torch.nn.Module) -> dict[str, str]:
    """String metadata for the exported file: architecture, parameters, embedding, rate."""
    meta: dict[str, Any] = getattr(model, "checkpoint_meta", {}) or {}
    record = meta.get("model", {})
    return {
        "xvec_model": str(record.get("name", type(model).__name__)),
        "xvec_model_params": json.dumps(record.get("params", {})),
        "xvec_version": str(meta.get("xvec_version", "")),
        "embedding_dim": str(int(model.embedding_dim)),
        "sample_rate": str(int(getattr(model, "sample_rate", 16000))),
        "input": "waveform float32 [batch, samples], mono, 16 kHz",
        "output": "embedding float32 [batch, embedding_dim]",
    }


def _export_onnx(model: torch.nn.Module, path: Path) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise XvecError(
            "ONNX export needs the 'onnx' and 'onnxruntime' packages: pip install 'xvec[export]'"
        ) from exc
    example = torch.from_numpy(_check_inputs()[0])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(
                model,
                (example,),
                str(raw),
                input_names=["waveform"],
                output_names=["embedding"],
                dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as exc:  # exporter errors name the unsupported operator
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
            raise XvecError(f"{type(model).__name__} cannot be exported to ONNX: {first}") from exc
        proto = onnx.load(str(raw))
    for key, value in model_metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, proto.SerializeToString())


def _run_onnx(path: Path, waves: list[np.ndarray]) -> list[np.ndarray]:
    try:
        import onnxruntime
    except ImportError as exc:
        raise XvecError(
            "verifying an ONNX export needs onnxruntime: pip install 'xvec[export]'"
        ) from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, {"waveform": w})[0] for w in waves]


def _export_torchscript(model: torch.nn.Module, path: Path) -> None:
    example = torch.from_numpy(_check_inputs()[0])
    try:
        try:
            module = torch.jit.script(model)
        except Exception:  # scripting fails on dynamic Python: tracing still captures the maths
            with torch.inference_mode(False), torch.no_grad():
                module = torch.jit.trace(model, (example,), check_trace=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        raise XvecError(
            f"{type(model).__name__} cannot be exported to TorchScript: {first}"
        ) from exc
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.pt"
        torch.jit.save(
            module, str(raw), _extra_files={"xvec.json": json.dumps(model_metadata(model))}
        )
        atomic_write_bytes(path, raw.read_bytes())


def _run_torchscript(path: Path, waves: list[np.ndarray]) -> list[np.ndarray]:
    module = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        return [module(torch.from_numpy(w)).float().numpy() for w in waves]


def export_model(
    model: torch.nn.Module,
    output: str | Path,
    fmt: str = "onnx",
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``model`` to ``output`` in ``fmt`` (onnx or torchscript) and verify it."""
    if fmt not in FORMATS:
        raise XvecError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    output = Path(output)
    model = model.cpu().eval()
    waves = _check_inputs(seed=1)
    expected = _reference(model, waves)
    if fmt == "onnx":
        _export_onnx(model, output)
        got = _run_onnx(output, waves)
    else:
        _export_torchscript(model, output)
        got = _run_torchscript(output, waves)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if not diff <= tolerance:
        output.unlink(missing_ok=True)
        raise XvecError(
            f"{output}: exported {fmt} model differs from PyTorch by {diff:.2e} "
            f"(> {tolerance:g}); the file was removed"
        )
    return ExportReport(output, fmt, diff, tuple(w.shape[1] for w in waves))


def export_checkpoint(
    checkpoint: str | Path, output: str | Path, fmt: str = "onnx", tolerance: float = 1e-4
) -> ExportReport:
    """Load an xvec checkpoint and export it (see :func:`export_model`)."""
    return export_model(load_model(checkpoint), output, fmt, tolerance)
