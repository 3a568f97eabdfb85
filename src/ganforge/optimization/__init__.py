"""Optimization: variants (``variants``), speed measurement (``benchmark``), selection (``select``) and the
optimize stage (``optimize``). Import the submodule you need, so DVC deps stay exact."""
