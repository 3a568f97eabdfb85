"""Data: sources (``sources``, ``files``, ``archive``, ``decode``), preparation (``prepare``), the prepared-array
format (``prepared``), batch streaming (``stream``) and train-time augmentation (``augment``). Import the
submodule you need, so each stage's DVC deps stay exact."""
