"""Packaging: the hash-verified generator package (``package``) and ONNX export/runtime (``onnx``).
Import the submodule you need, so DVC deps stay exact."""

RUNTIMES = ("torch", "onnxruntime")  # what runs a package's winner
MODELS = ("winner", "baseline")  # which generator of a package to run
