"""The runtime: a recipe and float weights turned into a runnable generator (``variants``: BatchNorm folding,
int8, bf16 and fp16, ``torch.compile``), the ``direct`` kernel form (``direct``, with ``lowering`` and
``direct.c``) and ONNX export and sessions (``onnx``). Optimization, packaging and serving build on it; it
imports none of them. Import the submodule you need, so DVC deps stay exact."""
