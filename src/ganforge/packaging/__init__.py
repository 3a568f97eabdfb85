"""Packaging: the hash-verified generator package (``package``) and ONNX export/runtime (``onnx``).
Import the submodule you need, so DVC deps stay exact."""
