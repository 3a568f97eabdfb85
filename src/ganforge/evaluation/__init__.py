"""Evaluation: the domain feature network (``features``), torch-fidelity glue (``fidelity``) and the
evaluate stage (``evaluate``). Import the submodule you need, so DVC deps stay exact."""
