"""Packaging: the hash-verified, versioned generator package (``package``), building it (``build``) and its
model card (``card``). It writes and verifies; what runs a package is :mod:`ganforge.runtime`. Import the
submodule you need, so DVC deps stay exact."""

RUNTIMES = ("torch", "onnxruntime")  # what runs a package's winner
MODELS = ("winner", "baseline")  # which generator of a package to run
