"""Optimization, the search: pruning with distillation (``pruning``), selection (``select``) and the optimize
stage (``optimize``), which builds candidates with :mod:`ganforge.runtime` and measures them with
:mod:`ganforge.measurement`. Import the submodule you need, so DVC deps stay exact."""
