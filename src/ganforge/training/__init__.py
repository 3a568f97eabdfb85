"""Training: the loop (``loop``), losses (``losses``) and checkpoints (``checkpoint``)."""
