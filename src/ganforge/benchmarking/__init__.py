"""Benchmarking: the measured sections (``sections``), the one-command suite behind ``ganforge bench``
(``suite``) and the generated sections of docs/benchmarks.md (``page``). What it measures with is
:mod:`ganforge.measurement`."""
