"""Benchmarking: machine ceilings (``ceilings``), timing and reporting helpers (``measure``), the measured
sections (``sections``) and the one-command suite behind ``ganforge bench`` (``suite``)."""
