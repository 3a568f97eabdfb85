"""ONNX export with a dynamic batch dimension, and an ONNX Runtime session to run it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

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
