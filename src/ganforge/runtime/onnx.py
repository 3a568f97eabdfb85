"""ONNX export with a dynamic batch dimension, and an ONNX Runtime session to run it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ganforge.errors import UserError

INPUT_NAME, OUTPUT_NAME = "z", "images"


def export_onnx(generator: nn.Module, z_dim: int, path: str | Path, opset: int) -> None:
    """Export ``generator`` (z (B, z_dim) -> images (B, C, R, R)) to ONNX with batch as a dynamic axis."""
    z = torch.zeros(2, z_dim)  # (B, z_dim); B is dynamic in the exported graph
    # The TorchScript exporter (dynamo=False) needs no onnxscript and exports these models in well under
    # a second; the dynamo exporter brings nothing for graphs this plain.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter" notice
        torch.onnx.export(
            generator.eval(), (z,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def onnx_session(model: str | Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session of a model file (or its bytes) on the CPU provider, or the CUDA provider where
    the installed onnxruntime has one; ``threads=0`` lets ONNX Runtime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Idle ONNX Runtime threads would otherwise spin after each run, stealing the cores from whatever runs
    # next in the process (torch, or another session timed side by side).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():  # an onnxruntime-gpu install on a GPU machine
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(source, options, providers=providers)


def run_onnx(session: ort.InferenceSession, z: torch.Tensor) -> torch.Tensor:
    """Run the exported generator: z (B, z_dim) -> images (B, C, R, R) in [-1, 1]."""
    (images,) = session.run([OUTPUT_NAME], {INPUT_NAME: z.numpy().astype(np.float32)})
    return torch.from_numpy(images)


def load_onnx(path: str | Path, z_dim: int, image_shape: tuple[int, int, int]) -> ort.InferenceSession:
    """A session of the exported generator at ``path``, checked by running one latent: it must take ``z``
    (B, z_dim) and give float32 ``images`` (B, *image_shape). A file that is not ONNX, or a graph that is
    another one, is a one-line :class:`UserError` naming the file."""
    # onnxruntime raises its own exception types (InvalidProtobuf, InvalidArgument, Fail, ...), each a plain
    # Exception subclass with no common base, so a failing load or run is caught as Exception.
    try:
        session = onnx_session(path)
    except Exception as e:
        raise UserError(f"{path}: not a loadable ONNX model ({_first_line(e)})") from None
    inputs, outputs = session.get_inputs(), {o.name: o for o in session.get_outputs()}
    if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise UserError(f"{path}: expected a graph from input {INPUT_NAME!r} to output {OUTPUT_NAME!r}, got inputs "
                        f"{[i.name for i in inputs]} and outputs {list(outputs)}")
    # The declared shapes (ints where the export fixed them, names for the dynamic batch) catch another graph
    # before it runs; the run below catches one that declares the right shapes but computes others.
    for declared, expected in ((inputs[0].shape, [None, z_dim]), (outputs[OUTPUT_NAME].shape, [None, *image_shape])):
        fixed = [(d, e) for d, e in zip(declared, expected, strict=False) if isinstance(d, int) and e is not None]
        if len(declared) != len(expected) or any(d != e for d, e in fixed):
            raise UserError(f"{path}: declares shapes {inputs[0].shape} -> {outputs[OUTPUT_NAME].shape}, config.json "
                            f"describes (batch, {z_dim}) -> (batch, {', '.join(map(str, image_shape))})")
    try:
        images = run_onnx(session, torch.zeros(1, z_dim))  # (1, C, R, R)
    except Exception as e:
        raise UserError(f"{path}: does not run on a (1, {z_dim}) latent ({_first_line(e)})") from None
    if tuple(images.shape) != (1, *image_shape) or images.dtype != torch.float32:
        raise UserError(f"{path}: gives {images.dtype} images of shape {tuple(images.shape)[1:]} for one latent, "
                        f"config.json describes float32 {image_shape}")
    return session


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
