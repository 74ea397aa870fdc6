"""Export a trained model to ONNX or TorchScript, front end included, and verify the result.

The exported graph takes 16 kHz waveforms ``[batch, samples]`` (both axes dynamic, at least one
second) and returns ``[batch, embedding_dim]``, so a service needs no feature code. ONNX export
uses torch's dynamo exporter (it handles the STFT of the log-mel front ends) and falls back to
the TorchScript-based exporter for graphs ``torch.export`` cannot capture with a symbolic length;
a model that is known to be one (RawNet3's pooled block sums) says so with
``SpeakerModel.onnx_exporter`` and skips the failing attempt (20 s). After writing, the
export is run on random waveforms of several lengths and compared with the PyTorch model; a
difference above ``tolerance`` is an error, and the file is removed rather than left looking good.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xvec.audio import SAMPLE_RATE
from xvec.checkpoint import build_model, load_model, read_checkpoint
from xvec.errors import XvecError, check_at_least
from xvec.files import atomic_write_bytes
from xvec.interop.voxceleb_trainer import (
    VT_MODELS,
    import_voxceleb_trainer,
    write_voxceleb_trainer,
)
from xvec.outputs import check_outputs

GRAPH_FORMATS = ("onnx", "torchscript")  # the front end included, input: the waveform
FORMATS = (*GRAPH_FORMATS, "vt")  # vt: voxceleb_trainer's .model state dict
OUTPUT_KINDS = {"onnx": "onnx", "torchscript": "torch-zip", "vt": "torch-zip"}  # xvec.outputs
CHECK_SECONDS = (1.0, 2.37, 4.0)
OPSET = 18
MIN_EXPORT_SAMPLES = SAMPLE_RATE  # exported graphs take >= 1 s; pad shorter audio before


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
            f"{', '.join(f'{n / SAMPLE_RATE:.2f} s' for n in self.lengths)}: "
            f"max |difference| {self.max_abs_diff:.2e}"
        )


def _check_inputs(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (0.1 * rng.standard_normal((2, int(s * SAMPLE_RATE)))).astype(np.float32)
        for s in CHECK_SECONDS
    ]


def _reference(model: torch.nn.Module, waves: list[np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [model(torch.from_numpy(w)).float().numpy() for w in waves]


def model_metadata(
    model: torch.nn.Module, checkpoint_meta: dict[str, Any] | None = None
) -> dict[str, str]:
    """String metadata for the exported file: architecture, parameters, embedding, rate.

    ``checkpoint_meta`` is the record of the checkpoint the model came from, if any.
    """
    meta = checkpoint_meta or {}
    record = meta.get("model", {})
    return {
        "xvec_model": str(record.get("name", type(model).__name__)),
        "xvec_model_params": json.dumps(record.get("params", {})),
        "xvec_version": str(meta.get("xvec_version", "")),
        "embedding_dim": str(int(model.embedding_dim)),
        "sample_rate": str(int(getattr(model, "sample_rate", SAMPLE_RATE))),
        "input": "waveform float32 [batch, samples], mono, 16 kHz",
        "output": "embedding float32 [batch, embedding_dim]",
    }


def _export_onnx(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs it
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise XvecError(
            "ONNX export needs the 'onnx', 'onnxscript' and 'onnxruntime' packages: "
            "pip install 'xvec[export]'"
        ) from exc
    example = torch.from_numpy(_check_inputs()[1])  # not at the minimum length: no specialising
    exporters = {"dynamo": _dynamo_onnx, "torchscript": _torchscript_onnx}
    first = getattr(model, "onnx_exporter", "dynamo")  # plugins may not subclass SpeakerModel
    if first not in exporters:
        raise XvecError(
            f"{type(model).__name__}.onnx_exporter is {first!r}; it names an exporter to try "
            f"first: {' or '.join(exporters)}"
        )
    second = "torchscript" if first == "dynamo" else "dynamo"
    try:
        proto = exporters[first](model, example)
    except Exception as first_error:  # any exporter failure: try the other exporter
        try:
            proto = exporters[second](model, example)
        except Exception as exc:
            raise XvecError(
                f"{type(model).__name__} cannot be exported to ONNX: {_first_line(first_error)}; "
                f"the {second} exporter fails too: {_first_line(exc)}"
            ) from exc
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, proto.SerializeToString())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:240] if text else repr(exc)


@contextlib.contextmanager
def _quiet_exporter_log() -> Any:
    """Hide the exporter's log lines about optional packages ("torchvision is not installed")."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dynamo_onnx(model: torch.nn.Module, example: torch.Tensor) -> Any:
    """ONNX through torch.export, with symbolic batch and time axes."""
    samples = torch.export.Dim("samples", min=MIN_EXPORT_SAMPLES, max=SAMPLE_RATE * 3600)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        _quiet_exporter_log(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["waveform"],
            output_names=["embedding"],
            dynamic_shapes=({0: torch.export.Dim("batch"), 1: samples},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    return program.model_proto


def _torchscript_onnx(model: torch.nn.Module, example: torch.Tensor) -> Any:
    """ONNX through the TorchScript tracer (no complex STFT support, but robust shapes)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(raw),
            input_names=["waveform"],
            output_names=["embedding"],
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        return onnx.load(str(raw))


def _run_onnx(path: Path, waves: list[np.ndarray]) -> list[np.ndarray]:
    try:
        import onnxruntime
    except ImportError as exc:
        raise XvecError(
            "verifying an ONNX export needs onnxruntime: pip install 'xvec[export]'"
        ) from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = []
    for wave in waves:
        try:
            outputs.append(session.run(None, {"waveform": wave})[0])
        except Exception as exc:  # e.g. a time axis the exporter made static
            path.unlink(missing_ok=True)
            first = str(exc).strip().splitlines()[0][:200]
            raise XvecError(
                f"{path}: the exported graph fails on a {wave.shape[1]}-sample input ({first}); "
                "the file was removed"
            ) from exc
    return outputs


def _export_torchscript(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
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
        torch.jit.save(module, str(raw), _extra_files={"xvec.json": json.dumps(metadata)})
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
    checkpoint_meta: dict[str, Any] | None = None,
) -> ExportReport:
    """Export ``model`` to ``output`` in ``fmt`` (onnx or torchscript) and verify it.

    ``checkpoint_meta`` (from :func:`xvec.checkpoint.read_checkpoint`) names the architecture
    and parameters in the file's metadata.
    """
    if fmt not in GRAPH_FORMATS:
        raise XvecError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    output = Path(output)
    model = model.cpu().eval()
    waves = _check_inputs(seed=1)
    expected = _reference(model, waves)
    metadata = model_metadata(model, checkpoint_meta)
    if fmt == "onnx":
        _export_onnx(model, output, metadata)
        got = _run_onnx(output, waves)
    else:
        _export_torchscript(model, output, metadata)
        got = _run_torchscript(output, waves)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if not diff <= tolerance:
        output.unlink(missing_ok=True)
        raise XvecError(
            f"{output}: exported {fmt} model differs from PyTorch by {diff:.2e} "
            f"(> {tolerance:g}); the file was removed"
        )
    return ExportReport(output, fmt, diff, tuple(w.shape[1] for w in waves))


def export_voxceleb_trainer(
    checkpoint: str | Path, output: str | Path, tolerance: float = 1e-4
) -> ExportReport:
    """Write an xvec checkpoint of a voxceleb_trainer architecture as VT's ``.model`` file.

    The file is VT's ``SpeakerNet`` state dict (model weights under ``__S__.``, loss weights under
    ``__L__.``), so VT's ``--initial_model`` and ``xvec import vt`` read it. It is verified by
    importing it back and comparing embeddings with the original model.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    ckpt = read_checkpoint(checkpoint)
    model_record, loss_record = ckpt.meta["model"], ckpt.meta.get("loss") or {}
    if model_record["name"] not in VT_MODELS:
        raise XvecError(
            f"{checkpoint}: {model_record['name']} is not a voxceleb_trainer architecture; "
            f"format vt takes {', '.join(VT_MODELS)}",
            options=("format",),
        )
    write_voxceleb_trainer(output, ckpt.model_state, ckpt.loss_state)
    with tempfile.TemporaryDirectory() as tmp:
        reimported = import_voxceleb_trainer(
            output,
            Path(tmp) / "reimported.safetensors",
            model_name=model_record["name"],
            model_params=model_record["params"],
            loss_name=loss_record.get("name"),
            loss_params=loss_record.get("params"),
            num_classes=loss_record.get("num_classes"),
        )
        waves = _check_inputs(seed=1)
        expected = _reference(load_model(checkpoint), waves)
        got = _reference(load_model(reimported), waves)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if not diff <= tolerance:
        output.unlink(missing_ok=True)
        raise XvecError(f"{output}: re-imported model differs by {diff:.2e}; the file was removed")
    return ExportReport(output, "vt", diff, tuple(w.shape[1] for w in waves))


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    fmt: str = "onnx",
    tolerance: float = 1e-4,
    force: bool = False,
) -> ExportReport:
    """Load an xvec checkpoint and export it (see :func:`export_model`; ``vt``:
    :func:`export_voxceleb_trainer`)."""
    check_at_least("tolerance", tolerance, 0)
    if fmt not in FORMATS:
        raise XvecError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    check_outputs({output: OUTPUT_KINDS[fmt]}, [checkpoint], force)
    if fmt == "vt":
        return export_voxceleb_trainer(checkpoint, output, tolerance)
    ckpt = read_checkpoint(checkpoint)
    model = build_model(checkpoint, ckpt)
    return export_model(model, output, fmt, tolerance, checkpoint_meta=ckpt.meta)
